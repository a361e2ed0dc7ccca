"""One explained Recommend (RecommendRequest.explain) as the explain page shows it: per page item
every stage's score and rank, the channels that found it and what rerank changed; what each cut
dropped (best scores first); what the funnel filters for the user, with the reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cascade.candidates import CHANNELS
from cascade.topology import STAGES
from cascade.v1 import gateway_pb2

DROPPED_SHOWN = 10  # dropped candidates listed per cut (the best-scored ones)


def channel_names(mask: int) -> list[str]:
    return [name for bit, name in sorted(CHANNELS.items()) if mask & (1 << bit)]


@dataclass(frozen=True)
class StageScore:
    score: float
    rank: int  # 1-based position in the stage's answer


@dataclass
class PageItem:
    position: int  # 1-based, on the page
    item_id: int
    channels: list[str]
    scores: dict[str, StageScore]  # stage -> its score and rank; absent: not in its list
    rerank_reason: str
    moved: int  # rank's position - page position: > 0 moved up by rerank, < 0 down
    moved_by: str  # "rule", "diversity" or "" (kept rank's order)


@dataclass(frozen=True)
class Dropped:
    item_id: int
    score: float  # its score at the stage that kept it last
    reason: str


@dataclass(frozen=True)
class Cut:
    before: str  # the stage whose list was cut
    after: str
    total: int  # candidates dropped at this cut
    best: list[Dropped]  # the best-scored of them


@dataclass(frozen=True)
class Filtered:
    item_id: int
    reason: str


@dataclass
class Explained:
    user_id: int
    items: list[PageItem]
    cuts: list[Cut]
    filtered: list[Filtered]
    stage_sizes: dict[str, int] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)


def explain(
    response: gateway_pb2.RecommendResponse,
    creator_of: Callable[[int], int],
    max_per_creator: int,
    shown: Sequence[int] = (),
    filtered_shown: int = 20,
) -> Explained:
    """The page model of an explained response. `creator_of` names an item's creator (the cap
    on creators is the rule that explains a candidate rank kept and rerank left off); `shown`:
    items on pages the user was served recently (with the shared store the explanation has
    them itself)."""
    explanation = response.explanation
    shown = list(explanation.shown_item_ids) or list(shown)
    lists = {s.stage: s.candidates for s in explanation.stages}
    ranks = {
        stage: {item: i for i, item in enumerate(lst.item_ids)} for stage, lst in lists.items()
    }
    scores = {stage: list(lst.scores) for stage, lst in lists.items()}
    reasons = list(explanation.rerank_reasons)
    items = []
    for position, (item_id, mask) in enumerate(
        zip(response.items.item_ids, response.items.channel_masks, strict=True)
    ):
        per_stage = {
            stage: StageScore(scores[stage][ranks[stage][item_id]], ranks[stage][item_id] + 1)
            for stage in lists
            if item_id in ranks[stage] and len(scores[stage]) > ranks[stage][item_id]
        }
        reason = reasons[position] if position < len(reasons) else ""
        ranked_at = ranks.get("rank", {}).get(item_id)
        moved = 0 if ranked_at is None else ranked_at - position
        # Moved by the diversity selection, or else by a rule: a page rule, or a filter that took
        # better-ranked items out (consumed, already shown).
        moved_by = ""
        if moved:
            moved_by = "diversity" if reason.startswith("diversity") else "rule"
        items.append(
            PageItem(position + 1, item_id, channel_names(mask), per_stage, reason, moved, moved_by)
        )
    page = set(response.items.item_ids)
    called = [s for s in STAGES if s in lists]
    cuts = []
    for before, after in zip(called, called[1:], strict=False):
        kept = set(lists[after].item_ids) | (page if after == called[-1] else set())
        on_page_creators = [creator_of(i) for i in response.items.item_ids]
        dropped = []
        for i, item_id in enumerate(lists[before].item_ids):
            if item_id in kept:
                continue
            score = scores[before][i] if i < len(scores[before]) else float("nan")
            reason = f"below {after}'s cut"
            if after == "rerank" and item_id in shown:
                reason = "filter: already shown on a recent page"
            elif after == "rerank":
                creator = creator_of(item_id)
                capped = (
                    max_per_creator
                    and creator
                    and (on_page_creators.count(creator) >= max_per_creator)
                )
                reason = (
                    f"business rule: creator cap ({max_per_creator} per page)"
                    if capped
                    else "not selected by rerank (diversity or a page rule)"
                )
            dropped.append(Dropped(int(item_id), float(score), reason))
        dropped.sort(key=lambda d: -d.score)
        cuts.append(Cut(before, after, len(dropped), dropped[:DROPPED_SHOWN]))
    in_lists = set().union(*(set(lst.item_ids) for lst in lists.values())) if lists else set()
    filtered = [
        Filtered(int(i), "consumed: the user played it (recall and rerank drop it)")
        for i in explanation.consumed_item_ids[:filtered_shown]
        if i not in in_lists
    ]
    filtered += [
        Filtered(int(i), "already shown: on a page the user was served recently (rerank)")
        for i in shown[:filtered_shown]
        if i not in page
    ]
    return Explained(
        explanation.user_id,
        items,
        cuts,
        filtered,
        {stage: len(lst.item_ids) for stage, lst in lists.items()},
        list(response.degraded_stages),
    )
