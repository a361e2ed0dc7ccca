"""An imported dataset is treated like the built-in ones: `cascade eval cascade` and `cascade demo`
take its name (a name that does not exist is refused clearly), `cascade baselines` on it writes
under the data folder and leaves results/ alone, and `cascade recommend` shows the titles of the
stack that answered, never another dataset's."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import stack
from app.cli import main as cascade_main

pytestmark = pytest.mark.timeout(900)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-music"
NAME = "tiny-music"


def cascade(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv], cwd=cwd, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """examples/tiny-music imported (46 users, 90 tracks) into a data folder of its own."""
    data = tmp_path_factory.mktemp("imported") / "data"
    done = cascade(
        "data", "import", "--name", NAME, "--mapping", str(EXAMPLE / "mapping.toml"),
        "--data-dir", str(data), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return data


@pytest.fixture(scope="module")
def trained(imported) -> Path:
    """Every stage trained on the imported dataset into ARTIFACTS/tiny-music (where `cascade eval
    cascade --artifacts ARTIFACTS` looks for it), published as its current."""
    artifacts = imported.parent / "artifacts"
    done = cascade(
        "train", "all", "--dataset", NAME, "--data-dir", str(imported),
        "--artifacts", str(artifacts / NAME),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return artifacts


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_baselines_on_an_imported_dataset_leave_results_untouched(imported, tmp_path):
    # A user's checkout: the committed table, with the built-in datasets' rows.
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "results" / "baselines.json", results)
    before = tree_digest(results)
    done = cascade("baselines", "--dataset", NAME, "--data-dir", str(imported), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert tree_digest(results) == before
    written = imported / "run" / "baselines.json"
    assert f"saved {written}" in done.stdout
    rows = json.loads(written.read_text())
    assert {row["dataset"] for row in rows} == {NAME} and len(rows) == 6


def test_rerunning_one_dataset_keeps_the_other_datasets_rows(imported, tmp_path):
    table = tmp_path / "baselines.json"
    other = {"dataset": "ml-100k", "protocol": "per_user", "model": "EASE", "NDCG@10": 0.5}
    table.write_text(json.dumps([other]))
    argv = ["baselines", "--dataset", NAME, "--data-dir", str(imported), "--out", str(table)]
    argv += ["--protocol", "per_user"]
    assert cascade(*argv).returncode == 0
    assert cascade(*argv).returncode == 0  # twice: its own rows are replaced, not added
    rows = json.loads(table.read_text())
    assert rows[0] == other
    assert [row["dataset"] for row in rows[1:]] == [NAME] * 3


@pytest.mark.parametrize("command", [["eval", "cascade"], ["demo"]])
def test_a_dataset_that_does_not_exist_is_refused_naming_it(imported, command):
    done = cascade(*command, "--dataset", "no-such-data", "--data-dir", str(imported))
    assert done.returncode == 2
    assert f"no dataset 'no-such-data' under {imported}" in done.stderr
    assert "cascade data import --name no-such-data" in done.stderr
    assert "invalid choice" not in done.stderr


def test_eval_cascade_runs_on_a_tiny_imported_dataset(imported, trained, tmp_path):
    out = tmp_path / "report"
    done = cascade(
        "eval", "cascade", "--dataset", NAME, "--data-dir", str(imported),
        "--artifacts", str(trained), "--run-dir", str(tmp_path / "run"), "--sample", "30",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "e2e.json").read_text())
    models = {row["model"] for row in report["rows"] if row["dataset"] == NAME}
    assert {"cascade", "MostPopular", "ItemKNN", "EASE", "recall only", "+ rank"} <= models
    assert report["runs"][NAME]["paired"]["EASE"]  # cascade against EASE, user by user


def test_recommend_shows_the_answering_stacks_own_titles(imported, trained, tmp_path, capsys):
    from cascade.data import load_dataset

    titles = set(load_dataset(NAME, imported).items["title"].tolist())
    run_dir = tmp_path / "run"
    where = {"artifacts": trained / NAME, "data_dir": imported, "dataset": NAME}
    with stack.running_stack(run_dir, train=False, **where) as running:
        target = running.address("gateway")
        argv = ["recommend", "--user", "1", "--count", "5", "--target", target]
        cascade_main([*argv, "--run-dir", str(run_dir)])
        page = capsys.readouterr().out.splitlines()[2:7]  # the header line, then 5 items
        cascade_main([*argv, "--run-dir", str(tmp_path / "no-stack-here")])
        unknown = capsys.readouterr().out.splitlines()[2:7]
    shown = [line.split(maxsplit=3)[3][:50].rstrip() for line in page]
    assert len(shown) == 5 and all(title in titles for title in shown), page
    # A gateway the stack file does not name: "?" rather than a guess from artifacts/current.
    assert all(line.split(maxsplit=3)[3].startswith("?") for line in unknown), unknown
