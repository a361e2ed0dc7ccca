"""Cascade's shared library: data sources, feature spec and store, metrics, gRPC plumbing."""
