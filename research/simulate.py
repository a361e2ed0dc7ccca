"""The synthetic world's users as clients of a recommender, judged by the world's ground truth.

Simulated users arrive over simulated days (sessions per day from a heavy-tailed activity), ask
their arm's policy for a page, examine it with the world's position bias and answer from its
truth (`cascade.data.synthetic.true_utility` and `respond`, the functions that generated the
logged data); a like makes the user follow the creator with some probability, and users drop a
follow now and then. Creators upload new tracks through each day (drawn by the world's own
`uploaders` / `upload_items`), so cold start is exercised: every policy sees an upload at its time
(the gateway through AddItems, follow changes through ChangeFollows). Every policy hears the
answers. The policy of the `cascade` arm is the running gateway over gRPC (Recommend, then
Feedback with the request_id); the reference arms run here: random (floor), oracle (ceiling: ranks
by true utility), popular, EASE (refitted on what they heard after each day) and ease+pool (EASE's
ranking with the traffic pool for uploads, cascade/traffic_pool.py: the gateway's own code).

Engagement per impression is reported two ways: expected (the truth's probabilities of play,
complete, like and share at the item's position, weighted like the ranker's fusion) and realised
(the events drawn). Expected engagement has no sampling noise from the responses, so arms compare
on far fewer sessions; logged plays cannot fake either one.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cascade.baselines import EASE
from cascade.data.schema import Dataset
from cascade.data.synthetic import (
    DAY,
    SyntheticConfig,
    content_vectors,
    examination,
    novelty,
    outcome_probabilities,
    respond,
    true_utility,
    upload_items,
    uploaders,
)
from cascade.data.two_sided import Supply, reference_plays
from cascade.progress import Progress
from cascade.traffic_pool import PoolSettings, baseline, choose, place_slots, status
from gateway.arms import Arm, assign
from gateway.client import EVENT_TYPES, Event

# Weights of the engaged outcomes (as the ranker's default fusion weighs its tasks).
ENGAGEMENT = {"play": 1.0, "complete": 1.0, "like": 2.0, "share": 3.0}
REFERENCE_ARMS = ("random", "oracle", "popular", "ease", "ease+pool")


@dataclass
class SimulationConfig:
    days: int = 2
    users: int = 300  # simulated users, drawn from the world's users
    sessions_per_day: float = 1.0  # mean per user; per-user activity is lognormal around it
    page_size: int = 10
    follow_after_like: float = 0.3  # P(the user follows the creator of an item they liked)
    # None: creators upload as the world says (cascade/data/two_sided.py: the world's rate, each
    # creator's reacting to the plays they get); a number: that many a day by fixed creators.
    uploads_per_day: int | None = None
    unfollow_per_day: float = 0.0  # P(a simulated user drops one of their follows on a day)
    arms: tuple[Arm, ...] = tuple(Arm(name) for name in ("cascade", *REFERENCE_ARMS))
    salt: str = "simulation"
    seed: int = 0

    def check(self) -> None:
        if self.days < 1 or self.users < 1 or not 1 <= self.page_size <= 100:
            raise ValueError("SimulationConfig: days >= 1, users >= 1, page_size in 1..100")
        if self.sessions_per_day <= 0 or not 0 <= self.follow_after_like <= 1:
            raise ValueError("SimulationConfig: sessions_per_day > 0, follow_after_like in [0, 1]")
        if (self.uploads_per_day or 0) < 0 or not 0 <= self.unfollow_per_day <= 1:
            raise ValueError("SimulationConfig: uploads_per_day >= 0, unfollow_per_day in [0, 1]")


@dataclass
class Page:
    """What a policy showed: the request id (links feedback to it) and the items, in order."""

    request_id: str
    items: np.ndarray  # (k,) int64
    explored: np.ndarray | None = None  # (k,) bool: slots the traffic pool filled (None: none)


@dataclass
class Uploads:
    """Tracks uploaded at once: world ids, creators, categories (n, 6), upload times (s), content
    vectors (n, d); d = 0 when the dataset's items carry none (its catalogue takes none)."""

    item_ids: np.ndarray
    creators: np.ndarray
    categories: np.ndarray
    upload_ts: np.ndarray
    content: np.ndarray


class Policy(Protocol):
    def recommend(self, user: int, now_s: int, count: int) -> Page: ...
    def observe(self, user: int, page: Page, outcomes: dict[str, np.ndarray], now_s: int): ...
    def end_of_day(self) -> None: ...
    def upload(self, uploads: Uploads, now_s: int) -> None: ...
    def change_follows(self, user: int, accounts: list[int], unfollow: bool, now_s: int): ...


