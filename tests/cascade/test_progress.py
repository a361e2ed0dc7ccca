"""Progress of long work: a bar on a terminal, plain lines elsewhere, and a summary line with the
count, the time and the rate at the end."""

from __future__ import annotations

import io
import re

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cascade import progress as progress_module
from cascade.data import tabular
from cascade.progress import Progress, progress, track

SUMMARY = re.compile(
    r"^(?P<what>.+): (?P<n>[\d,.]+) (?P<unit>\w+) in .+ \((?P<rate>[\d,.]+) \3/s\)"
)


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a console's stderr does."""

    def isatty(self) -> bool:
        return True


class Clock:
    """perf_counter for the module under test: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", fake)
    return fake


def test_off_a_terminal_it_writes_plain_lines_each_tenth_and_a_summary(clock):
    stream = io.StringIO()
    with progress("train rank", total=200, unit="batches", stream=stream) as bar:
        for batch in range(200):
            clock.now += 0.5  # 2 batches/s
            bar.update(1, epoch=batch // 50 + 1)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 11  # a line at each tenth, then the summary
    assert lines[0] == "train rank: 20/200 batches (10%), 2 batches/s, 1:30 left, epoch 1"
    assert lines[9].startswith("train rank: 200/200 batches (100%)")
    assert lines[-1] == "train rank: 200 batches in 1:40 (2 batches/s), epoch 4"
    assert SUMMARY.match(lines[-1])


def test_an_unknown_total_gets_a_line_every_thirty_seconds(clock):
    stream = io.StringIO()
    with progress("import plays.csv", total=None, unit="rows", stream=stream) as bar:
        for _ in range(5):
            clock.now += 12.0
            bar.update(1000)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "import plays.csv: 3,000 rows, 83.3 rows/s",  # 36 s: the first line after 30 s
        "import plays.csv: 5,000 rows in 1:00 (83.3 rows/s)",
    ]


def test_on_a_terminal_a_bar_is_drawn_in_place_then_the_summary():
    stream = Terminal()
    with progress("simulate", total=30, unit="sessions", stream=stream) as bar:
        for _ in range(30):
            bar.update()
    text = stream.getvalue()
    assert "\r" in text  # redrawn in place
    assert "simulate:" in text and "|" in text and "0/30" in text
    summary = text.rsplit("\n", 2)[-2].split("\r")[-1]
    match = SUMMARY.match(summary)
    assert match is not None, summary
    assert (match["what"], match["n"], match["unit"]) == ("simulate", "30", "sessions")
    assert float(match["rate"].replace(",", "")) > 0


def test_lines_mode_draws_the_bar_once_per_step_even_on_a_terminal():
    stream = Terminal()
    with progress("demo", total=2, unit="steps", stream=stream, lines=True) as steps:
        steps.update(step="stack started")
        steps.update(step="stack stopped")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 3
    assert "1/2" in lines[0] and "|" in lines[0] and lines[0].endswith("step stack started")
    assert SUMMARY.match(lines[2])


def test_track_counts_each_item_and_work_that_fails_gets_no_summary(clock):
    stream = io.StringIO()
    assert list(track(["a", "b", "c"], "evaluate cascade", "users", stream=stream)) == list("abc")
    assert stream.getvalue().splitlines()[-1].startswith("evaluate cascade: 3 users in 0.0 s")
    stream = io.StringIO()
    with pytest.raises(RuntimeError), progress("train rank", 10, "batches", stream=stream) as bar:
        bar.update(3)
        raise RuntimeError("diverged")
    lines = stream.getvalue().splitlines()
    assert lines and not any(SUMMARY.match(line) for line in lines)  # work that did not finish


def test_other_processes_of_a_distributed_job_stay_quiet(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    stream = Terminal()
    with progress("train rank", 10, "batches", stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""
    assert Progress("train rank", 10, "batches", stream=stream, enabled=False).enabled is False


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_an_import_counts_the_rows_it_read(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tabular, "PROGRESS_BYTES", 0)  # every file gets its bar here
    table = pa.table({"user": [str(u) for u in range(2500)], "item": ["7"] * 2500})
    path = tmp_path / f"plays.{kind}"
    if kind == "csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    read = sum(batch.num_rows for batch in tabular.Source.of(path).batches(["user", "item"]))
    assert read == 2500
    summary = capsys.readouterr().err.splitlines()[-1]
    assert summary.startswith(f"import plays.{kind}: 2,500 rows in ")
    assert SUMMARY.match(summary)
