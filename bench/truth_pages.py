"""Pages of the frozen cascade in this process, scored on the synthetic world's truth.

What the channel ablation and the quota search share: the gateway's own funnel over the stages'
servicers (bench/inprocess.py: the code `cascade up` serves, without the sockets), under a served
profile with the end-to-end evaluation's profile on top (research/evaluation_e2e.py), one page of
PAGE per user, scored by the truth's expected engagement per impression (`true_engagement`, as
`cascade eval cascade` scores it). Every recall channel gets a roomy time budget: offline, what
is measured is what each channel finds, not whether a loaded machine let it start in time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.inprocess import InProcessCascade
from cascade.candidates import from_proto
from cascade.profiles import Profile, evaluation_profile, load_profile
from research.evaluation_e2e import EVALUATION_PROFILE, true_engagement
from research.simulate import World
from services.recall.server import RecallSettings

PAGE = 10  # true engagement@10 scores a page's first 10 slots
CHANNEL_BUDGET_MS = 2000.0  # every channel answers, however loaded the machine


def served_profiles(profile: str) -> list[Profile]:
    """The served profile with the evaluation's own on top (rerank's already-shown filter off:
    the same user is asked once per configuration)."""
    return [load_profile(profile), evaluation_profile(EVALUATION_PROFILE)]


def roomy_recall(recall: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Recall overrides giving every channel CHANNEL_BUDGET_MS (on top of `recall`)."""
    roomy = {"budget_ms": CHANNEL_BUDGET_MS}
    out: dict[str, Any] = {name: dict(roomy) for name in RecallSettings().budgets()}
    for name, value in (recall or {}).items():
        out[name] = (out.get(name, {}) | value) if isinstance(value, Mapping) else value
    return out


def open_cascade(
    artifacts: Path,
    data_dir: Path,
    profile: str,
    recall: Mapping[str, Any] | None = None,
) -> InProcessCascade:
    """The frozen stack of `artifacts/current` under `profile`, recall changed by `recall`."""
    return InProcessCascade(
        artifacts,
        data_dir,
        profiles=served_profiles(profile),
        overrides={"recall": roomy_recall(recall)},
    )


@dataclass
class Served:
    pages: np.ndarray  # (n_users, PAGE) item ids, 0 = empty slot
    masks: np.ndarray  # (n_users, PAGE) uint32: the recall channels that found each slot's item
    degraded: int  # answers the gateway marked degraded (a stage fell back)


def pages(
    cascade: InProcessCascade,
    users: np.ndarray,
    quotas: Mapping[str, float] | None = None,
) -> Served:
    """Each user's served page, one Recommend each."""
    out = Served(np.zeros((len(users), PAGE), np.int64), np.zeros((len(users), PAGE), np.uint32), 0)
    for row, user in enumerate(users.tolist()):
        answer = cascade.answer(int(user), PAGE, quotas=quotas)
        found = from_proto(answer.items)
        n = min(len(found.item_ids), PAGE)
        out.pages[row, :n] = found.item_ids[:n]
        out.masks[row, :n] = found.channel_masks[:n]
        out.degraded += bool(answer.degraded)
    return out


def scored(
    world: World,
    cascade: InProcessCascade,
    users: np.ndarray,
    quotas: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, dict]:
    """Per-user true engagement@10 of the served pages, and the run's facts."""
    started = time.perf_counter()
    found = pages(cascade, users, quotas)
    facts = {"degraded_answers": found.degraded, "seconds": round(time.perf_counter() - started, 1)}
    return true_engagement(world, users, found.pages, PAGE), facts


def slot_engagement(world: World, users: np.ndarray, page: np.ndarray) -> np.ndarray:
    """(n_users, PAGE) the truth's expected engagement of each slot at its position (0 empty)."""
    out = np.zeros(page.shape)
    for row, (user, ids) in enumerate(zip(users.tolist(), page, strict=True)):
        slots = np.flatnonzero(ids > 0)
        out[row, slots] = world.expected_engagement(world.utility(user, ids[slots]), slots)
    return out


def channel_names() -> Sequence[str]:
    """Recall's channels in merge priority order."""
    return tuple(RecallSettings().budgets())