class World:
    """The truth side: utilities with follows and item ages as of now, responses, follows that
    grow, and the creators' supply (`cascade.data.two_sided.Supply`). `neutral`: the world
    without novelty and with creators who do not react (`SyntheticConfig.neutral`);
    `audience_share`: simulated users / the world's users (scales plays for the creators)."""

    def __init__(self, dataset: Dataset, neutral: bool = False, audience_share: float = 1.0):
        if not dataset.truth:
            raise ValueError(f"dataset {dataset.meta.get('name')!r} has no ground truth")
        self.config = SyntheticConfig(**dataset.meta["config"])
        if neutral:
            self.config = self.config.neutral()
        self.truth = dict(dataset.truth)  # uploads extend the item rows of this copy
        self.has_content = "content" in dataset.items  # uploads are sent with their content
        _complete_truth(self.config, self.truth)
        self.n_items = dataset.n_items
        self.creator = np.zeros(self.n_items, dtype=np.int64)
        self.creator[dataset.items["item_id"]] = dataset.items["creator_id"]
        self.upload_ts = np.zeros(self.n_items, dtype=np.int64)
        self.upload_ts[dataset.items["item_id"]] = dataset.items["upload_ts"]
        self.account = np.zeros(dataset.creators["creator_id"].max() + 1, dtype=np.int64)
        self.account[dataset.creators["creator_id"]] = dataset.creators["user_id"]
        follows = dataset.follows
        self.follows = {
            user: set[int]() for user in np.unique(follows["follower_id"]).tolist()
        }  # user -> accounts followed (the world's follows all predate the simulation)
        self.followers: dict[int, set[int]] = {}  # account -> users following it
        for follower, followee in zip(
            follows["follower_id"].tolist(), follows["followee_id"].tolist(), strict=True
        ):
            self.follows[follower].add(followee)
            self.followers.setdefault(followee, set()).add(follower)
        # Per upload of the run, the users following its creator when it was uploaded.
        self.upload_followers: dict[int, np.ndarray] = {}
        self.end_ts = int(max(dataset.interactions["ts"].max(), dataset.items["upload_ts"].max()))
        self.now = self.end_ts  # the simulated clock: item ages are taken at it
        self._examination = examination(self.config)
        reference = reference_plays(dataset.items, dataset.interactions, self.end_ts)
        self.supply = Supply(self.config, self.truth, reference, audience_share)
        self.days: list[dict] = []  # per simulated day: uploads, active creators, joins, stops

    def utility(self, user: int, items: np.ndarray) -> np.ndarray:
        followed = self.follows.get(user, set())
        accounts = self.account[self.creator[items]]
        follows = np.array([a in followed for a in accounts.tolist()], dtype=bool)
        seeker = bool(self.truth["user_novelty"][user])
        newness = novelty(self.config, self.now - self.upload_ts[items], seeker, follows)
        return true_utility(
            self.truth,
            np.full(len(items), user),
            items,
            self.creator[items],
            follows,
            self.config.follow_bonus,
            newness,
        )

    def expected_engagement(self, utility: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Per shown item, the truth's expected weighted engagement at its position."""
        p = outcome_probabilities(utility)
        play = self._examination[position] * p["click"] * p["play"]
        complete = play * p["complete"]
        return (
            ENGAGEMENT["play"] * play
            + ENGAGEMENT["complete"] * complete
            + ENGAGEMENT["like"] * complete * p["like"]
            + ENGAGEMENT["share"] * complete * p["share"]
        )

    def follow(self, user: int, items: np.ndarray) -> list[int]:
        """The user follows the creators of `items`; returns the accounts newly followed."""
        accounts = self.account[self.creator[items]]
        followed = self.follows.setdefault(user, set())
        new = sorted({a for a in accounts.tolist() if a > 0 and a != user} - followed)
        followed.update(new)
        for account in new:
            self.followers.setdefault(account, set()).add(user)
        return new

    def unfollow(self, user: int, rng: np.random.Generator) -> list[int]:
        """The user drops one account they follow (none when they follow no one)."""
        followed = sorted(self.follows.get(user, ()))
        if not followed:
            return []
        account = followed[int(rng.integers(len(followed)))]
        self.follows[user].discard(account)
        self.followers.get(account, set()).discard(user)
        return [account]

    def draw_uploads(self, n: int | None, start_s: int, rng: np.random.Generator) -> DayUploads:
        """The tracks uploaded through the day from start_s, in time order, with the world's
        next ids; each joins the world when released (`DayUploads.due`). n None: the supply's
        creators decide (and join or stop first); a number: n tracks by the log's uploaders."""
        if n is None:
            day = self.supply.start_day(self.truth, start_s, rng)
            creators = rng.permutation(day.pop("creators"))
            joined = self.supply.n_creators + 1 - len(self.account)  # no accounts: no followers
            self.account = np.r_[self.account, np.zeros(joined, dtype=np.int64)]
            self.days.append(day | {"uploads": len(creators)})
        else:
            creators = uploaders(self.config, self.truth, n, rng)
            self.days.append({"uploads": n})
        n = len(creators)
        categories, rows = upload_items(self.config, self.truth, creators, rng)
        when = np.sort(start_s + rng.integers(0, DAY, n))
        ids = np.arange(self.n_items, self.n_items + n, dtype=np.int64)
        content = rows["item_content"] if self.has_content else np.zeros((n, 0), np.float32)
        return DayUploads(self, Uploads(ids, creators, categories, when, content), rows)

    def add(self, uploads: Uploads, rows: dict[str, np.ndarray]) -> None:
        """Uploaded tracks (the next ids, in order) become part of the world."""
        if len(uploads.item_ids) and uploads.item_ids[0] != self.n_items:
            raise ValueError(f"uploads must take the next id {self.n_items}")
        for name in ("item_latent", "item_quality", "item_popularity", "item_content"):
            self.truth[name] = np.concatenate([self.truth[name], rows[name]])
        self.creator = np.concatenate([self.creator, uploads.creators])
        self.upload_ts = np.concatenate([self.upload_ts, uploads.upload_ts])
        for item, creator in zip(uploads.item_ids.tolist(), uploads.creators.tolist(), strict=True):
            account = int(self.account[creator]) if creator < len(self.account) else 0
            followers = self.followers.get(account, set()) if account else set()
            self.upload_followers[item] = np.array(sorted(followers), dtype=np.int64)
        self.n_items += len(uploads.item_ids)
        self.supply.uploaded(uploads.item_ids, uploads.creators, uploads.upload_ts)


def _complete_truth(config: SyntheticConfig, truth: dict[str, np.ndarray]) -> None:
    """A dataset generated before the world had novelty seekers and content vectors gets them,
    drawn from the same streams as the generator's."""
    rng = np.random.default_rng
    if "user_novelty" not in truth:
        n = len(truth["user_taste"]) - 1
        seeker = rng([config.seed, 7]).random(n) < config.novelty_share
        truth["user_novelty"] = np.r_[False, seeker]
    if "item_content" not in truth:
        latent = truth["item_latent"][1:]
        content = content_vectors(config, latent, rng([config.seed, 8]))
        truth["item_content"] = np.vstack([np.zeros((1, config.dim), np.float32), content])


class DayUploads:
    """One day's drawn uploads, released in time order into the world and to every policy."""

    def __init__(self, world: World, uploads: Uploads, rows: dict[str, np.ndarray]):
        self.world, self.uploads, self.rows = world, uploads, rows
        self.released = 0

    def due(self, now_s: int | None) -> Uploads | None:
        """The uploads up to now_s (None: all the rest) not released yet, now in the world."""
        times = self.uploads.upload_ts
        end = len(times) if now_s is None else int(np.searchsorted(times, now_s, "right"))
        if end <= self.released:
            return None
        part = slice(self.released, end)
        self.released = end
        out = Uploads(*(getattr(self.uploads, f)[part] for f in Uploads.__dataclass_fields__))
        self.world.add(out, {name: rows[part] for name, rows in self.rows.items()})
        return out


# -- reference policies (in process) ---------------------------------------------------------
class _Reference:
    """Shared by the in-process arms: per-user consumed items are never shown again."""

    def __init__(self, dataset: Dataset, rng: np.random.Generator):
        self.n_items = dataset.n_items
        self.rng = rng
        self.consumed: dict[int, set[int]] = {}
        log = dataset.interactions
        for user, item in zip(log["user_id"].tolist(), log["item_id"].tolist(), strict=True):
            self.consumed.setdefault(user, set()).add(item)
        self.heard: list[tuple[int, int]] = []  # (user, item) plays heard online
        self._served = 0

    def recommend(self, user: int, now_s: int, count: int) -> Page:
        scores = self.scores(user).astype(np.float64)  # (n_items,) row 0 = no item
        scores[0] = -np.inf
        seen = list(self.consumed.get(user, ()))
        scores[seen] = -np.inf
        count = min(count, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, count - 1)[:count] if count else np.zeros(0, np.int64)
        items = top[np.argsort(-scores[top], kind="stable")]
        self._served += 1
        return Page(f"{type(self).__name__}-{self._served}", items.astype(np.int64))

    def observe(self, user: int, page: Page, outcomes: dict[str, np.ndarray], now_s: int):
        played = page.items[outcomes["play"]].tolist()
        self.consumed.setdefault(user, set()).update(played)
        self.heard += [(user, item) for item in played]

    def end_of_day(self) -> None:
        pass

    def upload(self, uploads: Uploads, now_s: int) -> None:
        """New tracks join the catalogue this arm ranks (each arm decides what it knows)."""
        self.n_items += len(uploads.item_ids)

    def change_follows(self, user: int, accounts: list[int], unfollow: bool, now_s: int):
        pass  # the in-process arms do not read the follow graph (the oracle asks the world)

    def scores(self, user: int) -> np.ndarray:
        raise NotImplementedError


class RandomPolicy(_Reference):
    def scores(self, user: int) -> np.ndarray:
        return self.rng.random(self.n_items)


class OraclePolicy(_Reference):
    def __init__(self, dataset: Dataset, rng: np.random.Generator, world: World):
        super().__init__(dataset, rng)
        self.world = world
        self.items = np.arange(self.n_items)

    def upload(self, uploads: Uploads, now_s: int) -> None:
        super().upload(uploads, now_s)
        self.items = np.arange(self.n_items)  # ranks a new track by its true utility at once

    def scores(self, user: int) -> np.ndarray:
        return self.world.utility(user, self.items)


class PopularPolicy(_Reference):
    def __init__(self, dataset: Dataset, rng: np.random.Generator):
        super().__init__(dataset, rng)
        self.counts = np.bincount(dataset.interactions["item_id"], minlength=self.n_items)
        self.counts = self.counts.astype(np.float64)

    def observe(self, user: int, page: Page, outcomes: dict[str, np.ndarray], now_s: int):
        super().observe(user, page, outcomes, now_s)
        np.add.at(self.counts, page.items[outcomes["play"]], 1.0)

    def upload(self, uploads: Uploads, now_s: int) -> None:
        super().upload(uploads, now_s)
        self.counts = np.concatenate([self.counts, np.zeros(len(uploads.item_ids))])

    def scores(self, user: int) -> np.ndarray:
        return self.counts + self.rng.random(self.n_items) * 1e-3  # ties broken at random


class EASEPolicy(_Reference):
    """EASE on the logged plays plus every play it heard, refitted at the end of each day."""

    def __init__(self, dataset: Dataset, rng: np.random.Generator):
        super().__init__(dataset, rng)
        self.log = {k: dataset.interactions[k] for k in ("user_id", "item_id")}
        self.n_users = dataset.n_users
        self.end_of_day()

    def end_of_day(self) -> None:
        heard = np.array(self.heard, dtype=np.int64).reshape(-1, 2)
        train = {
            "user_id": np.concatenate([self.log["user_id"], heard[:, 0]]),
            "item_id": np.concatenate([self.log["item_id"], heard[:, 1]]),
        }
        self.model = EASE().fit(train, self.n_users, self.n_items)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "model"}  # refitted on load

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.end_of_day()

    def scores(self, user: int) -> np.ndarray:
        fitted = self.model.score(np.array([user]))[0]
        # Tracks uploaded since the last refit are unknown to it until the next one.
        scores = np.pad(fitted, (0, self.n_items - len(fitted)), constant_values=-np.inf)
        return scores + self.rng.random(self.n_items) * 1e-6


