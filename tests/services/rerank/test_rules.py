"""Business rules applied with the selection: filters, creator cap, category spread, fresh slot."""

from __future__ import annotations

import numpy as np

from cascade.candidates import Candidates, channel_bit
from services.rerank.reranker import RerankConfig, Reranker
from services.rerank.rules import Rules, hard_filter
from services.rerank.similarity import SimilarityWeights, Workspace, item_similarity

NOW = 1_000_000


class Store:
    """Attributes by id: creator = id // 10, category = id % 3 + 1, uploaded long ago."""

    def __init__(
        self, fresh: tuple[int, ...] = (), consumed: tuple[int, ...] = (), shown: tuple = ()
    ):
        self.fresh, self._consumed = set(fresh), np.array(consumed, dtype=np.int64)
        self._shown = np.array(shown, dtype=np.int64)

    def item_attributes(self, item_ids):
        ids = np.asarray(item_ids, dtype=np.int64)
        categories = np.zeros((len(ids), 6), dtype=np.int16)
        categories[:, 0] = ids % 3 + 1
        upload = np.array([NOW - 10 if i in self.fresh else 5 for i in ids.tolist()])
        return {"creator_id": ids // 10, "categories": categories, "upload_ts": upload}

    def consumed(self, user_id):
        return self._consumed

    def shown(self, user_id, at_ms=None):
        self.asked_at_ms = at_ms
        return self._shown


def reranker(rules: Rules, store: Store, method: str = "none", n_items: int = 100) -> Reranker:
    vectors = np.eye(n_items, 8, dtype=np.float32)  # items 0..7 have a vector, the rest none
    return Reranker(RerankConfig(method=method, rules=rules), vectors, store)


def ranked(ids) -> Candidates:
    ids = np.asarray(ids, dtype=np.int64)
    zeros = np.zeros(len(ids), np.uint32)
    return Candidates(ids, np.linspace(1, 0, len(ids)).astype(np.float32), zeros, zeros)


OFF = Rules(max_per_creator=0, max_category_share=1.0, fresh_slots=0)


def test_hard_filter_drops_duplicates_and_seen_items():
    keep, dropped = hard_filter(np.array([5, 6, 5, 7, 8]), np.array([7]))
    assert keep.tolist() == [True, True, False, False, True]
    assert dropped == {"duplicate": 1, "already_seen": 1}


def test_creator_cap_limits_items_per_creator_and_is_reported():
    rules = Rules(max_per_creator=2, max_category_share=1.0, fresh_slots=0)
    page = reranker(rules, Store()).rerank(ranked([10, 11, 12, 13, 20, 21]), 4, explain=True)
    assert page.candidates.item_ids.tolist() == [10, 11, 20, 21]
    assert page.dropped["creator_cap"] == 1  # 12 was the favourite for slot 3 and never made it
    assert "creator cap" in page.reasons[2]


def test_category_spread_caps_the_share_of_one_category():
    rules = Rules(max_per_creator=0, max_category_share=0.5, fresh_slots=0)
    ids = [3, 6, 9, 12, 1, 2]  # the first four share category 1
    page = reranker(rules, Store()).rerank(ranked(ids), 4)
    assert page.candidates.item_ids.tolist() == [3, 6, 1, 2]


def test_fresh_slot_is_guaranteed_when_a_fresh_item_exists():
    rules = Rules(
        max_per_creator=0, max_category_share=1.0, fresh_slots=1, fresh_age_s=100, fresh_min_page=2
    )
    page = reranker(rules, Store(fresh=(50,))).rerank(
        ranked([1, 2, 3, 4, 50]), 3, request_ts=NOW, explain=True
    )
    assert page.candidates.item_ids.tolist() == [1, 2, 50]
    assert page.reasons[-1].startswith("fresh slot")
    mask = np.zeros(5, np.uint32)
    mask[3] = channel_bit("fresh")
    scores = np.linspace(1, 0, 5, dtype=np.float32)
    tagged = Candidates(np.array([1, 2, 3, 4, 5]), scores, mask, np.zeros(5, np.uint32))
    page = reranker(rules, Store()).rerank(tagged, 2, request_ts=NOW)
    assert page.candidates.item_ids.tolist() == [1, 4]


def test_small_pages_hold_no_fresh_slot():
    """A one-item page is the best-scored item, never the fresh pick (`recommend --count 1`)."""
    rules = Rules(max_per_creator=0, max_category_share=1.0, fresh_slots=1, fresh_age_s=100)
    assert rules.fresh_min_page == 5
    store = Store(fresh=(50,))
    ids = [1, 2, 3, 4, 5, 6, 50]
    for method in ("none", "mmr", "dpp"):
        one = reranker(rules, store, method).rerank(ranked(ids), 1, request_ts=NOW)
        assert one.candidates.item_ids.tolist() == [1]
        four = reranker(rules, store, method).rerank(ranked(ids), 4, request_ts=NOW)
        assert 50 not in four.candidates.item_ids.tolist()
    page = reranker(rules, store).rerank(
        ranked(ids), 5, request_ts=NOW, explain=True
    )  # from fresh_min_page on, the last slot is the fresh one again
    assert page.candidates.item_ids.tolist() == [1, 2, 3, 4, 50]
    assert page.reasons[-1].startswith("fresh slot")


def test_consumed_and_recent_items_are_filtered_and_counted():
    page = reranker(OFF, Store(consumed=(2,))).rerank(
        ranked([1, 2, 3, 4]), 10, user_id=7, recent_items=np.array([3])
    )
    assert page.candidates.item_ids.tolist() == [1, 4]
    assert page.filtered == 2 and page.dropped["already_seen"] == 2


def test_items_shown_within_the_ttl_are_filtered_unless_the_rule_is_off():
    store = Store(shown=(1, 4))
    page = reranker(OFF, store).rerank(ranked([1, 2, 3, 4]), 2, user_id=7)
    assert page.candidates.item_ids.tolist() == [2, 3]
    assert page.dropped["already_shown"] == 2
    # Too few unseen items for the page: the best-ranked shown one comes back to fill it.
    page = reranker(OFF, store).rerank(ranked([1, 2, 3, 4]), 3, user_id=7)
    assert page.candidates.item_ids.tolist() == [1, 2, 3]
    assert page.dropped["already_shown"] == 1
    # The TTL runs on the request's clock (a simulated day later, a page may be shown again).
    reranker(OFF, store).rerank(ranked([1, 2, 3, 4]), 2, user_id=7, request_ts=NOW)
    assert store.asked_at_ms == NOW * 1000
    rules = Rules(max_per_creator=0, max_category_share=1.0, fresh_slots=0, filter_shown=False)
    page = reranker(rules, store).rerank(ranked([1, 2, 3, 4]), 10, user_id=7)
    assert page.candidates.item_ids.tolist() == [1, 2, 3, 4]


def test_missing_embeddings_are_counted_and_dissimilar_to_all():
    page = reranker(OFF, Store(), method="dpp").rerank(ranked([1, 2, 50, 60, 70]), 5, explain=True)
    assert page.missing_embeddings == 3
    assert sorted(page.candidates.item_ids.tolist()) == [1, 2, 50, 60, 70]
    vectors = np.zeros((3, 2))
    vectors[0] = [1, 0]
    similarity = item_similarity(
        vectors, np.zeros(3), np.zeros((3, 1)), SimilarityWeights(1, 0, 0), Workspace()
    )
    assert similarity.tolist() == np.eye(3).tolist()


def test_similarity_blend_is_psd_with_unit_diagonal():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[:3] = 0
    creators = rng.integers(0, 4, 30)
    categories = rng.integers(0, 5, (30, 2))
    similarity = item_similarity(vectors, creators, categories, SimilarityWeights(), Workspace())
    assert np.allclose(np.diag(similarity), 1)
    assert np.linalg.eigvalsh(similarity).min() > -1e-9


def test_dpp_raises_diversity_over_the_ranked_order():
    n = 40
    rng = np.random.default_rng(3)
    vectors = np.zeros((100, 8), dtype=np.float32)
    vectors[1 : n + 1] = np.eye(8)[rng.integers(0, 2, n)]  # most items in 2 tight clusters
    vectors[n - 5 : n + 1] = np.eye(8)[rng.integers(2, 8, 6)]
    config = RerankConfig(method="dpp", dpp_trade_off=0.5, rules=OFF)
    engine = Reranker(config, vectors, Store())
    page = engine.rerank(ranked(np.arange(1, n + 1)), 10)
    plain = engine.rerank(ranked(np.arange(1, n + 1)), 10, method="none")
    distinct = lambda ids: len({tuple(v) for v in vectors[ids]})  # noqa: E731
    assert distinct(page.candidates.item_ids) > distinct(plain.candidates.item_ids)


def test_empty_list_in_a_fresh_thread_builds_an_empty_kernel():
    """A server thread's first request may be an empty list: no buffers exist yet."""
    import threading

    from services.rerank.similarity import SimilarityWeights, Workspace, item_similarity

    shapes = []
    workspace = Workspace()

    def first_request():
        empty = np.zeros((0, 4), dtype=np.float32)
        no_ids = np.zeros(0, dtype=np.int64)
        no_categories = np.zeros((0, 6), dtype=np.int64)
        kernel = item_similarity(empty, no_ids, no_categories, SimilarityWeights(), workspace)
        shapes.append(kernel.shape)

    thread = threading.Thread(target=first_request)
    thread.start()
    thread.join()
    assert shapes == [(0, 0)]
