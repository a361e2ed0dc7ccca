"""Generated wire contract (make protos)."""
