"""The item-CF table built from EASE's weights: neighbours are the strongest entries of EASE's
closed form, and the channel over a full table reproduces EASE's own ranking."""

from __future__ import annotations

import numpy as np
import pytest

from services.recall.channels import RecallContext
from services.recall.channels.item_cf import ItemCFChannel
from services.recall.tables import TableSettings, build_tables, neighbours_of
from tests.conftest import make_tiny_dataset

L2 = 2.0  # small, so that B's entries differ clearly on a tiny catalog


def ease_closed_form(dataset) -> np.ndarray:
    """B = I - P / diag(P), P = (X^T X + lambda I)^-1, diagonal 0, written out independently."""
    x = np.zeros((dataset.n_users, dataset.n_items))
    x[dataset.interactions["user_id"], dataset.interactions["item_id"]] = 1.0
    precision = np.linalg.inv(x.T @ x + L2 * np.eye(dataset.n_items))
    weights = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


@pytest.fixture(scope="module")
def dataset():
    return make_tiny_dataset(seed=3, n_users=20, n_items=15, n_events=120)


def ease_table(dataset, neighbours: int) -> dict[str, np.ndarray]:
    settings = TableSettings(cf_model="ease", cf_ease_l2=L2, cf_neighbours=neighbours)
    return build_tables(dataset, dataset.interactions, settings)["item_cf"]


def test_neighbours_are_the_largest_absolute_ease_weights_kept_signed(dataset):
    weights = ease_closed_form(dataset)
    table = ease_table(dataset, neighbours=4)
    assert len(table["ptr"]) == dataset.n_items + 1
    assert not len(neighbours_of(table, 0)[0])  # id 0 is padding: no neighbours
    for item in range(1, dataset.n_items):
        row = weights[item]
        picked, values = neighbours_of(table, item)
        assert len(picked) == 4
        # the 4 strongest |B| entries of the row, strongest first, with B's sign and value
        np.testing.assert_allclose(np.abs(values), np.sort(np.abs(row))[::-1][:4], rtol=1e-4)
        np.testing.assert_allclose(values, row[picked], rtol=1e-4, atol=1e-7)
        assert item not in picked  # B's diagonal is 0: an item is not its own neighbour
    assert (table["weights"] < 0).any()  # EASE's negative weights survive


def test_item_never_played_has_no_neighbours():
    dataset = make_tiny_dataset(seed=3, n_users=20, n_items=15, n_events=120)
    unplayed = 7
    keep = dataset.interactions["item_id"] != unplayed
    dataset.interactions = {k: v[keep] for k, v in dataset.interactions.items()}
    table = ease_table(dataset, neighbours=4)
    assert not len(neighbours_of(table, unplayed)[0])


def test_channel_over_the_full_table_ranks_as_ease_does(dataset):
    weights = ease_closed_form(dataset)
    channel = ItemCFChannel(ease_table(dataset, neighbours=dataset.n_items), decay=1.0)
    user = 5
    history = np.unique(dataset.interactions["item_id"][dataset.interactions["user_id"] == user])
    context = RecallContext(user_id=user, recent_items=history, request_ts=0, known_user=True)
    items, scores = channel.retrieve(context, k=dataset.n_items)
    expected = weights[history].sum(axis=0)
    expected[history] = -np.inf  # the seeds are consumed
    positive = np.flatnonzero(expected > 0)
    assert len(items) == len(positive)
    assert set(items.tolist()) == set(positive.tolist())
    np.testing.assert_allclose(scores, expected[items], rtol=1e-4)
    assert list(items) == sorted(items, key=lambda i: -expected[i])  # EASE's order


def test_settings_reject_an_unknown_model_and_read_old_bundles():
    with pytest.raises(ValueError, match="cf_model"):
        TableSettings(cf_model="knn")
    recorded = TableSettings().to_dict()
    del recorded["cf_model"], recorded["cf_ease_l2"]  # a bundle from before the option
    assert TableSettings.from_dict(recorded).cf_model == "co_consumption"
    assert TableSettings.from_dict({"cf_model": "ease"}).cf_model == "ease"
