"""Both sides of one simulated world per day: what its users got (consumer), what became of new
uploads (new content) and what its creators kept doing (supply). Means carry 95% intervals.
"""

from __future__ import annotations

import numpy as np

from cascade.data.synthetic import DAY
from research.simulate import World, _gini, _mean_interval


def day_metrics(
    rows: dict[str, np.ndarray], world: World, start_s: int, days: int, target: int
) -> list[dict]:
    """One entry per simulated day of one arm's world: `rows` its impressions (research.simulate),
    `world` after the run, `start_s` the first simulated second, `target` K."""
    supply, out = world.supply, []
    end_s = start_s + days * DAY
    upload_day = (supply.upload_ts - start_s) // DAY
    # Impressions and the first play of each simulated upload within 24 h of it.
    row = rows["item"] - supply.first_item if supply.first_item >= 0 else rows["item"] * 0 - 1
    on_upload = (row >= 0) & (row < len(supply.item_ids))
    early = on_upload & (rows["age_s"] < DAY)
    impressions_24h = np.bincount(row[early], minlength=len(supply.item_ids))
    first_play = np.full(len(supply.item_ids), np.inf)
    played = on_upload & rows["played"].astype(bool)
    np.minimum.at(first_play, row[played], rows["age_s"][played].astype(np.float64))
    for day in range(days):
        m = rows["day"] == day
        entry: dict = {"day": day, "impressions": int(m.sum())}
        if m.any():
            for name, values in (
                ("expected", rows["expected"][m]),
                ("realised", rows["realised"][m]),
                ("fresh_share", (rows["age_s"][m] < DAY).astype(np.float64)),
            ):
                mean, half = _mean_interval(values, rows["session"][m])
                key = name if name == "fresh_share" else f"{name}_engagement"
                entry[key], entry[f"{name}_ci95"] = mean, half
            entry["coverage"] = len(np.unique(rows["item"][m])) / _catalogue(world, start_s, day)
            entry["creator_gini"] = _gini(np.bincount(rows["creator"][m]))
        today = upload_day == day
        complete = today & (supply.upload_ts + DAY <= end_s)
        reached = impressions_24h[complete] >= target
        entry["uploads"] = int(today.sum())
        entry["uploads_excluded"] = int((today & ~complete).sum())  # < 24 h of run left
        entry["reaching_target_24h"] = _share(reached)
        entry["reaching_target_24h_ci95"] = _binomial_half(reached)
        waits = first_play[today]
        entry["median_first_play_h"] = (
            float(np.median(waits[np.isfinite(waits)]) / 3600) if np.isfinite(waits).any() else None
        )
        entry["never_played"] = int((~np.isfinite(waits)).sum())
        entry |= {k: world.days[day].get(k) for k in ("active_creators", "joined", "stopped")}
        out.append(entry)
    return out


def _catalogue(world: World, start_s: int, day: int) -> int:
    """Items in the world by the end of `day` (the simulated uploads join through the day)."""
    return int((world.upload_ts[1:] < start_s + (day + 1) * DAY).sum())


def _share(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if len(flags) else None


def _binomial_half(flags: np.ndarray) -> float | None:
    if len(flags) < 2:
        return None
    p = flags.mean()
    return float(1.96 * np.sqrt(p * (1 - p) / len(flags)))


def gap_closed(by_arm: dict[str, dict]) -> None:
    """Adds each arm's fraction of the oracle-random gap on expected engagement (one day),
    with its 95% half-width (delta method, independent arms)."""
    if not {"random", "oracle"} <= set(by_arm):
        return
    r, dr = by_arm["random"]["expected_engagement"], by_arm["random"]["expected_ci95"]
    o, do = by_arm["oracle"]["expected_engagement"], by_arm["oracle"]["expected_ci95"]
    for entry in by_arm.values():
        c, dc = entry["expected_engagement"], entry["expected_ci95"]
        gap = (c - r) / (o - r)
        entry["oracle_gap_closed"] = gap
        entry["oracle_gap_ci95"] = (dc**2 + (gap * do) ** 2 + ((1 - gap) * dr) ** 2) ** 0.5 / abs(
            o - r
        )


AGE_BUCKETS_H = (1, 6, 12, 24)  # upload-age buckets' upper ends, hours
HOUR = 3600


def cold_start(
    rows: dict[str, np.ndarray], world: World, start_s: int, days: int, target: int
) -> dict:
    """What new uploads got in their first day, over the uploads with a full 24 h left in the
    run: per upload-age bucket, the mean impressions delivered by that age against the target K
    and the share that reached K by then; and how soon followers saw them: of the simulated
    users following an upload's creator when it was uploaded and with a session in its first
    hour, the share shown it in that hour."""
    supply = world.supply
    end_s = start_s + days * DAY
    eligible = supply.upload_ts + DAY <= end_s  # a full 24 h left in the run
    uploads = np.asarray(supply.item_ids[eligible] if len(supply.item_ids) else [], np.int64)
    on = np.isin(rows["item"], uploads)
    index = {item: i for i, item in enumerate(uploads.tolist())}
    row_upload = np.array([index[i] for i in rows["item"][on].tolist()], dtype=np.int64)
    ages = rows["age_s"][on]
    buckets = []
    for hours in AGE_BUCKETS_H:
        by_age = np.bincount(row_upload[ages < hours * HOUR], minlength=len(uploads))
        buckets.append(
            {
                "age_h": hours,
                "mean_impressions": float(by_age.mean()) if len(uploads) else None,
                "target": target,
                "reaching_target": _share(by_age >= target),
            }
        )
    return {"uploads": len(uploads), "by_age": buckets} | _followers_first_hour(rows, world)


def _followers_first_hour(rows: dict[str, np.ndarray], world: World) -> dict:
    """(follower, upload) pairs among the simulated users: with a session in the upload's first
    hour, and of those the share shown the upload in it."""
    simulated = np.unique(rows["user"])
    times = world.upload_ts[rows["item"]] + rows["age_s"]  # each impression's time
    order = np.argsort(times, kind="stable")
    users, times_sorted = rows["user"][order], times[order]
    early = (rows["age_s"] >= 0) & (rows["age_s"] < HOUR)
    shown = set(zip(rows["user"][early].tolist(), rows["item"][early].tolist(), strict=True))
    pairs = active = seen = 0
    for item, followers in world.upload_followers.items():
        followers = followers[np.isin(followers, simulated)]
        if not len(followers):
            continue
        pairs += len(followers)
        upload = world.upload_ts[item]
        lo, hi = np.searchsorted(times_sorted, [upload, upload + HOUR], side="left")
        present = np.intersect1d(followers, users[lo:hi])
        active += len(present)
        seen += sum((user, item) in shown for user in present.tolist())
    return {
        "follower_pairs": pairs,
        "followers_with_session_1h": active,
        "followers_shown_1h": seen,
        "followers_shown_1h_share": seen / active if active else None,
    }
