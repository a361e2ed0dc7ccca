"""The recall a profile serves, for building examples from recall's output.

The pre-ranker's distillation requests and the ranker's recall examples are recall's merged
answer at training-period requests. They must be the answer the funnel serves: the served
profile's channel quotas and switches (its [recall] table over the services' defaults) at the
count the gateway asks for (its [gateway] `recall_count`, else recall's own default count, which
the gateway's default equals: tests/training/test_served_recall.py), not a smaller training-time
cut or the code's default mix.
"""

from __future__ import annotations

from dataclasses import dataclass

from cascade.config import load_settings
from cascade.profiles import DEFAULT, Profile, layers, load_profile
from services.recall.server import RecallSettings


@dataclass(frozen=True)
class ServedRecall:
    settings: RecallSettings  # the channels' quotas and switches as served
    count: int  # candidates the gateway asks recall for


def served_recall(profile: Profile | str = DEFAULT) -> ServedRecall:
    """Recall as `profile` serves it (the environment plays no part: training is reproducible
    from the profile file alone)."""
    if isinstance(profile, str):
        profile = load_profile(profile)
    settings = load_settings(RecallSettings, environ={}, profiles=layers([profile], "recall"))
    count = profile.section("gateway").get("recall_count", settings.default_count)
    return ServedRecall(settings, int(count))
