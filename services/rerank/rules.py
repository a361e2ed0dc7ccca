"""Business rules as data, applied in the same greedy pass as the diversity selection.

Order (documented, and what the tests pin down):
1. Hard filters, before selection: duplicate ids (the first occurrence stays), items the user
   already consumed (the store) or just consumed (the request's recent items), and items the
   user was shown within the store's shown_ttl_s (the store's shown set: one page is not repeated
   on the next request) as long as enough unseen candidates remain for a full page; when they do
   not, the best-ranked shown items come back to fill it.
2. Greedy selection. At every step the method (DPP, MMR or the ranked order) scores the remaining
   items; the pick is its best item among those the page rules still allow:
   - creator cap: at most `max_per_creator` items per creator (unknown creator 0 is never capped);
   - category spread: at most floor(max_category_share * page size) items carrying any one category;
   - fresh slot: when the page still lacks `fresh_slots` fresh items and only that many slots are
     left, only fresh items are allowed (skipped when the caps leave no fresh item). Pages shorter
     than `fresh_min_page` have no fresh slot: a one-item page is the user's best item, never a
     forced exploration pick.
   When the method has no gain left (the DPP kernel is exhausted), the remaining slots are filled by
   relevance under the same rules. When the caps leave nothing to pick, they are relaxed for the
   rest of the page (a full page beats a short one; the slot's reason says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

# Why a slot holds its item (codes in Selection.reasons; REASONS names them).
RELEVANCE, DIVERSITY, FILL, FRESH = 0, 1, 2, 3
REASONS = ("relevance", "diversity", "relevance fill", "fresh slot")
# Which rule kept the method's favourite off a slot (bits in Selection.blocked).
CREATOR_CAP, CATEGORY_SPREAD, RELAXED = 1, 2, 4


@dataclass(frozen=True)
class Rules:
    max_per_creator: int = 2  # items per creator per page; 0 = no cap
    max_category_share: float = 0.5  # of the page size, per category; >= 1 = no limit
    fresh_slots: int = 1  # fresh items a page holds when the candidates have them; 0 = off
    fresh_min_page: int = 5  # pages shorter than this have no fresh slot (relevance only)
    fresh_age_s: int = 7 * 86400  # "fresh" = uploaded at most this long before the request
    fresh_channel: bool = True  # an item the fresh recall channel found also counts as fresh
    filter_consumed: bool = True  # drop items in the store's consumed set for the user
    filter_recent: bool = True  # drop the request's recent_item_ids
    filter_shown: bool = True  # drop items in the store's shown set for the user (TTL)

    def __post_init__(self) -> None:
        if min(self.max_per_creator, self.fresh_slots, self.fresh_age_s, self.fresh_min_page) < 0:
            raise ValueError(
                "max_per_creator, fresh_slots, fresh_age_s and fresh_min_page must be >= 0"
            )
        if not self.max_category_share > 0:
            raise ValueError(f"max_category_share must be > 0, got {self.max_category_share}")


class Step(Protocol):
    """A greedy selection method (dpp.DPPGreedy, mmr.MMRGreedy, mmr.RelevanceOrder)."""

    def gains(self) -> np.ndarray: ...
    def add(self, j: int) -> None: ...


class Selection(NamedTuple):
    order: np.ndarray  # (page,) positions into the candidate arrays, in display order
    reasons: np.ndarray  # (page,) int8 codes into REASONS
    blocked: np.ndarray  # (page,) int8 bits: rules that kept the method's favourite off the slot
    dropped_by_rule: dict[str, int]  # favourites a rule kept off and that never reached the page


def hard_filter(item_ids: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """(keep mask, dropped counts by reason): duplicates after the first, and `seen` items."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    first = np.zeros(len(item_ids), dtype=bool)
    first[np.unique(item_ids, return_index=True)[1]] = True
    already_seen = np.isin(item_ids, seen)
    keep = first & ~already_seen
    return keep, {
        "duplicate": int((~first).sum()),
        "already_seen": int((first & already_seen).sum()),
    }


def drop_shown(
    item_ids: np.ndarray, keep: np.ndarray, shown: np.ndarray, count: int
) -> tuple[np.ndarray, int]:
    """(keep mask, dropped count) without the items shown recently, except the best-ranked of
    them when the rest could not fill a page of `count`."""
    was_shown = keep & np.isin(item_ids, shown)
    short = count - int((keep & ~was_shown).sum())
    if short > 0:  # re-admit the first `short` shown items in rank order
        was_shown[np.flatnonzero(was_shown)[:short]] = False
    return keep & ~was_shown, int(was_shown.sum())


def fresh_items(
    upload_ts: np.ndarray, channel_masks: np.ndarray, request_ts: int, rules: Rules, fresh_bit: int
) -> np.ndarray:
    """(n,) True for items uploaded within fresh_age_s before the request, or tagged fresh."""
    fresh = (upload_ts > 0) & (upload_ts >= request_ts - rules.fresh_age_s)
    fresh &= upload_ts <= request_ts  # an upload "from the future" is a data error, not fresh
    if rules.fresh_channel:
        fresh |= (np.asarray(channel_masks, dtype=np.int64) & fresh_bit) != 0
    return fresh


