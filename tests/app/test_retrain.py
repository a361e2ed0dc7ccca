"""Continuous training: a job reads a (tiny) event log and writes a bundle every stage loads,
its ranker fine-tuned on the served impressions; `cascade train all --event-log` runs it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from app import cli
from app.retrain import Base, RetrainConfig, RetrainError, read_log, retrain
from cascade.artifacts import Bundle
from cascade.backends import open_event_log
from cascade.eventlog import EVENTS, IMPRESSIONS
from tests.gateway.conftest import VERSION, build_bundle, tiny_world

CONFIG = RetrainConfig(prerank_users=10, prerank_epochs=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("retrain"), tiny_world())


def tiny_log(folder, dataset) -> str:
    """Two served pages of a known user, with plays, a like and a complete on them."""
    start_ms = int(dataset.interactions["ts"].max() + 86_400) * 1000
    users = dataset.users["user_id"][:2].tolist()
    pages = [(f"r{n}", user, [3 + n, 7, 11 + n, 20]) for n, user in enumerate(users)]
    impressions = pa.table(
        {
            "request_id": [r for r, _, _ in pages],
            "user_id": [u for _, u, _ in pages],
            "user_key": [str(u) for _, u, _ in pages],
            "request_time_ms": [start_ms, start_ms + 60_000],
            "arm": ["", ""],
            "item_ids": [items for _, _, items in pages],
            "positions": [list(range(4))] * 2,
            **{f"{s}_scores": [[], []] for s in ("recall", "prerank", "rank", "rerank")},
            "channel_masks": [[0] * 4] * 2,
            "model_versions": ["{}", "{}"],
            "degraded_stages": [[], []],
        },
        schema=IMPRESSIONS,
    )
    rows = [
        (0, 7, "click"),
        (0, 7, "play"),
        (0, 7, "complete"),
        (0, 7, "like"),
        (1, 12, "click"),
        (1, 12, "play"),
    ]
    events = pa.table(
        {
            "user_id": [pages[p][1] for p, _, _ in rows],
            "user_key": [str(pages[p][1]) for p, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "event": [e for _, _, e in rows],
            "timestamp_ms": [start_ms + 60_000 * p + 1000 + n for n, (p, _, _) in enumerate(rows)],
            "request_id": [pages[p][0] for p, _, _ in rows],
            "logged_ms": [0] * len(rows),
        },
        schema=EVENTS,
    )
    url = f"file:{folder}"
    log = open_event_log(url)
    log.append_events(events)
    log.append_impressions(impressions)
    log.close()
    return url


def test_a_job_reads_a_tiny_log_and_writes_a_bundle_every_stage_loads(built, tmp_path):
    from services.prerank.server import PrerankSettings
    from services.prerank.server import load_scorer as load_prerank
    from services.rank.server import RankSettings, load_scorer
    from services.recall.server import RecallSettings, open_recall

    events, impressions = read_log(tiny_log(tmp_path / "log", built.dataset))
    report = retrain(
        built.artifacts,
        Base.of(built.dataset),
        events,
        impressions,
        "day2",
        CONFIG,
        built.data_dir,
        publish_it=False,
    )
    assert report["served_impressions"] == 8 and report["plays_heard"] == 2
    assert report["rank"]["served_rows"] == 8  # every served impression is an example
    assert report["rank"]["train_rows"] == 8 + 16 - 2  # + 2 replayed per served, - held out
    new, old = Bundle.open(built.artifacts, "day2"), Bundle.open(built.artifacts, VERSION)
    assert new.version == "day2" and Bundle.open(built.artifacts).version == VERSION
    changed = new.load_npz("rank", "weights.npz")
    before = old.load_npz("rank", "weights.npz")
    assert any(not np.array_equal(changed[k], before[k]) for k in before)  # fine-tuned
    assert new.load_json("rank", "rank.json")["training"]["warm_start"] == VERSION
    # Recall's tables now count the plays heard online (trending as of the log's last play).
    assert new.component("recall")["as_of"] > old.component("recall")["as_of"]
    assert "two_tower" in new.component("recall")  # carried over
    common = {"artifacts": built.artifacts, "data_dir": built.data_dir, "bundle": "day2"}
    assert load_scorer(RankSettings(**common)).version == "day2"
    assert load_prerank(PrerankSettings(**common))[1].version == "day2"
    assert open_recall(RecallSettings(**common)).version == "day2"


def test_cascade_train_reads_the_log_and_an_empty_log_is_a_clear_error(built, tmp_path, capsys):
    url = tiny_log(tmp_path / "log", built.dataset)
    argv = [
        "train",
        "all",
        "--dataset",
        "ml-100k",
        "--data-dir",
        str(built.data_dir),
        "--artifacts",
        str(built.artifacts),
        "--version",
        "from-cli",
        "--no-publish",
    ]
    cli.main([*argv, "--event-log", url])
    assert '"served_impressions": 8' in capsys.readouterr().out
    assert Bundle.open(built.artifacts, "from-cli").component("rank")["version"] == "from-cli"
    empty = open_event_log(f"file:{tmp_path / 'empty'}")
    empty.close()
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            [
                *argv[:-3],
                "--version",
                "none",
                "--no-publish",
                "--event-log",
                f"file:{tmp_path / 'empty'}",
            ]
        )
    assert exit_.value.code == 2
    assert "no served impressions" in capsys.readouterr().err
    with pytest.raises(RetrainError):
        retrain(
            built.artifacts,
            Base.of(built.dataset),
            *read_log(f"file:{tmp_path / 'empty'}"),
            "none2",
            CONFIG,
            built.data_dir,
            publish_it=False,
        )
