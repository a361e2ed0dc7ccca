"""The console's page models without a browser: the explain model of a hand-made response, the
histogram quantile, input checks and the token rule."""

from __future__ import annotations

import math

import pytest

from app.console import metrics, pages
from app.console.explain import explain
from app.console.settings import ConsoleSettings
from app.console.sources import SourceError
from cascade.candidates import channel_bit
from cascade.v1 import common_pb2, gateway_pb2


def candidates(ids: list[int], scores: list[float], masks: list[int] | None = None):
    return common_pb2.CandidateList(
        item_ids=ids, scores=scores, channel_masks=masks or [0] * len(ids)
    )


def explained_response() -> gateway_pb2.RecommendResponse:
    """recall 6 items -> rank keeps 4 -> rerank pages 2: item 4 moves up (diversity), item 2's
    creator is capped."""
    two_tower, item_cf = channel_bit("two_tower"), channel_bit("item_cf")
    response = gateway_pb2.RecommendResponse(
        items=candidates([1, 4], [0.9, 0.5], [two_tower, item_cf | two_tower])
    )
    lists = {
        "recall": candidates([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]),
        "rank": candidates([1, 2, 3, 4], [0.9, 0.8, 0.7, 0.5]),
        "rerank": candidates([1, 4], [0.9, 0.5]),
    }
    for stage, lst in lists.items():
        response.explanation.stages.add(stage=stage, candidates=lst)
    response.explanation.rerank_reasons[:] = ["relevance", "diversity"]
    response.explanation.consumed_item_ids[:] = [7, 8]
    response.explanation.user_id = 5
    return response


def test_the_explain_model_scores_ranks_moves_cuts_and_filters():
    creators = {1: 10, 2: 10, 3: 11, 4: 12, 5: 13, 6: 14}
    model = explain(explained_response(), lambda i: creators.get(i, 0), max_per_creator=1)
    first, second = model.items
    assert first.scores["rank"].score == pytest.approx(0.9) and first.scores["recall"].rank == 1
    assert first.channels == ["two_tower"] and set(second.channels) == {"item_cf", "two_tower"}
    assert second.moved == 2 and second.moved_by == "diversity"  # rank's 4th, the page's 2nd
    assert second.scores["rank"].rank == 4 and second.scores["recall"].rank == 4
    recall_cut, rank_cut = model.cuts
    assert recall_cut.total == 2 and [d.item_id for d in recall_cut.best] == [5, 6]
    reasons = {d.item_id: d.reason for d in rank_cut.best}
    assert "creator cap" in reasons[2] and "not selected" in reasons[3]
    assert [(f.item_id, f.reason.split(":")[0]) for f in model.filtered] == [
        (7, "consumed"),
        (8, "consumed"),
    ]


def test_items_shown_recently_are_the_rerank_cuts_filter_and_listed_as_filtered():
    creators = {1: 10, 2: 10, 3: 11, 4: 12}
    model = explain(explained_response(), lambda i: creators.get(i, 0), 1, shown=[3, 1])
    reasons = {d.item_id: d.reason for d in model.cuts[-1].best}
    assert reasons[3] == "filter: already shown on a recent page"
    shown = [f.item_id for f in model.filtered if f.reason.startswith("already shown")]
    assert shown == [3]  # item 1 is on the page again (too few unseen candidates)


def test_quantile_follows_prometheus_histogram_quantile():
    cumulative = {0.001: 0.0, 0.01: 50.0, 0.1: 100.0, math.inf: 100.0}
    assert metrics.quantile(0.5, cumulative) == pytest.approx(0.01)
    assert metrics.quantile(0.75, cumulative) == pytest.approx(0.055)
    assert metrics.quantile(0.25, cumulative) == pytest.approx(0.0055)
    assert metrics.quantile(0.5, {0.01: 0.0, math.inf: 0.0}) is None


def test_bad_users_and_items_are_refused_naming_the_field():
    for text in ("", "  ", "x" * 500, "bad\x00id"):
        with pytest.raises(SourceError, match="user"):
            pages.parse_user(text)
    for text in ("abc", "-3", "0", "1e5", "9" * 40):
        with pytest.raises(SourceError, match="item"):
            pages.parse_item(text)
    assert pages.parse_user(" 196 ") == "196" and pages.parse_item("42") == 42


def test_beyond_loopback_the_console_wants_a_token():
    with pytest.raises(ValueError, match="CASCADE_CONSOLE_TOKEN"):
        ConsoleSettings(host="0.0.0.0")
    assert ConsoleSettings(host="0.0.0.0", token="t").token.reveal() == "t"
    assert not ConsoleSettings().token  # loopback: none needed
