"""Writes the tiny-music example (string ids, four CSV files); seeded, so the files never change.

    python examples/tiny-music/make_example.py   # rewrites the CSV files beside this script

Users have a favourite genre and mostly play it; some artists are users too (a UGC platform);
users follow the artists they like. Small enough to read, big enough to train every stage.
"""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
GENRES = ("rock", "jazz", "lo-fi", "hip-hop", "folk")
NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yvonne", "zoe",
    "amir", "bea", "chen", "dara", "eli", "fatima", "gus", "hana", "ines", "jon", "kai", "lena",
    "milo", "noor", "oscar", "pia", "quinn", "rosa", "sam",
)  # fmt: skip
ARTISTS = (
    "dj-nova", "the-owls", "mira-keys", "lofi-lou", "big-sur", "cold-cuts", "ana-folk",
    "jazz-cat", "grit", "paper-moon", "kid-echo", "slow-river",
)  # fmt: skip
START = datetime(2026, 1, 5, tzinfo=UTC)


def main() -> None:
    rng = random.Random(16)
    artist_genre = {a: GENRES[i % len(GENRES)] for i, a in enumerate(ARTISTS)}
    tracks = []
    for i in range(90):
        artist = ARTISTS[i % len(ARTISTS)]
        genre = artist_genre[artist]
        extra = rng.choice([g for g in GENRES if g != genre])
        genres = genre if rng.random() < 0.6 else f"{genre}|{extra}"
        released = START - timedelta(days=rng.randint(0, 60))
        tracks.append(
            (
                f"trk-{artist}-{i:03d}",
                f"{artist.replace('-', ' ').title()} #{i}",
                artist,
                genres,
                released.date().isoformat(),
            )
        )
    users = [
        (n, rng.randint(16, 60), rng.choice("MFO"), rng.choice(["DE", "FR", "US", "JP"]))
        for n in NAMES
    ] + [(a, rng.randint(20, 40), rng.choice("MF"), "US") for a in ARTISTS[:6]]
    taste = {u[0]: rng.choice(GENRES) for u in users}
    events, follows = [], {}
    for user, *_ in users:
        liked = [t for t in tracks if taste[user] in t[3]]
        for _ in range(rng.randint(25, 45)):
            track = rng.choice(liked if rng.random() < 0.75 else tracks)
            when = START + timedelta(minutes=rng.randint(0, 30 * 24 * 60))
            action = rng.choices(["play", "finish", "like", "share", "skip"], [8, 4, 2, 1, 2])[0]
            events.append((user, track[0], action, when.strftime("%Y-%m-%dT%H:%M:%S")))
            if action == "like" and track[2] in ARTISTS[:6] and track[2] != user:
                since = min(follows.get((user, track[2]), when), when)
                follows[(user, track[2])] = since
    events.sort(key=lambda e: e[3])
    _write("users.csv", ("user", "age", "gender", "country"), users)
    _write("tracks.csv", ("track", "title", "artist", "genres", "released"), tracks)
    _write("events.csv", ("user", "track", "action", "time"), events)
    follow_rows = sorted((a, b, t.date().isoformat()) for (a, b), t in follows.items())
    _write("follows.csv", ("follower", "followee", "since"), follow_rows)


def _write(name: str, header: tuple[str, ...], rows) -> None:
    with (HERE / name).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


if __name__ == "__main__":
    main()
