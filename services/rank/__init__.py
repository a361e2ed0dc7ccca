"""Rank: the multi-task teacher (DeepFM + attention + CGC/PLE), served from ONNX."""
