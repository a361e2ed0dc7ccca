"""One rerank request end to end, without the wire: hard filters, kernel, greedy selection under
the page rules. The gRPC server and the offline report both call `Reranker.rerank`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from cascade.candidates import Candidates, channel_bit
from cascade.data.schema import Table
from services.rerank.dpp import DPPGreedy
from services.rerank.mmr import MMRGreedy, RelevanceOrder
from services.rerank.rules import (
    CATEGORY_SPREAD,
    CREATOR_CAP,
    REASONS,
    RELAXED,
    PageRules,
    Rules,
    Step,
    drop_shown,
    fresh_items,
    hard_filter,
    select_page,
)
from services.rerank.similarity import (
    SimilarityWeights,
    Workspace,
    item_similarity,
    normalised_relevance,
)

METHODS = ("none", "mmr", "dpp")
_FRESH_BIT = channel_bit("fresh")


@dataclass(frozen=True)
class RerankConfig:
    method: str = "dpp"  # "dpp", "mmr" or "none" (ranked order; rules still apply)
    dpp_trade_off: float = 0.9  # theta in [0, 1]; 1 = relevance only (see dpp.alpha_of)
    mmr_trade_off: float = 0.7  # lambda in [0, 1]; 1 = relevance only
    window: int = 0  # DPP sliding window (>= 2); 0 = the whole page is jointly diverse
    weights: SimilarityWeights = field(default_factory=SimilarityWeights)
    rules: Rules = field(default_factory=Rules)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("dpp_trade_off", "mmr_trade_off"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.window == 1 or self.window < 0:
            raise ValueError(f"window must be 0 (off) or >= 2, got {self.window}")


class ItemSource(Protocol):
    """What rerank reads from the feature store (cascade.feature_store.InMemoryFeatureStore)."""

    def item_attributes(self, item_ids: np.ndarray) -> Table: ...
    def consumed(self, user_id: int) -> np.ndarray: ...
    def shown(self, user_id: int, at_ms: int | None = None) -> np.ndarray: ...


class Page(NamedTuple):
    candidates: Candidates  # the page, in display order
    reasons: list[str]  # why each item is there (computed only when asked)
    filtered: int  # candidates the rules dropped (hard filters + caps that kept an item off)
    dropped: dict[str, int]  # the same, by rule: duplicate, already_seen, creator_cap, ...
    missing_embeddings: int  # candidates without an embedding (treated as dissimilar to all)


class Reranker:
    """vectors: (n_items, dim) L2-normalised item embeddings by id, row 0 zeros."""

    def __init__(
        self, config: RerankConfig, vectors: np.ndarray, store: ItemSource, version: str = ""
    ):
        self.config = config
        self.version = version  # the bundle the vectors came from (cascade_model_info)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.has_vector = np.linalg.norm(self.vectors, axis=1) > 0
        self.store = store
        self.workspace = Workspace()

    def rerank(
        self,
        candidates: Candidates,
        count: int,
        user_id: int = 0,
        recent_items: np.ndarray | None = None,
        request_ts: int = 0,
        method: str | None = None,
        trade_off: float | None = None,
        explain: bool = False,
    ) -> Page:
        config, rules = self.config, self.config.rules
        method = method or config.method
        seen = [np.asarray(recent_items if recent_items is not None else [], dtype=np.int64)]
        if not rules.filter_recent:
            seen = []
        if rules.filter_consumed and user_id > 0:
            seen.append(self.store.consumed(int(user_id)))
        keep, dropped = hard_filter(candidates.item_ids, np.concatenate([*seen, [0]])[:-1])
        if rules.filter_shown and user_id > 0:
            keep, dropped["already_shown"] = drop_shown(
                candidates.item_ids,
                keep,
                self.store.shown(int(user_id), request_ts * 1000 or None),
                count,
            )
        candidates = candidates.take(keep)
        ids = candidates.item_ids
        inside = (ids > 0) & (ids < len(self.vectors))
        rows = np.where(inside, ids, 0)
        missing = int((~self.has_vector[rows]).sum())
        attributes = self.store.item_attributes(ids)
        relevance = normalised_relevance(candidates.scores)
        k = min(count, len(ids))
        fresh = fresh_items(
            attributes["upload_ts"], candidates.channel_masks, request_ts, rules, _FRESH_BIT
        )
        page = PageRules(attributes["creator_id"], attributes["categories"], fresh, rules, k)
        step: Step
        if method == "none":
            step = RelevanceOrder(relevance)
        else:
            similarity = item_similarity(
                self.vectors[rows],
                attributes["creator_id"],
                attributes["categories"],
                config.weights,
                self.workspace,
            )
            if method == "mmr":
                theta = config.mmr_trade_off if trade_off is None else trade_off
                step = MMRGreedy(relevance, similarity, theta)
            else:
                theta = config.dpp_trade_off if trade_off is None else trade_off
                if theta >= 1.0:
                    step = RelevanceOrder(relevance)
                else:
                    rows_needed = max(config.window - 1, 1) if config.window else max(k, 1)
                    factor = self.workspace.factor(rows_needed, len(ids))
                    step = DPPGreedy(relevance, similarity, theta, k, config.window, factor)
        selection = select_page(step, relevance, page, k)
        dropped.update(selection.dropped_by_rule)
        reasons = []
        if explain:
            no_vector = ~self.has_vector[rows[selection.order]]
            reasons = [
                _explain(int(code), int(bits), bool(absent))
                for code, bits, absent in zip(
                    selection.reasons, selection.blocked, no_vector, strict=True
                )
            ]
        return Page(
            candidates.take(selection.order),
            reasons,
            int(sum(dropped.values())),
            dropped,
            missing,
        )


def _explain(code: int, blocked: int, no_vector: bool) -> str:
    words = [REASONS[code]]
    if blocked & CREATOR_CAP:
        words.append("creator cap dropped a better-scored item")
    if blocked & CATEGORY_SPREAD:
        words.append("category spread dropped a better-scored item")
    if blocked & RELAXED:
        words.append("rules relaxed: no remaining candidate met them")
    if no_vector:
        words.append("no embedding")
    return "; ".join(words)
