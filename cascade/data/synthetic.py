"""A seeded synthetic UGC music platform in the common schema, with the ground truth behind it.

Users sit in taste clusters; creators (a subset of users) upload tracks over time; users follow
accounts (homophily + preferential attachment); a biased logging policy (popularity, a noisy taste
match, followed creators, fresh uploads) shows pages of tracks, and click -> play -> complete ->
like / share are drawn from a known utility under position bias. All numpy, users in chunks, so
1M users x 1M items fits in a few GiB. The same config (seed included) gives identical tables.
`SyntheticConfig` is the one definition of the world and its defaults: the generator, `cascade
data` and the simulator (its two-sided dynamics in cascade/data/two_sided.py) all read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import numpy as np

from cascade.data.schema import MAX_CATEGORIES, Dataset
from cascade.progress import progress as progress_bar

DAY = 86_400
GENRES = (
    "pop", "rock", "hip-hop", "electronic", "r&b", "jazz", "classical", "country", "folk", "metal",
    "punk", "indie", "reggae", "latin", "blues", "soul", "k-pop", "ambient", "lo-fi", "soundtrack",
)  # fmt: skip
OCCUPATIONS = ("unknown", "student", "employed", "self-employed", "unemployed", "retired")
# Where the logging policy found each shown item (truth["impression_source"]).
SOURCES = ("popularity", "taste", "social", "fresh", "filler")
TASKS = ["click", "play", "complete", "like", "share"]
# (bias, slope) of the logistic in utility for each step of the event chain.
OUTCOME_LOGITS = {
    "click": (-3.0, 2.0),  # clicked given examined ("attractiveness")
    "play": (1.5, 1.0),  # given click
    "complete": (-1.0, 1.5),  # given play
    "like": (-3.5, 1.5),  # given complete
    "share": (-5.5, 1.5),  # given complete
}
_FRESH_WINDOW = 3 * DAY  # the "fresh" source shows uploads at most this old
_SOCIAL_RECENCY = 7 * DAY  # the "social" source favours a followed creator's recent uploads


@dataclass
class SyntheticConfig:
    """The world: sizes and time span, its biased logging policy, and its two-sided dynamics.

    Each field says its meaning and where its value comes from: a published magnitude (named) or
    a stated assumption. `world_hash` fingerprints all of them; every simulation report carries it.
    """

    n_users: int = 20_000  # the platform's audience (simulated users are a sample of it)
    n_items: int = 10_000  # catalogue at the log's end
    n_creators: int | None = None  # None: n_items // 20 (at least 1)
    n_categories: int = 20  # genres; the first 20 have real names
    n_clusters: int = 24  # taste clusters
    n_regions: int = 50
    dim: int = 16  # latent taste dimension
    # Length of the impression log. With 70% of the catalogue uploaded during it, the platform
    # uploads (1 - initial_item_fraction) * n_items / days = 333 tracks a day (`uploads_per_day`),
    # 3.3% of the catalogue a day and 0.017 per user-day; published magnitudes: WeSing about 5 M
    # works a day over more than 150 M monthly users (0.033 per user), and a creator-platform
    # example of 0.1 posts per daily user. The simulator keeps this rate after the log.
    days: int = 21
    start_ts: int = 1_767_225_600  # 2026-01-01T00:00:00Z, first second of the log
    history_days: int = 180  # catalog and follows that predate the log
    impressions_per_user: float = 200.0  # mean over the log; per-user activity is lognormal
    page_size: int = 10
    initial_item_fraction: float = 0.3  # items uploaded before the log starts; the rest flow in
    follows_per_user: float = 10.0
    follow_homophily: float = 0.8  # share of follows aimed at the follower's own cluster
    creator_zipf: float = 1.0  # creator popularity ~ rank ** -creator_zipf
    # Logging policy: share of slots from each source (normalised), and its biases.
    popularity_share: float = 0.35
    taste_share: float = 0.4
    social_share: float = 0.15
    fresh_share: float = 0.1
    popularity_exponent: float = 1.0  # the popularity source draws items ~ popularity ** this
    policy_noise: float = 1.0  # noise in the policy's view of taste and utility
    position_decay: float = 0.8  # examination probability = (1 + position) ** -position_decay
    follow_bonus: float = 0.5  # utility added when the user follows the item's creator
    # -- the audience's side of new content (assumptions; utility units as follow_bonus) --------
    novelty_share: float = 0.3  # share of users who value novelty (assumption)
    # Utility a just-uploaded item adds for a novelty seeker, and for every follower of its
    # creator on the creator's own uploads; it decays as exp(-age / novelty_decay_s). Assumption:
    # the size of the follow bonus, gone within a few days (a feed's "new" shelf).
    novelty_bonus: float = 0.5
    novelty_decay_s: int = DAY
    # Content vector = item latent + N(0, (content_noise / sqrt(dim))^2) per dimension: what an
    # audio encoder would give at upload. The latents spread about 1.3 / sqrt(dim) per dimension,
    # so 1.0 keeps the signal-to-noise ratio near 1.7 (assumption; `python -m bench.content_signal`
    # measures how far a content-only model falls short of the oracle).
    content_noise: float = 1.0
    # -- the creators' side (cascade/data/two_sided.py applies these) ---------------------------
    # Creators react to exposure x = full-audience plays per recent upload / the plays an upload
    # got in the log (x = 1: as the logging policy served them). Upload rate multiplier
    # m(x) = upload_floor + (1 - upload_floor) * (1 + response_half) * x / (response_half + x):
    # m(0) = upload_floor, m(1) = 1, rising to upload_floor + (1 - upload_floor) * (1 +
    # response_half). Daily chance of stopping q(x) = stop_starved / (1 + x / stop_half).
    # Assumptions, shaped by what platforms report: earlier first exposure raises the will to
    # publish, and traffic concentrated on a few creators drives creator churn.
    creator_response: bool = True  # False: creators upload and stop regardless of plays
    response_window_days: int = 7  # "recent uploads": those of the last week
    upload_floor: float = 0.2  # a creator nobody plays still uploads at 20% of their rate
    response_half: float = 1.0  # x at which the multiplier's rise is half done
    stop_starved: float = 0.05  # P(stop) per day of a creator whose recent uploads got no plays
    stop_half: float = 0.25  # q(1) = 0.01 / day: a creator career of about 100 days as served
    # New creators join at this share of the world's creators a day (assumption: it balances
    # q(1), so the status quo keeps its creator count); they draw styles and fame as the first did.
    creator_join_rate: float = 0.01
    # Publishing target: a platform promises a new post about 100 impressions in its first 24 h
    # (Xiaohongshu's cold start); the simulator scales it to its audience (`exposure_target`).
    platform_target_impressions: int = 100
    seed: int = 0

    @property
    def creators(self) -> int:
        return self.n_creators if self.n_creators is not None else max(1, self.n_items // 20)

    def check(self) -> None:
        positive = ("n_users", "n_items", "creators", "n_categories", "n_clusters", "n_regions")
        for name in (*positive, "dim", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1")
        if not 1 <= self.page_size <= 1000:
            raise ValueError("SyntheticConfig.page_size must be in 1..1000")
        if self.seed < 0:
            raise ValueError("SyntheticConfig.seed must be >= 0")
        if self.history_days * DAY < _FRESH_WINDOW:
            raise ValueError("SyntheticConfig.history_days must be >= 3")
        shares = (self.popularity_share, self.taste_share, self.social_share, self.fresh_share)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError("SyntheticConfig source shares must be >= 0 with a positive sum")
        for name in ("novelty_share", "upload_floor", "stop_starved", "creator_join_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SyntheticConfig.{name} must be in [0, 1]")
        for name in ("novelty_decay_s", "response_window_days", "response_half", "stop_half"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SyntheticConfig.{name} must be > 0")
        if self.content_noise < 0 or self.novelty_bonus < 0:
            raise ValueError("SyntheticConfig.content_noise and novelty_bonus must be >= 0")

    @property
    def uploads_per_day(self) -> float:
        """The platform's uploads a day: the log's rate, kept by the simulator after it."""
        return (1.0 - self.initial_item_fraction) * self.n_items / self.days

    def neutral(self) -> SyntheticConfig:
        """The same world without its two-sided mechanics: no novelty, creators who upload and
        stop whatever plays they get (a method that only wins by them shows here)."""
        return replace(self, novelty_bonus=0.0, creator_response=False)

    def world_hash(self) -> str:
        """Fingerprint of every parameter: two reports with the same hash played one world."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def exposure_target(config: SyntheticConfig, simulated_users: int) -> int:
    """K: impressions a new upload should get in its first 24 h among `simulated_users` of the
    world's audience, K = max(1, round(platform_target_impressions * simulated_users /
    n_users)): the platform's promise scaled to the share of the audience simulated."""
    share = simulated_users / config.n_users
    return max(1, round(config.platform_target_impressions * share))