class PooledEASEPolicy(EASEPolicy):
    """EASE's ranking with the traffic pool (the gateway's controller, cascade/traffic_pool.py):
    each upload's delivered impressions and plays are what this arm showed; affinity is
    following the creator, else the user's category match (share of their plays in the
    upload's best category over their top category's share; 0.5 for a user with no plays)."""

    def __init__(self, dataset: Dataset, rng: np.random.Generator, pool: PoolSettings):
        self.pool = pool
        categories = dataset.items["categories"]
        self.item_categories = np.zeros((dataset.n_items, categories.shape[1]), np.int64)
        self.item_categories[dataset.items["item_id"]] = categories
        self.n_categories = len(dataset.meta["categories"])
        self.item_creator = np.zeros(dataset.n_items, np.int64)
        self.item_creator[dataset.items["item_id"]] = dataset.items["creator_id"]
        self.account = np.zeros(dataset.creators["creator_id"].max() + 1, np.int64)
        self.account[dataset.creators["creator_id"]] = dataset.creators["user_id"]
        self.follows: dict[int, set[int]] = {}
        for follower, followee in zip(
            dataset.follows["follower_id"].tolist(),
            dataset.follows["followee_id"].tolist(),
            strict=True,
        ):
            self.follows.setdefault(follower, set()).add(followee)
        self.upload_ts = np.zeros(dataset.n_items, np.int64)  # 0: not an upload of the run
        self.delivered = np.zeros(dataset.n_items, np.int64)
        self.plays = np.zeros(dataset.n_items, np.int64)
        self.tastes: dict[int, np.ndarray] = {}  # user -> plays per category
        self.given: dict[int, set[int]] = {}
        super().__init__(dataset, rng)
        for user, item in zip(
            dataset.interactions["user_id"].tolist(),
            dataset.interactions["item_id"].tolist(),
            strict=True,
        ):
            self._taste(user, item)

    def recommend(self, user: int, now_s: int, count: int) -> Page:
        page = super().recommend(user, now_s, count)
        young = np.flatnonzero((self.upload_ts > 0) & (now_s - self.upload_ts < self.pool.window_s))
        young = young[self.upload_ts[young] <= now_s]
        excluded = self.consumed.get(user, set()) | self.given.get(user, set())
        young = young[~np.isin(young, [*excluded, *page.items.tolist()])]
        if not self.pool.on or not len(young):
            return page
        rate = baseline(self.pool, self.delivered[young], self.plays[young])
        state, _, boost = status(
            self.pool, now_s - self.upload_ts[young], self.delivered[young], self.plays[young], rate
        )
        followed = self.follows.get(user, set())
        accounts = self.account[np.minimum(self.item_creator[young], len(self.account) - 1)]
        follower = np.array([a in followed for a in accounts.tolist()], bool)
        match, draws = self._match(user, young), self.rng.random(len(young))
        picks = young[choose(state, boost, follower, match, draws, self.pool.slots)]
        start, n = place_slots(len(page.items), len(picks), self.pool.position, count)
        if not n:
            return page
        organic = page.items[: count - n]
        items = np.concatenate([organic[:start], picks[:n], organic[start:]])
        explored = np.zeros(len(items), bool)
        explored[start : start + n] = True
        self.given.setdefault(user, set()).update(picks[:n].tolist())
        return Page(page.request_id, items, explored)

    def observe(self, user: int, page: Page, outcomes: dict[str, np.ndarray], now_s: int):
        super().observe(user, page, outcomes, now_s)
        np.add.at(self.delivered, page.items, 1)
        played = page.items[outcomes["play"]]
        np.add.at(self.plays, played, 1)
        for item in played.tolist():
            self._taste(user, item)

    def upload(self, uploads: Uploads, now_s: int) -> None:
        super().upload(uploads, now_s)
        n = len(uploads.item_ids)
        self.upload_ts = np.r_[self.upload_ts, uploads.upload_ts.astype(np.int64)]
        self.delivered, self.plays = (
            np.r_[self.delivered, np.zeros(n, np.int64)],
            np.r_[self.plays, np.zeros(n, np.int64)],
        )
        self.item_creator = np.r_[self.item_creator, uploads.creators.astype(np.int64)]
        self.item_categories = np.vstack([self.item_categories, uploads.categories])

    def change_follows(self, user: int, accounts: list[int], unfollow: bool, now_s: int):
        followed = self.follows.setdefault(user, set())
        if unfollow:
            followed.difference_update(accounts)
        else:
            followed.update(accounts)

    def _taste(self, user: int, item: int) -> None:
        counts = self.tastes.setdefault(user, np.zeros(self.n_categories, np.float64))
        categories = self.item_categories[item]
        counts[categories[categories > 0]] += 1

    def _match(self, user: int, items: np.ndarray) -> np.ndarray:
        counts = self.tastes.get(user)
        if counts is None or not counts.max():
            return np.full(len(items), 0.5)
        share = np.r_[counts / counts.max()]
        share[0] = 0.0  # padding
        return share[self.item_categories[items]].max(axis=1)