class PageRules:
    """The per-page rule state of one request: counts per creator and per category so far."""

    def __init__(
        self,
        creators: np.ndarray,  # (n,) creator ids, 0 = unknown
        categories: np.ndarray,  # (n, max_categories) category ids, 0-padded
        fresh: np.ndarray,  # (n,) bool
        rules: Rules,
        page_size: int,
    ):
        _, self.creator = np.unique(creators, return_inverse=True)
        self.creator = self.creator.reshape(-1)
        self.creator_known = np.asarray(creators) > 0
        self.creator_count = np.zeros(int(self.creator.max(initial=-1)) + 1, dtype=np.int64)
        self.creator_cap = rules.max_per_creator or page_size
        codes = np.asarray(categories, dtype=np.int64)
        present = np.unique(codes[codes > 0])
        self.category_hot = np.zeros((len(codes), len(present)), dtype=bool)  # (n, n_present)
        rows, cols = np.nonzero(codes > 0)
        self.category_hot[rows, np.searchsorted(present, codes[rows, cols])] = True
        self.category_count = np.zeros(len(present), dtype=np.int64)
        share = rules.max_category_share
        self.category_cap = page_size if share >= 1 else max(1, int(share * page_size + 1e-9))
        self.fresh = np.asarray(fresh, dtype=bool)
        # A small page holds no fresh slot: the slot would take a large share of it (all of a
        # one-item page) away from relevance.
        slots = rules.fresh_slots if page_size >= rules.fresh_min_page else 0
        self.fresh_left = min(slots, int(self.fresh.sum()))
        self.selected = np.zeros(len(codes), dtype=bool)
        # Caps only fill up: once an item breaks one it stays out, so the masks grow in add().
        self.creator_ok = np.ones(len(codes), dtype=bool)
        self.category_ok = np.ones(len(codes), dtype=bool)
        # No rule can bind on this page: selection may skip the per-step masks (the hot path).
        self.active = bool(
            self.fresh_left
            or (self.creator_known.any() and self.creator_cap < page_size)
            or (len(present) and self.category_cap < page_size)
        )

    def allowed(self, slots_left: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(allowed, creator_ok, category_ok, fresh_reserved) for the next slot."""
        creator_ok, category_ok = self.creator_ok, self.category_ok
        allowed = creator_ok & category_ok & ~self.selected
        reserved = False
        if 0 < slots_left <= self.fresh_left:
            fresh_allowed = allowed & self.fresh
            if fresh_allowed.any():
                allowed, reserved = fresh_allowed, True
        return allowed, creator_ok, category_ok, reserved

    def add(self, j: int) -> None:
        self.selected[j] = True
        if self.creator_known[j]:
            creator = self.creator[j]
            self.creator_count[creator] += 1
            if self.creator_count[creator] >= self.creator_cap:
                self.creator_ok &= self.creator != creator
        hot = self.category_hot[j]
        self.category_count += hot
        filled = hot & (self.category_count >= self.category_cap)
        if filled.any():
            self.category_ok &= ~self.category_hot[:, filled].any(axis=1)
        if self.fresh[j]:
            self.fresh_left = max(self.fresh_left - 1, 0)


def _pick_under_rules(
    gain: np.ndarray, relevance: np.ndarray, page: PageRules, slots_left: int, blocked_by: dict
) -> tuple[int, int, int]:
    """(position, reason, blocked bits) of the next slot when some page rule can bind."""
    allowed, creator_ok, category_ok, reserved = page.allowed(slots_left)
    relaxed = not allowed.any()
    if relaxed:  # every remaining candidate breaks a cap: relax them rather than end short
        allowed = ~page.selected
    masked = np.where(allowed, gain, -np.inf)
    j = int(np.argmax(masked))
    most_relevant = np.where(allowed, relevance, -np.inf)
    if masked[j] == -np.inf:  # the method has no gain left anywhere allowed
        j, reason = int(np.argmax(most_relevant)), FILL
    else:
        reason = RELEVANCE if relevance[j] >= most_relevant.max() else DIVERSITY
    if reserved:
        reason = FRESH
    favourite = int(np.argmax(gain))
    bits = 0
    if gain[favourite] > masked[j] and not allowed[favourite]:
        bits = CREATOR_CAP * (not creator_ok[favourite]) + CATEGORY_SPREAD * (
            not category_ok[favourite]
        )
        if bits:
            blocked_by[favourite] = blocked_by.get(favourite, 0) | bits
    return j, reason, bits | RELAXED * relaxed


def select_page(step: Step, relevance: np.ndarray, page: PageRules, k: int) -> Selection:
    """Greedy selection of up to k items under the page rules (see the module docstring)."""
    relevance = np.asarray(relevance, dtype=np.float64)
    by_relevance = np.argsort(-relevance, kind="stable").tolist()  # for the rule-free path
    order, reasons, blocked = [], [], []
    blocked_by: dict[int, int] = {}  # favourite position -> rule bits
    for t in range(min(k, len(relevance))):
        gain = step.gains()  # -inf where already selected
        if page.active:
            j, reason, bits = _pick_under_rules(gain, relevance, page, k - t, blocked_by)
        else:  # nothing to mask: every step method already excludes the selected items
            while page.selected[by_relevance[0]]:
                by_relevance.pop(0)
            j, bits = int(np.argmax(gain)), 0
            if gain[j] == -np.inf:  # the method has no gain left
                j, reason = by_relevance[0], FILL
            else:
                reason = RELEVANCE if relevance[j] >= relevance[by_relevance[0]] else DIVERSITY
        step.add(j)
        page.add(j)
        order.append(j)
        reasons.append(reason)
        blocked.append(bits)
    on_page = set(order)
    left_out = [bits for position, bits in blocked_by.items() if position not in on_page]
    dropped = {
        "creator_cap": sum(1 for bits in left_out if bits & CREATOR_CAP),
        "category_spread": sum(1 for bits in left_out if bits & CATEGORY_SPREAD),
    }
    return Selection(
        np.asarray(order, dtype=np.int64),
        np.asarray(reasons, dtype=np.int8),
        np.asarray(blocked, dtype=np.int8),
        dropped,
    )
