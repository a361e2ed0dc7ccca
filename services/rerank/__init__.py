"""Rerank: diversity (DPP, MMR) and business rules for the final page."""
