"""Runs a stage's training on N workers with torchrun, all or nothing.

    cascade train STAGE --nproc N [stage options]        # one machine: launch() below
    python -m torch.distributed.run --nproc-per-node N --standalone \
        -m training.distributed MODULE [stage options]    # what launch() runs
    # many machines: the same worker under torchrun's c10d rendezvous (deploy/k8s/training/)

Every worker runs the stage's own `main(argv)` (MODULE: training.rank_train, ...) inside a
process group; the training loops shard the examples and average gradients (cascade/distributed.py).
Only worker 0 writes, and into a staging root (artifacts/.staging/<run>/, holding a hard-link copy
of the version it adds to); once every worker has returned (a barrier), worker 0 moves the version
into place and publishes it. A worker that fails stops the run (torchrun stops the others), the
staging root is removed and nothing is published; the launcher names the failed worker.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path

from cascade import distributed
from cascade.artifacts import Bundle, add_training_arguments, publish
from cascade.files import write_atomic

STAGING = ".staging"  # under the artifacts root; never served (services open current)
STATUS_ENV = "CASCADE_WORKER_STATUS"  # folder where each worker records how it ended
RUN_ENV = "CASCADE_TRAIN_RUN"  # the staging root's name, shared by the workers of one run


class LaunchError(RuntimeError):
    """A distributed run failed; the message names the worker and what it reported."""


class Stopped(SystemExit):
    """torchrun stopped this worker (SIGTERM) because another one failed."""


def _stop(signum: int, frame: object) -> None:
    _record("stopped")
    raise Stopped(128 + signum)


def _bundle_options(options: Sequence[str]) -> argparse.Namespace:
    """--artifacts, --version and --publish out of a stage's options (the rest are its own)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_training_arguments(parser)
    parser.add_argument("--version")
    parser.add_argument("--publish", action="store_true")
    known, _ = parser.parse_known_args(list(options))
    return known


def _version_folder(artifacts: Path, version: str) -> str:
    """The folder a version name means: a link (current) resolves to the version it points at."""
    path = artifacts / version
    return Bundle.open(artifacts, version).folder.name if path.is_symlink() else version


def _link_tree(source: Path, target: Path) -> None:
    """A copy of `source` made of hard links (a copy where the filesystem has none): the stage
    replaces the files it rewrites (BundleWriter.path unlinks first), never writes through."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


def _record(state: str, **details: object) -> None:
    """This worker's outcome, for the launcher's report (no-op outside launch())."""
    folder = os.environ.get(STATUS_ENV)
    if folder:
        entry = {"state": state, "time": time.time(), "pid": os.getpid(), **details}
        # torchrun's RANK, not the process group's: the group is gone by the final record,
        # and every worker would then write 0.json
        write_atomic(Path(folder) / f"{os.environ.get('RANK', '0')}.json", json.dumps(entry))


def _move_into_place(staged: Path, target: Path) -> None:
    """staged -> target; an older target is renamed aside first (and back if the move
    fails), then removed."""
    old = staged.parent / f"{staged.name}.replaced"
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(staged, target)
    except OSError:
        if old.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def run_worker(module_name: str, options: list[str]) -> int:
    """One torchrun worker: the stage's main in the process group, staged and published by
    worker 0 once every worker returned. Returns the stage's exit code."""
    signal.signal(signal.SIGTERM, _stop)
    distributed.init()
    _record("running")
    try:
        code = _staged_main(module_name, options)
    except Stopped:
        raise
    except BaseException as error:
        _record("failed", error=f"{type(error).__name__}: {error}", trace=traceback.format_exc())
        raise
    finally:
        distributed.cleanup()
    if code:
        _record("failed", error=f"{module_name} exited with status {code}")
    else:
        _record("done")
    return code