def novelty(
    config: SyntheticConfig, age_s: np.ndarray, seeker: np.ndarray | bool, followed: np.ndarray
) -> np.ndarray:
    """Utility an item's newness adds: novelty_bonus * exp(-age / novelty_decay_s) for a user
    who values novelty or follows the item's creator, 0 for the rest."""
    fresh = np.exp(-np.maximum(age_s, 0) / config.novelty_decay_s)
    return (config.novelty_bonus * fresh * (seeker | followed)).astype(np.float32)


def content_vectors(
    config: SyntheticConfig, latent: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """What an encoder sees of tracks with these latents: latent + noise (`content_noise`)."""
    return latent + _normal(rng, latent.shape, config.content_noise / config.dim**0.5)


def examination(config: SyntheticConfig) -> np.ndarray:
    """P(examined | position), (page_size,): the position bias of the log."""
    return (1.0 + np.arange(config.page_size)) ** -config.position_decay


def outcome_probabilities(utility: np.ndarray) -> dict[str, np.ndarray]:
    """Each event's probability given the previous one (click: given examined), from utility."""
    return {event: _sigmoid(b + s * utility) for event, (b, s) in OUTCOME_LOGITS.items()}


def true_utility(
    truth: dict[str, np.ndarray],
    users: np.ndarray,
    items: np.ndarray,
    creators: np.ndarray,
    followed: np.ndarray | bool = False,
    follow_bonus: float = 0.0,
    newness: np.ndarray | float = 0.0,
) -> np.ndarray:
    """What a user gets from an item: taste . latent + quality + creator effect (+ the follow
    bonus when the user follows the item's creator, + `newness`, see `novelty`). The one
    definition of the world's truth: the generator, the simulator and the ground-truth
    evaluations all call it. Arrays broadcast
    (users (n,) with items (n,), or users (u, 1) with items (u, c))."""
    taste = truth["user_taste"][users]
    latent = truth["item_latent"][items]
    return (
        np.einsum("...d,...d->...", taste, latent)
        + truth["item_quality"][items]
        + truth["creator_effect"][creators]
        + np.float32(follow_bonus) * followed
        + newness
    ).astype(np.float32)


def respond(
    config: SyntheticConfig, utility: np.ndarray, position: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A user's answer to items shown at 0-based `position`: examined with the position bias,
    clicked by attractiveness, then play -> complete -> like / share, each given the one before."""
    p = outcome_probabilities(utility)
    n = len(utility)
    click = rng.random(n) < examination(config)[position] * p["click"]
    play = click & (rng.random(n) < p["play"])
    complete = play & (rng.random(n) < p["complete"])
    like = complete & (rng.random(n) < p["like"])
    share = complete & (rng.random(n) < p["share"])
    return {"click": click, "play": play, "complete": complete, "like": like, "share": share}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _Clock:
    """Maps (group, ts) to one sortable int64 key; every ts of the world lies in [t0, t0 + span)."""

    def __init__(self, config: SyntheticConfig):
        self.t0 = config.start_ts - config.history_days * DAY - 1
        self.span = (config.history_days + config.days) * DAY + 3
        self.t_max = self.t0 + self.span - 1

    def key(self, group: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return group.astype(np.int64) * self.span + (np.clip(ts, self.t0, self.t_max) - self.t0)


class _Sampler:
    """Draws one row per query from a group and a time window, in proportion to fixed row weights.

    Rows are sorted by (group, ts), so a query's eligible rows are one run found by searchsorted on
    a combined key; the draw is a searchsorted on a per-group CDF offset by the group number, which
    is monotone over all rows, so one array serves every group.
    """

    def __init__(self, clock, group, ts, weight, value):
        order = np.lexsort((ts, group))
        group = group[order]
        self.clock, self.value = clock, value[order]
        self.key = clock.key(group, ts[order])
        cumulative = np.cumsum(weight[order], dtype=np.float64)
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        counts = np.diff(np.r_[starts, len(group)])
        before = np.r_[0.0, cumulative][starts]  # mass of all earlier groups
        total = np.r_[0.0, cumulative][starts + counts] - before
        local = cumulative - np.repeat(before, counts)
        self.cdf = group + local / np.repeat(total, counts)  # in (g, g + 1] for group g

    def draw(self, group, t_lo, t_hi, u) -> np.ndarray:
        """The drawn value per query, 0 where no row of the group has t_lo <= ts <= t_hi."""
        if len(self.key) == 0:
            return np.zeros(len(group), dtype=self.value.dtype)
        lo = np.searchsorted(self.key, self.clock.key(group, t_lo), "left")
        hi = np.searchsorted(self.key, self.clock.key(group, t_hi), "right")
        empty = hi <= lo
        last = len(self.key) - 1
        cdf_lo = np.maximum(self.cdf[np.clip(lo - 1, 0, last)] * (lo > 0), group)
        cdf_hi = self.cdf[np.clip(hi - 1, 0, last)]
        picked = np.searchsorted(self.cdf, cdf_lo + u * (cdf_hi - cdf_lo), "right")
        value = self.value[np.clip(picked, lo, np.maximum(hi - 1, lo)).clip(0, last)]
        value[empty] = 0
        return value


def _rng(config: SyntheticConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, *stream])


def _normal(rng, shape, scale) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def _users(config: SyntheticConfig) -> tuple[dict, dict]:
    """Users in taste clusters; age, gender and region depend on the cluster, so carry signal."""
    rng, n, k, dim = _rng(config, 1), config.n_users, config.n_clusters, config.dim
    centers = _normal(rng, (k, dim), dim**-0.5)
    cluster = rng.choice(k, n, p=rng.dirichlet(np.full(k, 3.0)))
    taste = centers[cluster] + _normal(rng, (n, dim), 0.6 * dim**-0.5)
    age = rng.normal(rng.uniform(16, 50, k)[cluster], 6.0).clip(13, 80).astype(np.int16)
    gender = np.where(rng.random(n) < rng.beta(2, 2, k)[cluster], 2, 1).astype(np.int8)
    gender[rng.random(n) < 0.02] = 3
    home = rng.integers(1, config.n_regions + 1, k)[cluster]
    region = np.where(rng.random(n) < 0.5, home, rng.integers(1, config.n_regions + 1, n))
    occupation = np.select([age < 22, age >= 65], [1, 5], rng.choice([2, 2, 2, 3, 4], n)).astype(
        np.int16
    )
    age[rng.random(n) < 0.05] = -1
    gender[rng.random(n) < 0.05] = 0
    occupation[rng.random(n) < 0.1] = 0
    users = {
        "user_id": np.arange(1, n + 1, dtype=np.int64),
        "age": age,
        "gender": gender,
        "occupation": occupation,
        "region": region.astype(np.int32),
    }
    truth = {
        "user_taste": np.vstack([np.zeros((1, dim), np.float32), taste]),
        "user_cluster": np.r_[-1, cluster].astype(np.int32),
        "cluster_centers": centers,
        # Drawn from their own stream: the other user draws stay as they were.
        "user_novelty": np.r_[False, _rng(config, 7).random(n) < config.novelty_share],
    }
    return users, truth


def _creators(config: SyntheticConfig, user_truth: dict) -> tuple[dict, dict]:
    """Creators own a user account (while users last), a style near its taste, Zipf popularity."""
    rng, n, dim = _rng(config, 2), config.creators, config.dim
    account = np.zeros(n, dtype=np.int64)
    n_accounts = min(n, config.n_users)
    account[:n_accounts] = rng.choice(config.n_users, n_accounts, replace=False) + 1
    taste = user_truth["user_taste"]
    without = rng.integers(
        0, config.n_clusters, n
    )  # creators with no account get a cluster's taste
    base = np.where((account > 0)[:, None], taste[account], user_truth["cluster_centers"][without])
    style = base + _normal(rng, (n, dim), 0.4 * dim**-0.5)
    popularity = rng.permutation(np.arange(1, n + 1, dtype=np.float64)) ** -config.creator_zipf
    popularity /= popularity.mean()
    ids = np.arange(1, n + 1, dtype=np.int64)
    creators = {"creator_id": ids, "user_id": account, "name": _strings("Artist ", ids)}
    truth = {
        "creator_style": np.vstack([np.zeros((1, dim), np.float32), style]),
        "creator_popularity": np.r_[0.0, popularity],
        "creator_effect": np.r_[0.0, rng.normal(0, 0.3, n)].astype(np.float32),
    }
    return creators, truth


def _strings(prefix: str, numbers: np.ndarray, suffix: str = "", more: np.ndarray | None = None):
    text = np.strings.add(prefix, numbers.astype(np.dtypes.StringDType()))
    if more is not None:
        text = np.strings.add(np.strings.add(text, suffix), more.astype(np.dtypes.StringDType()))
    return text.astype(object)


def _items(config: SyntheticConfig, creator_truth: dict) -> tuple[dict, dict]:
    """Tracks by creators (prolific ~ popular); latent = style + noise; ids in upload order."""
    rng, n, dim = _rng(config, 3), config.n_items, config.dim
    n_initial = max(1, round(config.initial_item_fraction * n))
    upload = np.r_[
        config.start_ts - 1 - rng.integers(0, config.history_days * DAY, n_initial),
        config.start_ts + rng.integers(0, config.days * DAY, n - n_initial),
    ]
    upload = np.sort(upload).astype(np.int64)
    creator = uploaders(config, creator_truth, n, rng)
    latent, quality, popularity = _traits(config, creator_truth, creator, rng)
    directions = _normal(rng, (config.n_categories, dim), 1.0)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    categories = _categories(config, latent, directions, rng)
    ids = np.arange(1, n + 1, dtype=np.int64)
    items = {
        "item_id": ids,
        "creator_id": creator.astype(np.int64),
        "categories": categories,
        "upload_ts": upload,
        "title": _strings("Track ", ids, " by Artist ", creator),
    }
    content = content_vectors(config, latent, _rng(config, 8)).astype(np.float32)
    items["content"] = content  # a feature: known at upload, as an encoder's output would be
    truth = {
        "item_latent": np.vstack([np.zeros((1, dim), np.float32), latent]),
        "item_quality": np.r_[0.0, quality].astype(np.float32),
        "item_popularity": np.r_[0.0, popularity],
        "category_directions": np.vstack([np.zeros((1, dim), np.float32), directions]),
        "item_content": np.vstack([np.zeros((1, dim), np.float32), content]),
    }
    return items, truth


def uploaders(config: SyntheticConfig, truth: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """The creators of n new tracks: prolific creators (~ popularity ** 0.5) upload more."""
    prolific = truth["creator_popularity"][1:] ** 0.5
    return rng.choice(config.creators, n, p=prolific / prolific.sum()) + 1


def upload_items(
    config: SyntheticConfig, truth: dict, creator: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """New tracks by `creator`, drawn as the world drew its own (the simulator's uploads):
    (categories (n, MAX_CATEGORIES), their truth rows item_latent, item_quality and
    item_popularity and item_content). The caller gives them ids and upload times."""
    latent, quality, popularity = _traits(config, truth, creator, rng)
    categories = _categories(config, latent, truth["category_directions"][1:], rng)
    return categories, {
        "item_latent": latent.astype(np.float32),
        "item_quality": quality,
        "item_popularity": popularity,
        "item_content": content_vectors(config, latent.astype(np.float32), rng),
    }


def _traits(config: SyntheticConfig, truth: dict, creator: np.ndarray, rng) -> tuple:
    """(latent, quality, popularity prior) of tracks by `creator`: latent = style + noise."""
    n, dim = len(creator), config.dim
    latent = truth["creator_style"][creator] + _normal(rng, (n, dim), 0.5 * dim**-0.5)
    quality = rng.normal(0, 0.4, n).astype(np.float32)
    # The policy's popularity prior: creator fame, a little quality, a lot of luck.
    popularity = truth["creator_popularity"][creator] * np.exp(
        1.25 * quality + rng.normal(0, 0.7, n)
    )
    return latent, quality, popularity


def _categories(config: SyntheticConfig, latent: np.ndarray, directions: np.ndarray, rng):
    """1 to 3 genres per track, the primary one the best match to its latent."""
    n = len(latent)
    scores = latent @ directions.T + _normal(rng, (n, config.n_categories), 0.05)
    top = np.argsort(-scores, axis=1)[:, :3] + 1  # primary category = best match to the latent
    n_categories = rng.choice(3, n, p=[0.5, 0.35, 0.15]) + 1
    categories = np.zeros((n, MAX_CATEGORIES), dtype=np.int16)
    categories[:, :3] = np.where(np.arange(3) < n_categories[:, None], top, 0)
    return categories


def _follows(config: SyntheticConfig, clock: _Clock, truth: dict, account: np.ndarray) -> dict:
    """user -> user follows: mostly inside the follower's cluster, towards heavy accounts."""
    rng, n = _rng(config, 4), config.n_users
    cluster = truth["user_cluster"]
    # Fitness-based preferential attachment: lognormal for everyone, plus fame for creators.
    weight = rng.lognormal(0.0, 1.0, n + 1)
    np.add.at(weight, account, 20.0 * truth["creator_popularity"][1:])
    m = config.follows_per_user
    degree = rng.negative_binomial(2, 2 / (2 + m), n) if m > 0 else np.zeros(n, np.int64)
    follower = np.repeat(np.arange(1, n + 1, dtype=np.int64), degree)
    shares = np.bincount(cluster[1:], minlength=config.n_clusters) / n
    target = np.where(
        rng.random(len(follower)) < config.follow_homophily,
        cluster[follower],
        rng.choice(config.n_clusters, len(follower), p=shares),
    )
    users = np.arange(1, n + 1, dtype=np.int64)
    accounts = _Sampler(clock, cluster[1:], np.full(n, clock.t0), weight[1:], users)
    t = np.full(len(follower), clock.t_max)
    followee = accounts.draw(target, np.full_like(t, clock.t0), t, rng.random(len(follower)))
    ts = np.where(
        rng.random(len(follower)) < 0.7,
        config.start_ts - 1 - rng.integers(0, config.history_days * DAY, len(follower)),
        config.start_ts + rng.integers(0, config.days * DAY, len(follower)),
    )
    keep = (followee > 0) & (followee != follower)
    key = follower[keep] * (n + 1) + followee[keep]
    key, first = np.unique(key, return_index=True)
    ts = ts[keep][first]
    order = np.lexsort((key, ts))  # log order: by time
    return {
        "follower_id": (key // (n + 1))[order],
        "followee_id": (key % (n + 1))[order],
        "ts": ts[order].astype(np.int64),
    }


class _Policy:
    """The logging policy's candidate sources; every draw only sees items uploaded by its time."""

    def __init__(self, config, clock, items, truth, follows, creator_of_account):
        ids, upload, n = items["item_id"], items["upload_ts"], len(items["item_id"])
        popularity = truth["item_popularity"][1:]
        everything = np.zeros(n, dtype=np.int64)
        self.clock = clock
        self.popular = _Sampler(
            clock, everything, upload, popularity**config.popularity_exponent, ids
        )
        self.uniform = _Sampler(clock, everything, upload, np.ones(n), ids)
        row, column = np.nonzero(items["categories"])
        category = items["categories"][row, column]
        self.by_category = _Sampler(clock, category, upload[row], popularity[row] ** 0.5, ids[row])
        recency = np.exp((upload - clock.t_max) / _SOCIAL_RECENCY)
        self.by_creator = _Sampler(clock, items["creator_id"], upload, recency, ids)
        creator = creator_of_account[follows["followee_id"]]
        followed = creator > 0
        self.followed_creator = _Sampler(
            clock,
            follows["follower_id"][followed],
            follows["ts"][followed],
            np.ones(int(followed.sum())),
            creator[followed],
        )

    def fill(self, config, user, ts, category_cdf, first_user, rng):
        """One item per slot and the source it came from (see SOURCES)."""
        n, t0 = len(user), np.full(len(user), self.clock.t0)
        shares = np.array(
            [config.popularity_share, config.taste_share, config.social_share, config.fresh_share]
        )
        cumulative = np.cumsum(shares / shares.sum())
        cumulative[-1] = 1.0
        source = np.searchsorted(cumulative, rng.random(n), "right").astype(np.int8)
        item = np.zeros(n, dtype=np.int64)
        zero = np.zeros(n, dtype=np.int64)
        m = source == 0
        item[m] = self.popular.draw(zero[m], t0[m], ts[m], rng.random(m.sum()))
        m = source == 1
        category = _pick_rows(category_cdf, user[m] - first_user, rng.random(m.sum())) + 1
        item[m] = self.by_category.draw(category, t0[m], ts[m], rng.random(m.sum()))
        m = source == 2
        creator = self.followed_creator.draw(user[m], t0[m], ts[m], rng.random(m.sum()))
        item[m] = self.by_creator.draw(creator, t0[m], ts[m], rng.random(m.sum()))
        m = source == 3
        item[m] = self.uniform.draw(zero[m], ts[m] - _FRESH_WINDOW, ts[m], rng.random(m.sum()))
        m = item == 0  # the source had nothing eligible: fall back to popularity
        item[m] = self.popular.draw(zero[m], t0[m], ts[m], rng.random(m.sum()))
        source[m] = 0
        for _ in range(8):  # a page shows an item once: redraw repeats uniformly
            m = _repeats(item.reshape(-1, config.page_size)).ravel()
            if not m.any():
                break
            item[m] = self.uniform.draw(zero[m], t0[m], ts[m], rng.random(m.sum()))
            source[m] = 4
        return item, source


def _pick_rows(cdf: np.ndarray, row: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Column drawn from row `row` of a row-wise CDF (last column 1), for each query."""
    n_rows, width = cdf.shape
    offset = (cdf + np.arange(n_rows)[:, None]).ravel()  # monotone across rows
    return np.searchsorted(offset, row + u, "right") - row * width


def _repeats(grid: np.ndarray) -> np.ndarray:
    """Mask of cells equal to an earlier cell of the same row."""
    order = np.argsort(grid, axis=1, kind="stable")
    ordered = np.take_along_axis(grid, order, axis=1)
    repeat = np.zeros(grid.shape, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    return repeat


class _FollowIndex:
    """Answers "did user u follow account a by time t" for many (u, a, t) at once."""

    def __init__(self, follows: dict, n_users: int):
        self.base = n_users + 1
        key = follows["follower_id"] * self.base + follows["followee_id"]
        order = np.argsort(key)
        self.key, self.ts = key[order], follows["ts"][order]

    def followed(self, user, account, ts) -> np.ndarray:
        lo, hi = np.searchsorted(self.key, [user.min() * self.base, (user.max() + 1) * self.base])
        if hi == lo:
            return np.zeros(len(user), dtype=bool)
        key, follow_ts = self.key[lo:hi], self.ts[lo:hi]  # this chunk's followers only
        query = user * self.base + account
        at = np.minimum(np.searchsorted(key, query), hi - lo - 1)
        return (key[at] == query) & (account > 0) & (follow_ts[at] <= ts)


def _chunk(config, policy, follow_index, items, truth, account, users, pages, rng) -> dict:
    """The impressions of one chunk of users, with labels and truth, ordered by user, time, slot."""
    size, dim = config.page_size, config.dim
    page_user = np.repeat(users, pages)
    page_ts = config.start_ts + rng.integers(0, config.days * DAY, len(page_user))
    page_ts = page_ts[np.lexsort((page_ts, page_user))]
    user, ts = np.repeat(page_user, size), np.repeat(page_ts, size)
    # The policy sees taste through noise; it picks a genre per taste slot by softmax affinity.
    seen = truth["user_taste"][users] + _normal(
        rng, (len(users), dim), config.policy_noise / dim**0.5
    )
    affinity = 4.0 * seen @ truth["category_directions"][1:].T
    cdf = np.cumsum(np.exp(affinity - affinity.max(axis=1, keepdims=True)), axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    item, source = policy.fill(config, user, ts, cdf, users[0], rng)
    creator = items["creator_id"][item - 1]
    followed = follow_index.followed(user, account[creator], ts)
    age = ts - items["upload_ts"][item - 1]
    newness = novelty(config, age, truth["user_novelty"][user], followed)
    utility = true_utility(truth, user, item, creator, followed, config.follow_bonus, newness)
    # The policy orders each page by its noisy view of utility: position and relevance confound.
    score = utility + _normal(rng, len(utility), config.policy_noise)
    order = (
        np.argsort(-score.reshape(-1, size), axis=1) + (np.arange(len(page_user)) * size)[:, None]
    )
    order = order.ravel()
    item, source, followed, utility = item[order], source[order], followed[order], utility[order]
    position = np.tile(np.arange(size, dtype=np.int16), len(page_user))
    return {
        "user_id": user,
        "item_id": item,
        "ts": ts,
        "position": position,
        **respond(config, utility, position, rng),
        "impression_utility": utility,
        "impression_source": source,
        "impression_followed": followed,
    }


def _exposures(config, policy, follow_index, items, truth, account, progress) -> dict:
    """All impressions, user chunk by user chunk, written into preallocated columns."""
    rng, n = _rng(config, 5), config.n_users
    mean_pages = config.impressions_per_user / config.page_size
    activity = rng.lognormal(0.0, 1.0, n) * mean_pages / np.exp(0.5)  # heavy-tailed, mean kept
    pages = np.clip(np.rint(activity), 1, max(1, 50 * mean_pages)).astype(np.int64)
    total = int(pages.sum()) * config.page_size
    dtypes: dict[str, type] = {"user_id": np.int64, "item_id": np.int64, "ts": np.int64}
    dtypes["position"] = np.int16
    dtypes |= dict.fromkeys(["click", "play", "complete", "like", "share"], bool)
    dtypes |= {"impression_utility": np.float32, "impression_source": np.int8}
    dtypes |= {"impression_followed": bool}
    columns = {name: np.empty(total, dtype=dtype) for name, dtype in dtypes.items()}
    chunk = max(1, int(1_000_000 // max(1.0, config.impressions_per_user)))
    offset = 0
    with progress_bar("synthetic impressions", n, "users", enabled=progress) as bar:
        for index, first in enumerate(range(0, n, chunk)):
            users = np.arange(first + 1, min(first + chunk, n) + 1, dtype=np.int64)
            rows = _chunk(
                config,
                policy,
                follow_index,
                items,
                truth,
                account,
                users,
                pages[first : first + chunk],
                _rng(config, 6, index),
            )
            for name, values in rows.items():
                columns[name][offset : offset + len(values)] = values
            offset += len(rows["user_id"])
            bar.update(len(users))
    return columns


def generate(config: SyntheticConfig | None = None, progress: bool = True) -> Dataset:
    """Builds the world for config (defaults when None); identical tables for identical configs.

    Impressions come in pages ordered by user, then time, then position; a catalog smaller than a
    page cannot avoid repeats within it. Every user gets at least one page.
    """
    config = config or SyntheticConfig()
    config.check()
    clock = _Clock(config)
    users, truth = _users(config)
    creators, creator_truth = _creators(config, truth)
    truth |= creator_truth
    items, item_truth = _items(config, truth)
    truth |= item_truth
    account = np.r_[0, creators["user_id"]]  # creator id -> account user id
    creator_of_account = np.zeros(config.n_users + 1, dtype=np.int64)
    creator_of_account[creators["user_id"]] = creators["creator_id"]
    creator_of_account[0] = 0
    follows = _follows(config, clock, truth, creators["user_id"])
    policy = _Policy(config, clock, items, truth, follows, creator_of_account)
    follow_index = _FollowIndex(follows, config.n_users)
    columns = _exposures(config, policy, follow_index, items, truth, account, progress)
    for name in ("impression_utility", "impression_source", "impression_followed"):
        truth[name] = columns.pop(name)
    truth["position_examination"] = examination(config)
    impressions = columns
    played = impressions["play"]
    interactions = {
        name: impressions[name][played]
        for name in ("user_id", "item_id", "ts", "play", "complete", "like", "share")
    }
    interactions["rating"] = np.full(int(played.sum()), np.nan, dtype=np.float32)
    names = list(GENRES[: config.n_categories])
    names += [f"genre {i}" for i in range(len(names) + 1, config.n_categories + 1)]
    meta = {
        "name": "synthetic",
        "categories": ["none", *names],
        "occupations": list(OCCUPATIONS),
        "tasks": TASKS,
        "description": (
            "Seeded synthetic UGC music platform: taste clusters, creators uploading over time, "
            "a homophilous follow graph, impressions logged by a popularity- and position-biased "
            "policy, click -> play -> complete -> like/share from a known utility (see truth)."
        ),
        "sources": list(SOURCES),
        "outcome_logits": {event: list(v) for event, v in OUTCOME_LOGITS.items()},
        "config": asdict(config) | {"n_creators": config.creators},  # rebuilds this world
    }
    return Dataset(users, items, creators, follows, interactions, impressions, meta, truth)