def reference_policy(
    name: str, dataset: Dataset, world: World, seed: int, pool: PoolSettings | None = None
) -> Policy:
    """An in-process arm; `pool`: the ease+pool arm's pool settings (the served profile's, with
    the simulation's K)."""
    rng = np.random.default_rng([seed, REFERENCE_ARMS.index(name)])
    if name == "oracle":
        return OraclePolicy(dataset, rng, world)
    if name == "ease+pool":
        return PooledEASEPolicy(dataset, rng, PoolSettings() if pool is None else pool)
    return {"random": RandomPolicy, "popular": PopularPolicy, "ease": EASEPolicy}[name](
        dataset, rng
    )


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Impressions:
    """One row per shown item, as parallel lists (turned into arrays by `columns`)."""

    rows: dict[str, list] = field(
        default_factory=lambda: {
            k: []
            for k in (
                "arm",
                "day",
                "session",
                "user",
                "item",
                "position",
                "expected",
                "realised",
                "played",
                "creator",
                "age_s",
                "explored",
            )
        }
    )

    def add(self, **values) -> None:
        n = len(values["item"])
        for key, column in self.rows.items():
            value = values[key]
            column.extend(value if isinstance(value, (list, np.ndarray)) else [value] * n)

    def columns(self) -> dict[str, np.ndarray]:
        return {key: np.asarray(values) for key, values in self.rows.items()}