def _staged_main(module_name: str, options: list[str]) -> int:
    bundle = _bundle_options(options)
    if bundle.version is None:
        raise SystemExit(
            f"{module_name} on several workers needs --version (the bundle the run writes)"
        )
    artifacts = Path(bundle.artifacts)
    version = _version_folder(artifacts, bundle.version)
    run = os.environ.get(RUN_ENV) or os.environ.get("TORCHELASTIC_RUN_ID") or uuid.uuid4().hex
    staging = artifacts / STAGING / run
    if distributed.is_writer():
        shutil.rmtree(staging, ignore_errors=True)  # a failed run's of the same id: never served
        staging.mkdir(parents=True)
        if (artifacts / version).is_dir():
            _link_tree(artifacts / version, staging / version)
    distributed.barrier()  # the staged copy exists before any worker reads it
    argv = [o for o in options if o != "--publish"]
    argv += ["--artifacts", str(staging), "--version", version]  # the last ones win
    module = importlib.import_module(module_name)
    try:
        code = module.main(argv) or 0
        distributed.barrier()  # every worker finished: only now is the bundle whole
    except BaseException:
        if distributed.is_writer():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if distributed.is_writer():
        if code == 0:
            _move_into_place(staging / version, artifacts / version)
            if bundle.publish:
                publish(artifacts, version)
        shutil.rmtree(staging, ignore_errors=True)
    return int(code)


def launch(module_name: str, options: Sequence[str], nproc: int, label: str = "") -> None:
    """Runs `module_name`'s main on `nproc` local workers under torchrun (standalone rendezvous);
    returns when all finished and the bundle is in place, raises LaunchError otherwise."""
    label = label or module_name
    bundle = _bundle_options(options)
    if bundle.version is None:
        raise LaunchError(f"{label} --nproc {nproc} needs --version (the bundle the run writes)")
    run = f"{bundle.version}-{uuid.uuid4().hex[:12]}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    command += ["--standalone", "-m", "training.distributed", module_name, *options]
    with tempfile.TemporaryDirectory(prefix="cascade-train-") as status:
        env = {**os.environ, STATUS_ENV: status, RUN_ENV: run, "OMP_NUM_THREADS": "1"}
        torchrun = subprocess.Popen(command, env=env)
        try:
            code = torchrun.wait()
        finally:
            if torchrun.poll() is None:  # interrupted: torchrun stops its workers on SIGTERM
                torchrun.terminate()
                torchrun.wait()
            if torchrun.returncode != 0:
                shutil.rmtree(Path(bundle.artifacts) / STAGING / run, ignore_errors=True)
        if code != 0:
            raise LaunchError(failure_report(label, nproc, Path(status), code))


def failure_report(label: str, nproc: int, status: Path, code: int) -> str:
    """Which worker failed and how, from the outcomes the workers recorded. A worker with no
    recorded end died without a Python error (a signal: SIGKILL, the out-of-memory killer) and
    is the cause; otherwise the first to fail is. The others were stopped by torchrun or lost
    their peer in a collective."""
    outcomes: dict[int, dict] = {}
    for rank in range(nproc):
        path = status / f"{rank}.json"
        outcomes[rank] = json.loads(path.read_text()) if path.exists() else {"state": "absent"}
    silent = [r for r, o in outcomes.items() if o["state"] in ("running", "absent")]
    failed = sorted((o["time"], r) for r, o in outcomes.items() if o["state"] == "failed")
    lines = []
    for rank, outcome in outcomes.items():
        if outcome["state"] == "failed":
            lines.append(f"  worker {rank}: {outcome['error']}")
        elif outcome["state"] == "done":
            lines.append(f"  worker {rank}: finished")
        elif outcome["state"] == "stopped":
            lines.append(f"  worker {rank}: stopped by torchrun after another worker failed")
        elif outcome["state"] == "running":
            lines.append(f"  worker {rank}: died without a Python error (pid {outcome['pid']})")
        else:
            lines.append(f"  worker {rank}: never started")
    if silent:
        cause = f"worker {silent[0]} of {nproc} died (killed by a signal?)"
    elif failed:
        rank = failed[0][1]
        cause = f"worker {rank} of {nproc} failed: {outcomes[rank]['error']}"
    else:
        cause = f"torchrun exited with status {code}"
    return f"{label} --nproc {nproc}: {cause}; nothing was published\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    return run_worker(args[0], args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
