"""The feature store's living catalogue (cascade/live_catalog.py): an uploaded item is known, its
id encodes to the models' unknown row 0 (out of vocabulary) while its creator, categories and
upload time are its own; counters grow with it; follow changes keep the latest per pair; and
pre-rank's metadata vectors for such items (services/prerank/cold.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cascade.backends import replay_catalog_from
from cascade.data.split import split_dataset
from cascade.eventlog import FileEventLog
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from cascade.live_catalog import (
    FOLLOWS,
    UPLOADS,
    CatalogProblem,
    CatalogUpdatesService,
    categories_matrix,
    check_new_items,
)
from cascade.v1 import catalog_pb2
from services.prerank.cold import ColdVectors


def _store(dataset) -> InMemoryFeatureStore:
    return InMemoryFeatureStore.from_split(dataset, build_spec(dataset), split_dataset(dataset))


def test_an_uploaded_item_is_known_with_its_metadata_and_an_out_of_vocabulary_id(tiny_dataset):
    store = _store(tiny_dataset)
    n = store.n_items  # the dataset's ids are 1..n-1
    vocabulary = store.spec.field("item_id").vocab_size
    assert not store.known_items(np.array([n, n + 1])).any()
    added = store.add_items(
        np.array([n + 1, n]), np.array([2, 3]), categories_matrix([[1, 2], [3]]), [500, 600]
    )
    assert added == 2 and store.n_items == n + 2
    assert store.known_items(np.array([n, n + 1, n + 2])).tolist() == [True, True, False]
    features = store.item_features(np.array([n + 1, 1]))
    assert features["item_id"].tolist() == [0, 1]  # beyond the vocabulary: the unknown row
    assert n + 1 >= vocabulary
    assert features["creator_id"][0] == 2 and features["categories"][0, :2].tolist() == [1, 2]
    attributes = store.item_attributes(np.array([n, n + 1]))
    assert attributes["upload_ts"].tolist() == [600, 500]
    store.record(np.array([1]), np.array([n + 1]), np.array([700]), ["play"])
    assert store.item_counters(np.array([n + 1]))["play"].tolist() == [1]
    # A repeated upload changes nothing.
    assert store.add_items(np.array([n]), np.array([1]), categories_matrix([[2]]), [1]) == 0
    assert store.item_attributes(np.array([n]))["creator_id"].tolist() == [3]
    assert store.live.items["item_id"].tolist() == [n + 1, n]


def test_follow_changes_keep_the_latest_per_pair(tiny_dataset):
    store = _store(tiny_dataset)
    unfollow = [False, False, True, False]
    store.change_follows(np.array([5, 5, 5, 6]), np.array([2, 3, 2, 2]), unfollow)
    followed, dropped = store.live.follow_changes(5)
    assert followed.tolist() == [3] and dropped.tolist() == [2]
    assert store.live.follow_changes(7)[0].tolist() == []


def test_check_new_items_names_the_first_bad_field():
    good = catalog_pb2.NewItem(item_key="a", creator_id=1, categories=[1], upload_time_ms=5)
    check_new_items([good], n_categories=4, now_ms=10, need_key=True)
    good.item_id = 9  # as a stage receives it
    cases = {
        "items[1].item_id": catalog_pb2.NewItem(creator_id=1),
        "items[1].categories": catalog_pb2.NewItem(item_id=3, creator_id=1, categories=[4]),
    }
    for field, bad in cases.items():
        try:
            check_new_items([good, bad], n_categories=4, now_ms=None, need_key=False)
        except CatalogProblem as problem:
            assert problem.field == field
        else:
            raise AssertionError(f"{field} passed")


def test_a_content_vector_of_the_wrong_length_or_not_finite_names_the_field():
    good = catalog_pb2.NewItem(item_key="a", creator_id=1, categories=[1], content=[1, 2, 3])
    check_new_items([good], n_categories=4, now_ms=10, need_key=True, content_dim=3)
    without = catalog_pb2.NewItem(item_key="b", creator_id=1)  # content is optional
    check_new_items([without], n_categories=4, now_ms=10, need_key=True, content_dim=3)
    for content, message in (
        ([1, 2], "2 values; this catalogue's items take 3 values or none"),
        ([1, float("nan"), 3], "must be finite numbers"),
    ):
        bad = catalog_pb2.NewItem(item_key="c", creator_id=1, content=content)
        try:
            check_new_items([good, bad], n_categories=4, now_ms=10, need_key=True, content_dim=3)
        except CatalogProblem as problem:
            assert (problem.field, str(problem)) == ("items[1].content", message)
        else:
            raise AssertionError(f"{content} passed")


def test_cold_vectors_take_the_content_neighbours_mean_when_there_is_content():
    vectors = np.array([[0, 0], [1, 0], [3, 0], [0, 2]], np.float32)
    known = np.array([False, True, True, True])
    attributes = {"creator_id": np.array([0, 1, 1, 2]), "categories": np.zeros((4, 2), int)}
    content = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1]], np.float32)
    cold = ColdVectors(vectors, known, attributes, content, neighbours=2, content_weight=1.0)
    asked = {"creator_id": np.array([2, 2]), "categories": np.zeros((2, 2), int)}
    out = cold.vectors(asked, np.array([[1, 0.05], [0, 0]], np.float32))
    assert out[0].tolist() == [2, 0]  # sounds like items 1 and 2, whoever made it
    assert out[1].tolist() == [0, 2]  # no content: creator 2's mean, as without content
    cold.content_weight = 0.5  # half content neighbours, half the creator's mean
    assert cold.vectors(asked, np.array([[1, 0.05]], np.float32))[0].tolist() == [1, 1]


def test_a_stage_refuses_an_item_id_beyond_the_new_item_capacity(tiny_dataset):
    import grpc
    import pytest

    from cascade.live_catalog import MAX_NEW_ITEMS

    store = _store(tiny_dataset)
    service = CatalogUpdatesService(lambda: store)
    highest = store.n_items + MAX_NEW_ITEMS

    class Aborted(Exception):
        pass

    class Context:
        def abort_with_status(self, status):
            self.status = status
            raise Aborted

    for item_id in (highest + 1, 2**63 - 1):  # 2^63 - 1 raised from numpy, uncaught
        context = Context()
        item = catalog_pb2.NewItem(item_id=item_id, creator_id=1, categories=[1])
        with pytest.raises(Aborted):
            service.AddItems(catalog_pb2.AddItemsRequest(items=[item]), context)
        assert context.status.code == grpc.StatusCode.INVALID_ARGUMENT
        assert context.status.details.startswith(f"items[0].item_id: at most {highest}")
    assert store.n_items < highest  # nothing was allocated for them


def test_cold_vectors_fall_back_from_creator_to_categories_to_the_catalogue():
    vectors = np.array([[0, 0], [1, 0], [3, 0], [0, 2], [9, 9]], np.float32)
    known = np.array([False, True, True, True, False])
    attributes = {
        "creator_id": np.array([0, 1, 1, 2, 0]),
        "categories": np.array([[0, 0], [1, 0], [1, 2], [2, 0], [0, 0]]),
    }
    cold = ColdVectors(vectors, known, attributes)
    asked = {
        "creator_id": np.array([1, 7, 7, 7]),
        "categories": np.array([[2, 0], [1, 0], [1, 2], [3, 0]]),
    }
    out = cold.vectors(asked)
    assert out[0].tolist() == [2, 0]  # creator 1's items: mean of [1, 0] and [3, 0]
    assert out[1].tolist() == [2, 0]  # unknown creator: category 1's items (1 and 2)
    assert np.allclose(out[2], [1.75, 0.5])  # categories 1 and 2: mean of their means
    assert np.allclose(out[3], [4 / 3, 2 / 3])  # nothing known: the catalogue's mean


def test_a_restarted_stage_replays_the_logged_uploads_and_follows(tiny_dataset, tmp_path):
    log = FileEventLog(tmp_path / "log")
    n = _store(tiny_dataset).n_items
    uploads = pa.table(
        {
            "item_id": [n, n + 1],
            "item_key": ["a", "b"],
            "creator_id": [1, 2],
            "categories": [[1], [2, 3]],
            "upload_ms": [5_000, 6_000],
            "logged_ms": [0, 0],
            "content": [[], []],
        },
        schema=UPLOADS,
    )
    log.append_records("uploads", uploads)
    follows = {"follower_id": [4], "followee_id": [2], "unfollow": [False], "timestamp_ms": [1]}
    log.append_records("follows", pa.table(follows | {"logged_ms": [0]}, schema=FOLLOWS))
    log.close()
    store = _store(tiny_dataset)  # a fresh process's store
    assert replay_catalog_from(store, f"file:{tmp_path / 'log'}") == (2, 1)
    assert store.known_items(np.array([n, n + 1])).all()
    assert store.item_attributes(np.array([n + 1]))["upload_ts"].tolist() == [6]
    assert store.live.follow_changes(4)[0].tolist() == [2]


def test_a_reload_forgets_the_uploads_its_bundle_holds_and_keeps_the_rest(tiny_dataset):
    """What a stage keeps for the next hot reload stays bounded: the uploads the new bundle
    already holds (the daily retrain folded them in) are dropped; later ones, and only the latest
    change of each follow pair, are kept and handed to the new store."""
    store = _store(tiny_dataset)
    n = store.n_items
    service = CatalogUpdatesService(lambda: store)
    items = [catalog_pb2.NewItem(item_id=i, creator_id=1, categories=[1]) for i in (n, n + 1)]
    service.AddItems(catalog_pb2.AddItemsRequest(items=items), None)
    changes = [
        catalog_pb2.FollowChange(follower_id=4, followee_id=2, unfollow=stop)
        for stop in (False, True)
    ]
    service.ChangeFollows(catalog_pb2.ChangeFollowsRequest(changes=changes), None)
    assert service.held() == (2, 1)
    reloaded = _store(tiny_dataset)  # the next bundle's store, which folded item n in
    reloaded.add_items(np.array([n]), np.array([1]), categories_matrix([[1]]), [0])
    service.reapply(reloaded)
    assert reloaded.known_items(np.array([n, n + 1])).all()
    assert reloaded.live.follow_changes(4)[1].tolist() == [2]  # the unfollow won
    assert service.held() == (1, 1)
