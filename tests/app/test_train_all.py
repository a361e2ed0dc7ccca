"""`cascade train all` resumes: a run that dies after some stages publishes nothing, and the same
command again skips the stages the bundle holds complete and trains the rest."""

import json

import pytest

from app import cli
from app.train_all import TRAINING
from cascade import embeddings
from cascade.artifacts import CURRENT, MANIFEST, Bundle
from cascade.topology import TRAIN_ORDER


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = tmp_path_factory.mktemp("world") / "data"
    cli.main(["data", "--source", "synthetic", "--users", "200", "--items", "100"] + [
        "--impressions-per-user", "30", "--data-dir", str(data)
    ])  # fmt: skip
    return data


def train_all(data, artifacts, *more: str) -> None:
    cli.main(["train", "all", "--dataset", "synthetic", "--data-dir", str(data)] + [
        "--artifacts", str(artifacts), "--version", "v1", *more
    ])  # fmt: skip


def test_a_run_that_dies_resumes_where_it_stopped_and_publishes_once_whole(
    world, tmp_path, monkeypatch, capsys
):
    # The id tables train sparse, as a million-item world's do (cascade/embeddings.py).
    monkeypatch.setattr(embeddings, "SPARSE_ROWS", 50)
    artifacts = tmp_path / "artifacts"
    trained: list[str] = []
    real = cli._train_stage

    def prerank_dies_once(stage: str, options: list[str], nproc: int) -> None:
        trained.append(stage)
        if stage == "prerank" and trained.count("prerank") == 1:
            raise SystemExit("prerank: killed")  # as a stage that exits with an error
        real(stage, options, nproc)

    monkeypatch.setattr(cli, "_train_stage", prerank_dies_once)
    with pytest.raises(SystemExit, match="prerank: killed"):
        train_all(world, artifacts)
    assert trained == ["recall", "rank", "prerank"]
    assert not (artifacts / CURRENT).exists()  # half a bundle is never published
    first = json.loads((artifacts / "v1" / MANIFEST).read_text())
    assert set(first[TRAINING]) == {"recall", "rank"}
    assert all(r["seconds"] > 0 and r["peak_rss_bytes"] > 0 for r in first[TRAINING].values())

    capsys.readouterr()
    train_all(world, artifacts)
    out = capsys.readouterr().out
    assert trained == ["recall", "rank", "prerank", "prerank", "rerank"]  # the rest only
    assert "== skip recall: complete in" in out and "== skip rank: complete in" in out
    bundle = Bundle.open(artifacts)  # published, every stage in it
    assert bundle.version == "v1" and set(bundle.manifest[TRAINING]) == set(TRAIN_ORDER)
    for stage in ("recall", "rank"):  # the skipped stages' files are the first run's
        assert bundle.manifest["components"][stage] == first["components"][stage]


def test_a_damaged_stage_is_trained_again_and_other_options_are_refused(world, tmp_path, capsys):
    artifacts = tmp_path / "artifacts"
    train_all(world, artifacts, "--no-publish")
    manifest = json.loads((artifacts / "v1" / MANIFEST).read_text())
    rerank_file = next(f for f in manifest["files"] if f.startswith("rerank/"))
    (artifacts / "v1" / rerank_file).write_bytes(b"truncated")
    capsys.readouterr()
    train_all(world, artifacts, "--no-publish")
    out = capsys.readouterr().out
    assert "== skip recall" in out and "== train rerank" in out
    Bundle(artifacts / "v1").file("rerank", rerank_file.removeprefix("rerank/"))  # whole again

    # Rank learns from recall as a profile serves it: another profile is another rank.
    with pytest.raises(SystemExit, match="rank was trained with .* pick another --version"):
        train_all(world, artifacts, "--no-publish", "--profile", "default")
