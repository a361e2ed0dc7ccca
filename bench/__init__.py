"""Benchmarks: each module writes JSON into the folder given by --out."""
