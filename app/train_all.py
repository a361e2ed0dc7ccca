"""`cascade train all`: every stage into one bundle, in order, resumable stage by stage.

Each stage that finishes is recorded in the bundle's manifest (`training`: its options, wall and
CPU seconds and peak memory). Rerunning the same command with the same `--version` skips every
stage whose record matches its options and whose files still match their checksums, and trains
the rest; the bundle is published only once every stage is complete, so a run that dies never
publishes half a bundle.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cascade.artifacts import MANIFEST, ArtifactError, Bundle, BundleWriter

TRAINING = "training"  # the manifest's key for the per-stage records
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class StageRun:
    """One stage of the run: its name and the options `cascade train <stage>` gets."""

    stage: str
    arguments: list[str]


class ResumeError(RuntimeError):
    """The bundle holds a stage trained with other options: resuming would mix two runs."""


def train_all(
    artifacts: Path,
    version: str,
    stages: Sequence[StageRun],
    run_stage: Callable[[StageRun], None],
    say: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Trains the stages not complete in artifacts/<version>; returns every stage's record."""
    records: dict[str, dict] = {}
    for run in stages:
        record = complete_record(artifacts, version, run)
        if record is not None:
            say(f"== skip {run.stage}: complete in {artifacts / version} ({record['seconds']} s)")
        else:
            say(f"== train {run.stage} -> {artifacts / version}")
            record = _timed(run, run_stage)
            writer = BundleWriter(artifacts, version)
            if run.stage not in writer.manifest["components"]:
                raise ArtifactError(f"cascade train {run.stage} wrote no {run.stage!r} component")
            record["created"] = writer.manifest["components"][run.stage]["created"]
            writer.manifest.setdefault(TRAINING, {})[run.stage] = record
            writer.commit()
        records[run.stage] = record
    return records


def complete_record(artifacts: Path, version: str, run: StageRun) -> dict | None:
    """The stage's record when artifacts/<version> holds it complete (its component written after
    the recorded run, every file matching its checksum); None when the stage must be trained.
    ResumeError when it was trained with other options."""
    if not (Path(artifacts) / version / MANIFEST).exists():
        return None
    bundle = Bundle(Path(artifacts) / version)
    record = bundle.manifest.get(TRAINING, {}).get(run.stage)
    component = bundle.manifest["components"].get(run.stage)
    if record is None or component is None or component.get("created") != record["created"]:
        return None  # never finished, or rewritten by something else since
    if record["arguments"] != run.arguments:
        raise ResumeError(
            f"{bundle.folder}: {run.stage} was trained with {' '.join(record['arguments'])}, "
            f"not {' '.join(run.arguments)}: resume with the same options or pick another --version"
        )
    prefix = f"{run.stage}/"
    try:
        for relative in bundle.manifest["files"]:
            if relative.startswith(prefix):
                bundle.file(run.stage, relative.removeprefix(prefix))
    except ArtifactError:
        return None  # a damaged file: train the stage again
    return dict(record)


def check_complete(artifacts: Path, version: str, stages: Sequence[StageRun]) -> None:
    """Raises ArtifactError naming the first stage artifacts/<version> lacks (before publishing)."""
    for run in stages:
        if complete_record(artifacts, version, run) is None:
            raise ArtifactError(f"{Path(artifacts) / version} lacks a complete {run.stage} stage")


def _timed(run: StageRun, run_stage: Callable[[StageRun], None]) -> dict:
    """Runs the stage; its wall seconds and this process's peak resident memory during it."""
    reset = _reset_peak_rss()
    started, cpu = time.perf_counter(), _cpu_seconds()
    run_stage(run)
    return {
        "arguments": list(run.arguments),
        "seconds": round(time.perf_counter() - started, 1),
        # CPU time (this process and its torchrun workers): on a shared machine, the steadier.
        "cpu_seconds": round(_cpu_seconds() - cpu, 1),
        # Linux resets the high-water mark on request; elsewhere it is the process's peak so far.
        "peak_rss_bytes": _peak_rss_bytes(),
        "peak_rss_since": "stage start" if reset else "process start",
    }


def _cpu_seconds() -> float:
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def _reset_peak_rss() -> bool:
    """Resets the kernel's high-water mark of this process's resident memory (Linux)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
