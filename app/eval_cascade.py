"""`cascade eval cascade`: the end-to-end evaluation (research/evaluation_e2e.py) on stacks that
the local stack (app/stack.py) starts on free loopback ports and stops."""

from __future__ import annotations

from collections.abc import Sequence

from app import stack
from research import evaluation_e2e


def main(argv: Sequence[str] | None = None) -> int:
    return evaluation_e2e.main(argv, start_stack=stack.running_stack)