def simulated_users(
    dataset: Dataset, config: SimulationConfig, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The users a run of `config` simulates: its seeded generator draws them first."""
    rng = np.random.default_rng([config.seed, 1]) if rng is None else rng
    ids = dataset.users["user_id"]
    return np.sort(rng.choice(ids, min(config.users, len(ids)), False))


def simulate(
    dataset: Dataset,
    policies: dict[str, Policy],
    config: SimulationConfig,
    on_day_end: Callable[[int], None] | None = None,
    world: World | None = None,
    checkpoint: Path | None = None,
) -> dict[str, np.ndarray]:
    """Runs the simulation; returns the impression rows (see Impressions). `world`: the truth
    the run changes (uploads, follows); pass the oracle's, so it ranks by the same truth.
    `checkpoint`: a file written after each day (world, in-process policies, rows, random
    streams); a run given one that exists resumes after its day."""
    config.check()
    missing = {arm.name for arm in config.arms} - set(policies)
    if missing:
        raise ValueError(f"no policy for arms {sorted(missing)}")
    world = World(dataset) if world is None else world
    rng = np.random.default_rng([config.seed, 1])
    users = simulated_users(dataset, config, rng)
    arm_of = {int(u): assign(config.salt, str(int(u)), config.arms).name for u in users}
    activity = rng.lognormal(0.0, 1.0, len(users)) / np.exp(0.5)  # mean 1, heavy-tailed
    start = (world.end_ts // DAY + 1) * DAY
    # Who comes when, the world's uploads and unfollows, and the users' answers draw from their
    # own streams: runs of different policies from one seed share the same schedule of sessions.
    streams = {
        "schedule": np.random.default_rng([config.seed, 3]),
        "catalog": np.random.default_rng([config.seed, 2]),
        "answers": rng,
    }
    state: dict[str, Any] = {"day": 0, "session": 0, "rows": Impressions()}
    if checkpoint is not None and checkpoint.exists():
        state = _restore(checkpoint, world, policies, streams)
    rows: Impressions = state["rows"]
    positions = np.arange(config.page_size)
    session: int = state["session"]
    per_day = float(activity.sum()) * config.sessions_per_day  # sessions a day, on average
    bar = Progress("simulate", round(per_day * (config.days - state["day"])), "sessions")
    for day in range(state["day"], config.days):
        schedule, catalog_rng, rng = streams["schedule"], streams["catalog"], streams["answers"]
        sessions = schedule.poisson(activity * config.sessions_per_day)
        who = np.repeat(users, sessions)
        bar.set_total(bar.n + len(who) + round(per_day * (config.days - day - 1)))
        bar.note(day=f"{day + 1}/{config.days}")
        when = start + day * DAY + schedule.integers(0, DAY, len(who))
        world.now = start + day * DAY
        uploads = world.draw_uploads(config.uploads_per_day, start + day * DAY, catalog_rng)
        leaving = users[catalog_rng.random(len(users)) < config.unfollow_per_day]
        for user in leaving.tolist():  # at the day's start
            dropped = world.unfollow(user, catalog_rng)
            for policy in policies.values():
                if dropped:
                    policy.change_follows(user, dropped, True, start + day * DAY)
        for user, now in zip(who[np.argsort(when)].tolist(), np.sort(when).tolist(), strict=True):
            world.now = now
            released = uploads.due(now)
            if released is not None:
                for policy in policies.values():
                    policy.upload(released, now)
            arm = arm_of[user]
            page = policies[arm].recommend(user, now, config.page_size)
            shown = positions[: len(page.items)]
            utility = world.utility(user, page.items)
            outcomes = respond(world.config, utility, shown, rng)
            policies[arm].observe(user, page, outcomes, now)
            world.supply.played(page.items[outcomes["play"]], now)
            follows = outcomes["like"] & (rng.random(len(shown)) < config.follow_after_like)
            followed = world.follow(user, page.items[follows])
            if followed:
                for policy in policies.values():
                    policy.change_follows(user, followed, False, now)
            realised = sum(ENGAGEMENT[e] * outcomes[e] for e in ENGAGEMENT)
            rows.add(
                arm=arm,
                day=day,
                session=session,
                user=user,
                item=page.items,
                position=shown,
                expected=world.expected_engagement(utility, shown),
                realised=realised,
                played=outcomes["play"],
                creator=world.creator[page.items],
                age_s=now - world.upload_ts[page.items],
                explored=np.zeros(len(shown), bool) if page.explored is None else page.explored,
            )
            session += 1
            bar.update()
        released = uploads.due(None)  # the day's last uploads, after its last session
        if released is not None:
            for policy in policies.values():
                policy.upload(released, int(released.upload_ts[-1]))
        if day + 1 < config.days:  # a refit after the last day would serve no one
            for policy in policies.values():
                policy.end_of_day()
        if on_day_end is not None:
            with bar.paused():  # a daily retrain prints and trains with bars of its own
                on_day_end(day)
        if checkpoint is not None:
            _save(checkpoint, day + 1, session, rows, world, policies, streams)
    bar.close()
    return rows.columns()


def _save(
    path: Path,
    day: int,
    session: int,
    rows: Impressions,
    world: World,
    policies: dict[str, Policy],
    streams: dict[str, np.random.Generator],
) -> None:
    """The run after `day` days, written whole or not at all (rename)."""
    held = {name: p for name, p in policies.items() if isinstance(p, _Reference)}
    state = {"day": day, "session": session, "rows": rows, "world": world, "policies": held}
    state["streams"] = streams
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as file:
        pickle.dump(state, file, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(path)


def _restore(
    path: Path, world: World, policies: dict[str, Policy], streams: dict[str, np.random.Generator]
) -> dict:
    """A checkpoint's state poured into the caller's world, policies and streams (the objects
    the caller holds stay the ones the run uses)."""
    with path.open("rb") as file:
        state = pickle.load(file)  # noqa: S301 (the run's own file)
    world.__dict__.update(state["world"].__dict__)
    for name, saved in state["policies"].items():
        policy = policies[name]
        policy.__dict__.update(saved.__dict__)
        if isinstance(policy, OraclePolicy):
            policy.world = world
    streams.update(state["streams"])
    return state


class GatewayPolicy:
    """The running stack: Recommend through the gateway, every answer back through Feedback
    (an impression for each shown item, then click, play, complete, like, share, and skip for a
    play that did not complete), stamped with the simulated time and the page's request_id. Both
    calls carry the simulated time as the request time (a gateway with clock "caller" serves and
    logs at it, so freshness and counters run on the simulated clock).

    `arm`: the gateway arm this policy's users must get (the gateway's `arms` mirror the
    simulation's, same salt), checked on every answer; "" = a gateway without arms. Several
    arms share one gateway: only the one with `catalogue` sends it the uploads and follows."""

    def __init__(self, client, arm: str = "", catalogue: bool = True):
        self.client = client  # gateway.client.CascadeClient
        self.arm, self.catalogue = arm, catalogue
        self.rejected = 0

    def recommend(self, user: int, now_s: int, count: int) -> Page:
        answer = self.client.recommend(user, count=count, request_time_ms=now_s * 1000)
        if answer.arm != self.arm:
            raise RuntimeError(
                f"user {user}: the gateway served arm {answer.arm!r}, the simulation expects "
                f"{self.arm!r}: its arms or salt differ from the simulation's"
            )
        items = np.asarray(answer.items.item_ids, dtype=np.int64)
        explored = np.zeros(len(items), dtype=bool)
        explored[list(answer.explored_positions)] = True
        return Page(answer.request_id, items, explored)

    def observe(self, user: int, page: Page, outcomes: dict[str, np.ndarray], now_s: int):
        kinds = {"impression": np.ones(len(page.items), dtype=bool), **outcomes}
        kinds["skip"] = outcomes["play"] & ~outcomes["complete"]
        events = [
            Event(
                user_id=user,
                item_id=int(item),
                type=EVENT_TYPES[kind],
                timestamp_ms=now_s * 1000 + step,
                request_id=page.request_id,
            )
            for step, kind in enumerate(kinds)
            for item in page.items[kinds[kind]].tolist()
        ]
        if events:
            answer = self.client.feedback(events, request_time_ms=now_s * 1000)
            self.rejected += len(answer.rejected)

    def end_of_day(self) -> None:
        pass

    def upload(self, uploads: Uploads, now_s: int) -> None:
        """AddItems with the world's id as the item key: the gateway's dense ids follow the
        world's (both number uploads after the dataset's items, in order)."""
        if not self.catalogue:
            return
        items = [
            {
                "item_key": str(item),
                "creator_id": int(creator),
                "categories": [int(c) for c in categories if c > 0],
                "upload_time_ms": int(ts) * 1000,
                "content": content,
            }
            for item, creator, categories, ts, content in zip(
                uploads.item_ids.tolist(),
                uploads.creators.tolist(),
                uploads.categories,
                uploads.upload_ts.tolist(),
                uploads.content.tolist(),
                strict=True,
            )
        ]
        answer = self.client.add_items(items, request_time_ms=now_s * 1000)
        if list(answer.item_ids) != uploads.item_ids.tolist():
            raise RuntimeError(
                f"the gateway gave uploads ids {list(answer.item_ids)}, the world "
                f"{uploads.item_ids.tolist()}: its catalogue is not the world's"
            )

    def change_follows(self, user: int, accounts: list[int], unfollow: bool, now_s: int):
        if not self.catalogue:
            return
        changes = [(user, account, unfollow) for account in accounts]
        self.client.change_follows(changes, request_time_ms=now_s * 1000)


def summarise(
    rows: dict[str, np.ndarray], catalog_size: int, first_upload: int | None = None
) -> list[dict]:
    """Per arm and day: impressions, expected and realised engagement per impression with 95%
    intervals (over sessions), catalogue coverage, creator Gini, share of impressions on items
    younger than a day, and the fraction of the oracle-random gap closed. Exploration: the share
    of impressions in explored slots and their expected engagement, and the fresh share of the
    other (organic) slots; with `first_upload` (the world's first uploaded id), the share of
    organic impressions on any track uploaded during the run."""
    report = []
    for day in np.unique(rows["day"]).tolist():
        for arm in np.unique(rows["arm"]).tolist():
            m = (rows["day"] == day) & (rows["arm"] == arm)
            if not m.any():
                continue
            entry = {"arm": arm, "day": day, "impressions": int(m.sum())}
            entry["sessions"] = int(len(np.unique(rows["session"][m])))
            for metric in ("expected", "realised"):
                mean, half = _mean_interval(rows[metric][m], rows["session"][m])
                entry[f"{metric}_engagement"] = mean
                entry[f"{metric}_ci95"] = half
            entry["coverage"] = len(np.unique(rows["item"][m])) / catalog_size
            entry["creator_gini"] = _gini(np.bincount(rows["creator"][m]))
            entry["fresh_share"] = float(np.mean(rows["age_s"][m] < DAY))
            explored = rows["explored"][m].astype(bool) if "explored" in rows else np.zeros(0, bool)
            if explored.any():
                entry["explored_share"] = float(explored.mean())
                entry["explored_expected"] = float(rows["expected"][m][explored].mean())
            organic = ~explored if len(explored) else np.ones(int(m.sum()), bool)
            entry["organic_fresh_share"] = float(np.mean(rows["age_s"][m][organic] < DAY))
            if first_upload is not None:
                uploads = rows["item"][m][organic] >= first_upload
                entry["organic_upload_share"] = float(np.mean(uploads))
            report.append(entry)
        by_arm = {e["arm"]: e for e in report if e["day"] == day}
        if {"random", "oracle"} <= set(by_arm):
            floor = by_arm["random"]["expected_engagement"]
            gap = by_arm["oracle"]["expected_engagement"] - floor
            for entry in by_arm.values():
                entry["oracle_gap_closed"] = (entry["expected_engagement"] - floor) / gap
    return report


def _mean_interval(values: np.ndarray, sessions: np.ndarray) -> tuple[float, float]:
    """Mean per impression, and a 95% half-width from the spread of per-session means (the
    impressions of one session are not independent draws)."""
    _, index, counts = np.unique(sessions, return_inverse=True, return_counts=True)
    per_session = np.bincount(index, weights=values) / counts
    mean = float(values.mean())
    if len(per_session) < 2:
        return mean, float("nan")
    n = len(counts)
    weights = counts / counts.sum()
    spread = np.sqrt(np.sum(weights**2 * (per_session - mean) ** 2) * n / (n - 1))
    return mean, float(1.96 * spread)


def _gini(counts: np.ndarray) -> float:
    """0 when every creator got the same exposure, towards 1 when one got it all."""
    x = np.sort(counts[counts > 0].astype(np.float64))
    if len(x) == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))
