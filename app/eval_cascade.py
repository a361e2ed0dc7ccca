"""`cascade eval cascade`: the end-to-end evaluation (research/evaluation_e2e.py) on stacks that
the local stack (app/stack.py) starts on free loopback ports and stops."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from app import stack
from research import evaluation_e2e


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return evaluation_e2e.main(argv, start_stack=stack.running_stack)
    except stack.StackError as error:  # e.g. a setting its profile does not say: refused
        print(f"cascade eval cascade: {error}", file=sys.stderr)
        return 2
