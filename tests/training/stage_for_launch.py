"""A stand-in training stage for the launcher's tests: worker 0 writes a two-file bundle
component; with --fail RANK that worker raises after the first file, with --kill RANK it kills
itself with SIGKILL (no Python error), so the launcher's all-or-nothing publish is tested with
real torchrun workers in a fraction of a real stage's time."""

from __future__ import annotations

import argparse
import os
import signal

from cascade import distributed
from cascade.artifacts import BundleWriter, add_training_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    parser.add_argument("--version", required=True)
    parser.add_argument("--fail", type=int, default=-1, help="this worker raises")
    parser.add_argument("--kill", type=int, default=-1, help="this worker kills itself")
    args = parser.parse_args(argv)
    distributed.barrier()  # every worker is up before one fails
    if distributed.is_writer():
        writer = BundleWriter(args.artifacts, args.version)
        writer.save_json("toy", "first.json", {"rank": distributed.rank()})
    if distributed.rank() == args.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if distributed.rank() == args.fail:
        raise RuntimeError("the toy stage failed on purpose")
    distributed.barrier()
    if distributed.is_writer():
        writer.save_json("toy", "second.json", {"workers": distributed.world_size()})
        writer.set_component("toy", {"workers": distributed.world_size()})
        writer.commit()
    return 0
