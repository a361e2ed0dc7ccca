"""The creators' side of the synthetic world after its log: who uploads how much, who stops, who
joins, as a response to the plays their recent uploads received (the curve and its parameters are
`SyntheticConfig`'s, cascade/data/synthetic.py). The simulator keeps one `Supply` per world.
"""

from __future__ import annotations

import numpy as np

from cascade.data.synthetic import DAY, SyntheticConfig


def upload_multiplier(config: SyntheticConfig, exposure: np.ndarray) -> np.ndarray:
    """m(x): a creator's upload rate over their base rate, at exposure x (1 as the log served)."""
    if not config.creator_response:
        return np.ones_like(exposure, dtype=np.float64)
    half, floor = config.response_half, config.upload_floor
    return floor + (1.0 - floor) * (1.0 + half) * exposure / (half + exposure)


def stop_probability(config: SyntheticConfig, exposure: np.ndarray) -> np.ndarray:
    """q(x): the chance a creator stops uploading on a day, at exposure x (q(1) when they do not
    react to plays)."""
    x = exposure if config.creator_response else np.ones_like(exposure, dtype=np.float64)
    return config.stop_starved / (1.0 + x / config.stop_half)


def reference_plays(
    items: dict[str, np.ndarray], interactions: dict[str, np.ndarray], end_ts: int
) -> float:
    """Plays an upload got in its first 24 h in the log, on average over the log's uploads with
    a full day before the log's end: the exposure the logging policy gave (x = 1)."""
    upload = np.zeros(int(items["item_id"].max()) + 1, dtype=np.int64)
    upload[items["item_id"]] = items["upload_ts"]
    first_ts = int(interactions["ts"].min()) if len(interactions["ts"]) else end_ts
    eligible = (items["upload_ts"] >= first_ts) & (items["upload_ts"] <= end_ts - DAY)
    if not eligible.any():
        return 1.0
    age = interactions["ts"] - upload[interactions["item_id"]]
    counted = interactions["play"].astype(bool) & (age >= 0) & (age < DAY)
    counted &= np.isin(interactions["item_id"], items["item_id"][eligible])
    return max(float(counted.sum()) / int(eligible.sum()), 1e-6)


class Supply:
    """One world's creators after the log. Each has a base rate (their share of the world's
    uploads a day, prolific ~ popularity ** 0.5 as in the log) scaled by m(x), and stops with
    q(x) a day; x is the full-audience plays per upload in its first 24 h over their uploads of
    the last `response_window_days`, divided by the log's (a creator with none keeps their last
    x; all start at 1). `audience_share`: simulated users / the world's users, so plays scale up
    to what the whole audience would have given."""

    def __init__(
        self, config: SyntheticConfig, truth: dict, reference: float, audience_share: float
    ):
        self.config, self.reference, self.scale = config, reference, 1.0 / audience_share
        prolific = truth["creator_popularity"][1:] ** 0.5
        self.rate_per_prolific = config.uploads_per_day / prolific.sum()
        n = len(prolific)
        self.base_rate = np.r_[0.0, prolific * self.rate_per_prolific]  # (n_creators + 1,)
        self.active = np.r_[False, np.ones(n, dtype=bool)]
        self.exposure = np.ones(n + 1)
        self.joined_per_day = config.creator_join_rate * n
        # The simulation's uploads: id, creator, time, and plays in their first 24 h.
        self.item_ids = np.zeros(0, dtype=np.int64)
        self.creators = np.zeros(0, dtype=np.int64)
        self.upload_ts = np.zeros(0, dtype=np.int64)
        self.plays_24h = np.zeros(0)
        self.first_item = -1  # world id of the first upload (its row 0)

    @property
    def n_creators(self) -> int:
        return len(self.active) - 1

    def start_day(self, truth: dict, now_s: int, rng: np.random.Generator) -> dict:
        """The day's turnover at now_s: exposures updated, stops drawn, new creators joined
        (their truth rows appended to `truth`); returns the counts and the creators of the
        day's uploads (one entry per upload)."""
        self._update_exposure(now_s)
        stopping = self.active & (
            rng.random(len(self.active)) < stop_probability(self.config, self.exposure)
        )
        self.active &= ~stopping
        joined = int(rng.poisson(self.joined_per_day))
        if joined:
            self._join(truth, joined, rng)
        expected = self.base_rate * upload_multiplier(self.config, self.exposure) * self.active
        counts = rng.poisson(expected)
        return {
            "stopped": int(stopping.sum()),
            "joined": joined,
            "active_creators": int(self.active.sum()),
            "creators": np.repeat(np.arange(len(counts)), counts),
        }

    def _join(self, truth: dict, n: int, rng: np.random.Generator) -> None:
        """n creators join, drawn as the world's first ones were: style near a taste cluster's
        centre, fame from the same Zipf ranks, a creator effect; no account, so no followers."""
        dim = self.config.dim
        centers = truth["cluster_centers"]
        style = centers[rng.integers(0, len(centers), n)] + rng.normal(
            0, 0.4 * dim**-0.5, (n, dim)
        ).astype(np.float32)
        fame = truth["creator_popularity"][1:]
        popularity = rng.choice(fame, n)
        truth["creator_style"] = np.vstack([truth["creator_style"], style.astype(np.float32)])
        truth["creator_popularity"] = np.r_[truth["creator_popularity"], popularity]
        effect = rng.normal(0, 0.3, n).astype(np.float32)
        truth["creator_effect"] = np.r_[truth["creator_effect"], effect].astype(np.float32)
        self.base_rate = np.r_[self.base_rate, popularity**0.5 * self.rate_per_prolific]
        self.active = np.r_[self.active, np.ones(n, dtype=bool)]
        self.exposure = np.r_[self.exposure, np.ones(n)]

    def uploaded(self, item_ids: np.ndarray, creators: np.ndarray, upload_ts: np.ndarray) -> None:
        if self.first_item < 0 and len(item_ids):
            self.first_item = int(item_ids[0])
        self.item_ids = np.r_[self.item_ids, item_ids]
        self.creators = np.r_[self.creators, creators]
        self.upload_ts = np.r_[self.upload_ts, upload_ts]
        self.plays_24h = np.r_[self.plays_24h, np.zeros(len(item_ids))]

    def played(self, items: np.ndarray, now_s: int) -> None:
        """Plays heard at now_s: those on a simulated upload in its first 24 h count."""
        if self.first_item < 0 or not len(items):
            return
        row = items[items >= self.first_item] - self.first_item
        row = row[row < len(self.item_ids)]
        row = row[now_s - self.upload_ts[row] < DAY]
        np.add.at(self.plays_24h, row, 1.0)

    def _update_exposure(self, now_s: int) -> None:
        window = self.config.response_window_days * DAY
        done = (self.upload_ts <= now_s - DAY) & (self.upload_ts > now_s - DAY - window)
        if not done.any():
            return
        n = len(self.active)
        uploads = np.bincount(self.creators[done], minlength=n)
        plays = np.bincount(self.creators[done], weights=self.plays_24h[done], minlength=n)
        seen = uploads > 0
        self.exposure[seen] = plays[seen] * self.scale / (uploads[seen] * self.reference)
