"""Deployment assets (Dockerfile, Prometheus, Grafana, Kubernetes) and their offline checks."""
