"""Recall: multi-channel candidate retrieval merged under per-channel quotas."""
