"""Per-call FAISS search parameters, shared by recall's channels and the ranker's MF positions."""

from __future__ import annotations

import faiss

HNSW_EF_SEARCH = 512  # the least width a graph is searched at (FAISS does not raise it to k)


def search_parameters(
    index: faiss.Index, k: int, ef_search: int = HNSW_EF_SEARCH, nprobe: int | None = None
) -> faiss.SearchParameters | None:
    """Top-k's parameters for one search: HNSW's efSearch at least k, an inverted file's nprobe
    (None: the one it was saved with). Given per call, they leave the shared index alone, so
    requests of different k on concurrent server threads each search as wide as they need."""
    index = faiss.downcast_index(index)
    # Looked up by name: faiss's type stubs lack the classes (FAISS since 1.7.3 has them).
    if isinstance(index, faiss.IndexHNSW):
        return vars(faiss)["SearchParametersHNSW"](efSearch=max(ef_search, k))
    if isinstance(index, faiss.IndexIVF) and nprobe is not None:
        return vars(faiss)["SearchParametersIVF"](nprobe=min(nprobe, index.nlist))
    return None
