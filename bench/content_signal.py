"""How much of the world's truth the content vectors give away: a model that ranks by content
alone (a user's vector = the mean content vector of the tracks they played in the log) against
random and the oracle, on true expected engagement of a page of 10 at the log's end; the same
model on the noiseless latents shows what the noise costs. Writes
results/loop/two_sided/content_signal.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cascade.data import load_dataset
from research.simulate import World


def page_engagement(world: World, user: int, scores: np.ndarray, played: set[int]) -> float:
    """Expected engagement per impression of the top 10 by `scores` (played tracks left out)."""
    scores = scores.astype(np.float64).copy()
    scores[0] = -np.inf
    scores[list(played)] = -np.inf
    top = np.argpartition(-scores, 9)[:10]
    top = top[np.argsort(-scores[top])]
    return float(world.expected_engagement(world.utility(user, top), np.arange(10)).mean())


def measure(data_dir: Path, users: int, seed: int) -> dict:
    dataset = load_dataset("synthetic", data_dir)
    world = World(dataset)
    rng = np.random.default_rng(seed)
    log = dataset.interactions
    played: dict[int, set[int]] = {}
    for user, item in zip(log["user_id"].tolist(), log["item_id"].tolist(), strict=True):
        played.setdefault(user, set()).add(item)
    chosen = rng.choice(sorted(played), min(users, len(played)), replace=False)
    items = np.arange(world.n_items)
    content, latent = world.truth["item_content"], world.truth["item_latent"]
    results: dict[str, list[float]] = {"random": [], "content": [], "latent": [], "oracle": []}
    for user in chosen.tolist():
        seen = played[user]
        history = np.fromiter(seen, dtype=np.int64)
        scores = {
            "random": rng.random(world.n_items),
            "content": content @ content[history].mean(axis=0),
            "latent": latent @ latent[history].mean(axis=0),
            "oracle": world.utility(user, items),
        }
        for name, score in scores.items():
            results[name].append(page_engagement(world, user, score, seen))
    mean = {name: float(np.mean(v)) for name, v in results.items()}
    gap = mean["oracle"] - mean["random"]
    config = world.config
    return {
        "users": len(chosen),
        "content_noise": config.content_noise,
        "world_hash": config.world_hash(),
        "expected_engagement": {k: round(v, 4) for k, v in mean.items()},
        "oracle_gap_closed": {
            name: round((mean[name] - mean["random"]) / gap, 3) for name in ("content", "latent")
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/loop/two_sided"))
    args = parser.parse_args(argv)
    report = measure(args.data_dir, args.users, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "content_signal.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
