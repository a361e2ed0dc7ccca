"""Pre-rank vectors for items uploaded after the bundle was built (cold start), from metadata.

The student's item vectors are precomputed per item id, so an upload has none. Its metadata
vector is the mean vector of the same creator's items the bundle knows; for a creator with none,
the mean of its categories' means; with neither, the catalogue's mean. With a content vector
(datasets whose items carry one), the mean vector of the `neighbours` known items nearest in
content (cosine) can be blended in (`content_weight`, off by default: measured worse, see
below): content places an upload among the tracks it sounds like, the creator's mean among
everything that creator made. The
user tower is unchanged, so a new item scores like the items it resembles for this user.
"""

from __future__ import annotations

import numpy as np


class ColdVectors:
    def __init__(
        self,
        vectors: np.ndarray,
        known: np.ndarray,
        attributes: dict[str, np.ndarray],
        content: np.ndarray | None = None,
        neighbours: int = 20,
        content_weight: float = 0.0,
    ):
        """`vectors` (n, dim) and `known` (n,) by item id; `attributes`: the store's
        item_attributes over the same ids (creator_id, categories); `content` (n, d): their
        content vectors (None when the dataset has none)."""
        ids = np.flatnonzero(known)
        dim = vectors.shape[1]
        self.neighbours = neighbours
        # An upload with content: content_weight x its content neighbours' mean + the rest x its
        # creator / category mean (1 = content alone, 0 = metadata alone). 0 by default: on the
        # synthetic world's held-out uploads metadata alone scored 0.914x the content-free
        # bundle's pre-rank, half and half 0.795x, content alone 0.529x
        # (`make bench-content-cold-start`).
        self.content_weight = content_weight
        self.content_ids = np.empty(0, np.int64)
        self.content_units = np.zeros((0, 0), np.float32)
        if content is not None:
            norms = np.linalg.norm(content[ids], axis=1)
            with_content = norms > 0
            self.content_ids = ids[with_content]
            self.content_units = (content[ids][with_content] / norms[with_content, None]).astype(
                np.float32
            )
        self.known_vectors = vectors
        creators = np.asarray(attributes["creator_id"], np.int64)[ids]
        categories = np.asarray(attributes["categories"], np.int64)[ids]
        self.overall = vectors[ids].mean(axis=0) if len(ids) else np.zeros(dim, np.float32)
        self.by_creator, self.has_creator = _means(creators, vectors[ids], dim)
        rows = np.broadcast_to(ids[:, None], categories.shape)[categories > 0]
        self.by_category, self.has_category = _means(categories[categories > 0], vectors[rows], dim)

    def vectors(
        self, attributes: dict[str, np.ndarray], content: np.ndarray | None = None
    ) -> np.ndarray:
        """(m, dim) vectors for items with these attributes (creator_id (m,), categories (m, k))
        and content vectors ((m, d), rows of zeros where unknown)."""
        out = self.metadata_vectors(attributes)
        if content is None or not len(self.content_ids):
            return out
        norms = np.linalg.norm(content, axis=1)
        rows = np.flatnonzero(norms > 0)
        if not len(rows):
            return out
        similarity = (content[rows] / norms[rows, None]) @ self.content_units.T  # (r, n_known)
        k = min(self.neighbours, similarity.shape[1])
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]  # (r, k)
        like = self.known_vectors[self.content_ids[nearest]].mean(axis=1)
        out[rows] = self.content_weight * like + (1 - self.content_weight) * out[rows]
        return out

    def metadata_vectors(self, attributes: dict[str, np.ndarray]) -> np.ndarray:
        """(m, dim) vectors from creator and categories alone."""
        creators = np.asarray(attributes["creator_id"], np.int64)
        categories = np.asarray(attributes["categories"], np.int64)
        out = np.tile(self.overall, (len(creators), 1)).astype(np.float32)
        known_category = _lookup(self.has_category, categories)  # (m, k)
        n = known_category.sum(axis=1)
        summed = (
            self.by_category[np.where(known_category, categories, 0)] * known_category[..., None]
        ).sum(axis=1)
        out[n > 0] = summed[n > 0] / n[n > 0, None]
        by_creator = _lookup(self.has_creator, creators)
        out[by_creator] = self.by_creator[creators[by_creator]]
        return out


def _means(groups: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean vector per group id, has-items flag per group id)."""
    size = int(groups.max(initial=0)) + 1
    sums = np.zeros((size, dim), np.float64)
    np.add.at(sums, groups, vectors)
    counts = np.bincount(groups, minlength=size)
    means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return means, counts > 0


def _lookup(flags: np.ndarray, ids: np.ndarray) -> np.ndarray:
    inside = (ids > 0) & (ids < len(flags))
    return inside & flags[np.where(inside, ids, 0)]
