"""Pre-rank: a two-tower student distilled from the ranker, served from ONNX."""
