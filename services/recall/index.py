"""The FAISS index over item vectors, chosen by catalog size.

Small catalogs get exact inner-product search (a flat scan of 10^4-10^5 vectors is well under a
millisecond). Above `exact_threshold` items a graph (HNSW) or inverted-file (IVF) index trades a
little recall for speed. Index position p holds item id p + 1 (row 0 of the item vectors is the
unknown item and is never indexed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from cascade.index_search import HNSW_EF_SEARCH, search_parameters

KINDS = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexSettings:
    exact_threshold: int = 200_000  # catalogs up to this many items are searched exactly
    large_kind: str = "hnsw"  # index above the threshold: "hnsw" or "ivf"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40  # FAISS default; 1M items build in ~40-50 s on 2 cores
    hnsw_ef_search: int = HNSW_EF_SEARCH  # searched at least this wide, and at least k
    ivf_nlist: int = 0  # 0: about 4 * sqrt(n_items), at most (training vectors) // 39
    ivf_nprobe: int = 64  # 16 gave recall@500 0.70 on 1M synthetic latents, 64 gave 0.98
    ivf_train_size: int = 100_000  # vectors sampled to train the coarse quantizer
    seed: int = 0

    def kind_for(self, n_items: int) -> str:
        if self.large_kind not in ("hnsw", "ivf"):
            raise ValueError(
                f"IndexSettings.large_kind must be 'hnsw' or 'ivf', not {self.large_kind!r}"
            )
        return "flat" if n_items <= self.exact_threshold else self.large_kind


def build_index(
    vectors: np.ndarray, settings: IndexSettings, kind: str | None = None
) -> faiss.Index:
    """Inner-product index over vectors (n, dim); position p is item id p + 1 by convention."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    kind = kind or settings.kind_for(n)
    index: faiss.Index
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.hnsw_ef_construction
        index.hnsw.efSearch = settings.hnsw_ef_search
    elif kind == "ivf":
        nlist = settings.ivf_nlist or int(4 * np.sqrt(n))
        n_train = min(n, settings.ivf_train_size)
        nlist = max(1, min(nlist, n_train // 39))  # FAISS wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(settings.seed).choice(n, n_train, replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = min(settings.ivf_nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
    index.add(vectors)
    return index


def index_kind(index: faiss.Index) -> str:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return type(index).__name__


def search(
    index: faiss.Index, queries: np.ndarray, k: int, settings: IndexSettings = IndexSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids (q, k) int64, scores (q, k) float32); missing results have id 0 and -inf."""
    k = min(k, index.ntotal)
    params = search_parameters(index, k, settings.hnsw_ef_search, settings.ivf_nprobe)
    scores, positions = index.search(
        np.ascontiguousarray(queries, dtype=np.float32), k, params=params
    )
    found = positions >= 0
    return np.where(found, positions + 1, 0), np.where(found, scores, -np.inf).astype(np.float32)


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path) -> faiss.Index:
    """Reads an index file; only call on a file the bundle manifest has checksum-verified."""
    return faiss.read_index(str(path))
