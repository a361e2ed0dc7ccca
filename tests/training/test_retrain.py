"""Continuous training: a job reads a (tiny) event log and writes a bundle every stage loads,
its ranker fine-tuned on the served impressions and shipped only through the publish gate;
`cascade train all --event-log` runs it."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from app import cli
from cascade.artifacts import Bundle, BundleWriter, clone
from cascade.backends import open_event_log
from cascade.eventlog import EVENTS, IMPRESSIONS
from cascade.eventlog_increment import read_log_since
from cascade.features import FeatureSpec
from services.rank.export import load_torch
from services.rank.export import write_component as write_rank
from services.rank.fine_tune import FineTuneConfig, publish_gate, served_rows
from services.rank.model import ModelConfig
from services.rank.train import TrainConfig
from tests.gateway.conftest import VERSION, build_bundle, tiny_world
from training.fold import heard_interactions, served_impressions
from training.retrain import (
    Base,
    RetrainConfig,
    RetrainError,
    read_log,
    retrain,
    retrain_from_log,
)

CONFIG = RetrainConfig(prerank_users=10, prerank_epochs=1)
MF_SERVED = "mf-served"


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
            "explored": [[False] * 4] * 2,
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
    # The later page (the log's latest 20% by time) is the publish gate's slice; the earlier
    # one is fine-tuned on, with 2 logged impressions replayed per served one.
    assert report["rank"]["served_rows"] == 4 and report["rank"]["gate"]["rows"] == 4
    assert report["rank"]["train_rows"] == 4 + 8 - 1  # - each user's latest served row, held out
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


def test_the_publish_gate_refuses_a_worse_ranker_and_publishes_a_better_one():
    outcomes = {
        "ts": np.arange(6),
        "user_id": np.array([1, 1, 1, 2, 2, 2]),
        "play": np.array([True, False, False, True, False, True]),
        "like": np.array([True, False, False, False, False, True]),
    }
    truthful = np.where(np.stack([outcomes["play"], outcomes["like"]], 1), 0.8, 0.2)
    flat = np.full((6, 2), 0.5)
    better = publish_gate(flat, truthful, outcomes, ("play", "like"))
    assert better["publish"] and better["new_logloss"] < better["served_logloss"]
    assert better["new_auc"] == 1.0 and "published" in better["reason"]
    worse = publish_gate(truthful, flat, outcomes, ("play", "like"))
    assert not worse["publish"] and "refused" in worse["reason"]
    # A tolerance lets a slightly worse ranker through; an empty slice never publishes.
    assert publish_gate(truthful, flat, outcomes, ("play", "like"), tolerance=3.0)["publish"]
    empty = {k: v[:0] for k, v in outcomes.items()}
    assert not publish_gate(flat[:0], flat[:0], empty, ("play", "like"))["publish"]


@pytest.fixture(scope="module")
def mf_served(built):
    """The tiny bundle again as MF_SERVED, its ranker marked as reading mf_position."""
    clone(built.artifacts, VERSION, MF_SERVED)
    bundle = Bundle.open(built.artifacts, MF_SERVED)
    meta = bundle.load_json("rank", "rank.json")
    spec = FeatureSpec.from_json(bundle.file("rank", "feature_spec.json").read_text())
    base = Base.of(built.dataset)
    rows = served_rows(bundle, base.dataset, base.split, spec, base.split.train_interactions, True)
    example = rows.impressions({k: v[:16] for k, v in base.split.test_impressions.items()})
    assert (example["mf_position"] > 0).any()  # the tiny bundle has an MF model
    writer = BundleWriter(built.artifacts, MF_SERVED)
    write_rank(
        writer,
        load_torch(bundle),
        spec,
        "ml-100k",
        TrainConfig(**{**meta["config"]["train"], "fusion": meta["fusion_weights"]}),
        ModelConfig(**meta["config"]["model"]),
        meta["training"],
        example,
        mf_feature=True,
    )
    writer.commit()
    return built


def test_a_fine_tuned_ranker_keeps_reading_what_it_was_served_with(mf_served, tmp_path):
    """The MF flag survives the job (serving keeps filling mf_position for the new ranker)."""
    events, impressions = read_log(tiny_log(tmp_path / "log", mf_served.dataset))
    config = RetrainConfig(
        prerank_epochs=0, recall_tables=False, rank=FineTuneConfig(gate_tolerance=1e9)
    )
    report = retrain(
        mf_served.artifacts,
        Base.of(mf_served.dataset),
        events,
        impressions,
        "mf-day2",
        config,
        mf_served.data_dir,
        publish_it=False,
        source=MF_SERVED,
    )
    assert report["rank"]["gate"]["publish"]
    new = Bundle.open(mf_served.artifacts, "mf-day2")
    assert new.load_json("rank", "rank.json")["mf_feature"] is True
    assert new.component("rank")["version"] == "mf-day2"


def test_a_ranker_the_gate_refuses_is_not_shipped_and_the_served_one_is(mf_served, tmp_path):
    from services.rank.server import RankSettings, load_scorer

    events, impressions = read_log(tiny_log(tmp_path / "log", mf_served.dataset))
    # A learning rate that wrecks the warm start: its logloss on the gate's slice is worse.
    config = RetrainConfig(
        prerank_epochs=0, recall_tables=False, rank=FineTuneConfig(learning_rate=50.0)
    )
    report = retrain(
        mf_served.artifacts,
        Base.of(mf_served.dataset),
        events,
        impressions,
        "refused",
        config,
        mf_served.data_dir,
        publish_it=False,
        source=MF_SERVED,
    )
    gate = report["rank"]["gate"]
    assert not gate["publish"] and gate["new_logloss"] > gate["served_logloss"]
    assert "refused" in gate["reason"]
    new, old = (
        Bundle.open(mf_served.artifacts, "refused"),
        Bundle.open(mf_served.artifacts, MF_SERVED),
    )
    kept, served = new.load_npz("rank", "weights.npz"), old.load_npz("rank", "weights.npz")
    assert all(np.array_equal(kept[k], served[k]) for k in served)
    assert new.component("rank")["version"] == MF_SERVED
    settings = RankSettings(
        artifacts=mf_served.artifacts, data_dir=mf_served.data_dir, bundle="refused"
    )
    assert load_scorer(settings).version == "refused"  # the new bundle still rolls out


def test_recall_rebuilt_with_ease_neighbours_keeps_them_through_the_daily_retrain(built):
    from cascade.data.split import split_dataset
    from services.recall.tables import TableSettings
    from services.recall.train import rebuild_tables
    from training.retrain import refresh_recall

    dataset, root = built.dataset, built.artifacts
    train = split_dataset(dataset).train_interactions
    rebuild_tables(root, VERSION, "ease-cf", dataset, train, TableSettings(cf_model="ease"))
    ease, source = Bundle.open(root, "ease-cf"), Bundle.open(root, VERSION)
    assert ease.component("recall")["tables"]["settings"]["cf_model"] == "ease"
    assert ease.component("recall")["two_tower"] == source.component("recall")["two_tower"]  # kept
    assert (ease.load_npz("recall", "item_cf.npz")["weights"] < 0).any()  # EASE's signed weights
    assert ease.component("rank") == source.component("rank")  # every other stage copied
    clone(root, "ease-cf", "ease-cf-day2")
    refresh_recall(root, "ease-cf-day2", dataset, train)
    day2 = Bundle.open(root, "ease-cf-day2").component("recall")
    assert day2["tables"]["settings"]["cf_model"] == "ease"  # the published setting carried


def test_the_next_retrain_reads_only_the_log_after_the_published_position(built, tmp_path):
    """Day 1's retrain reads the whole log (the served bundle records no position) and publishes
    its own; day 2's reads only what followed it, yet trains on the tables a read of the whole
    log gives: a late like on day 1's page labels it, day 1's plays stay in the histories."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(built.artifacts, artifacts, symlinks=True)
    url = tiny_log(tmp_path / "log", built.dataset)
    first = retrain_from_log(
        artifacts, built.dataset, url, "inc-day2", built.data_dir, config=CONFIG
    )
    assert first["log_rows_read"] == {"events": 6, "impressions": 2, "uploads": 0}
    assert Bundle.open(artifacts).version == "inc-day2"
    day1_events, day1_impressions = read_log(url)
    log = open_event_log(url)
    page = day1_impressions.slice(0, 1)
    later_ms = int(page["request_time_ms"][0].as_py()) + 86_400_000
    request = page.set_column(0, "request_id", pa.array(["r9"]))
    request = request.set_column(3, "request_time_ms", pa.array([later_ms], pa.int64()))
    log.append_impressions(request)
    user, item = page["user_id"][0].as_py(), page["item_ids"][0].as_py()[0]
    rows = [("r0", 11, "like", later_ms), ("r9", item, "play", later_ms + 1)]
    log.append_events(
        pa.table(
            {
                "user_id": [user] * 2,
                "user_key": [str(user)] * 2,
                "item_id": [i for _, i, _, _ in rows],
                "event": [e for _, _, e, _ in rows],
                "timestamp_ms": [t for _, _, _, t in rows],
                "request_id": [r for r, _, _, _ in rows],
                "logged_ms": [0, 0],
            },
            schema=EVENTS,
        )
    )
    log.close()
    second = retrain_from_log(
        artifacts, built.dataset, url, "inc-day3", built.data_dir, config=CONFIG
    )
    assert second["log_rows_read"] == {"events": 2, "impressions": 1, "uploads": 0}
    assert second["served_impressions"] == 12 and second["plays_heard"] == 3
    # Parity: what inc-day3 holds (and would train on) is the whole log's training tables.
    held = read_log_since(url, Bundle.open(artifacts))
    assert held.rows_read == {"events": 0, "impressions": 0, "uploads": 0}
    events, impressions = read_log(url)
    for mine, whole in (
        (
            served_impressions(held.events, held.impressions),
            served_impressions(events, impressions),
        ),
        (heard_interactions(held.events), heard_interactions(events)),
    ):
        assert mine.keys() == whole.keys()
        for column in whole:
            np.testing.assert_array_equal(mine[column], whole[column], err_msg=column)
    likes = served_impressions(events, impressions)["like"].sum()
    assert likes == served_impressions(day1_events, day1_impressions)["like"].sum() + 1
