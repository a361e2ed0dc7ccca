"""Content cold start: how well each stage ranks uploads it has never seen played.

Synthetic world: every item uploaded at or after a time cut (80% of the plays before it) is held
out; a bundle (two-tower recall, ranker, distilled pre-ranker) is trained on the world before the
cut, then the held-out items arrive as uploads through the serving path (`store.add_items`, the
two-tower channel's item tower and index add, pre-rank's cold vectors, the ranker's online rows).
For a sample of users, each stage orders the uploads alone; the page is its top 10, scored on the
world's truth (expected engagement per impression, as `bench/content_signal.py`). Variants:
`today` (no content column, two-tower without id dropout), `creator_categories` (no content
column: what an imported dataset without content gets; pre-rank and rank are today's models, as
they do not change without content), `content` (the world's content vectors).
Ratios to `today` are means over users with a 95% paired bootstrap interval.

MovieLens-100K has no content and no truth: items first played at or after the cut are held out
and the two-tower (`today` vs `creator_categories`) ranks them for each user who played some;
recall@10 over those plays (the ranker and pre-ranker treat a dataset without content as before).

    python -m bench.content_cold_start --data-dir data   (make bench-content-cold-start)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cascade.artifacts import Bundle, BundleWriter
from cascade.data import load_dataset
from cascade.data.schema import Dataset, save
from cascade.data.split import split_dataset, time_cut
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from services.prerank.distill import DistillConfig
from services.prerank.scorer import PrerankScorer
from services.rank.export import write_component
from services.rank.model import ModelConfig
from services.rank.scorer import RankScorer
from services.rank.train import TrainConfig
from services.recall.channels.two_tower import TwoTowerChannel
from services.recall.evaluate_two_tower import REPORTED, evaluate_model
from services.recall.train import build_recall
from services.recall.two_tower import Batcher, TwoTowerConfig, train_two_tower, user_vectors
from training.prerank_train import distill_into_bundle
from training.rank_train import train

VARIANTS = {  # name -> (items keep their content column, two-tower id dropout)
    "today": (False, 0.0),
    "content": (True, TwoTowerConfig.id_dropout),
    "creator_categories": (False, TwoTowerConfig.id_dropout),  # forced on without content
}
STAGES = ("recall", "prerank", "rank")
CONTENT_WEIGHTS = (0.0, 1.0)  # pre-rank's cold vectors: metadata alone, content alone
PAGE = 10


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Training sizes for minutes on two busy cores (the bench compares variants, not records)."""

    two_tower_epochs: int = 4
    rank_epochs: int = 1
    rank_rows: int = 50_000  # training impressions (seeded subsample)
    rank_item_id_dropout: float = 0.1  # every variant: the ranker learns the unknown id row
    distill_epochs: int = 3
    distill_users: int = 500
    distill_candidates: int = 300  # recall's list per training request
    movielens_two_tower_epochs: int = 5


def holdout(dataset: Dataset, train_fraction: float = 0.8) -> tuple[Dataset, np.ndarray, int]:
    """(the world before the cut, held-out item ids, cut): items uploaded at or after the cut and
    every row at or after it are removed (ids are in upload order, so the rest stay dense)."""
    cut = time_cut(dataset.interactions, train_fraction)
    items = dataset.items
    cold = items["item_id"][items["upload_ts"] >= cut]
    keep_items = items["upload_ts"] < cut

    def before(table: dict) -> dict:
        mask = (table["ts"] < cut) & ~np.isin(table["item_id"], cold)
        return {k: v[mask] for k, v in table.items()}

    earlier = dataclasses.replace(
        dataset,
        items={k: v[keep_items] for k, v in items.items()},
        interactions=before(dict(dataset.interactions)),
        impressions=before(dict(dataset.impressions)),
        truth={},
    )
    return earlier, np.sort(cold), cut


def without_content(dataset: Dataset) -> Dataset:
    return dataclasses.replace(
        dataset, items={k: v for k, v in dataset.items.items() if k != "content"}
    )


def build_bundle(
    dataset: Dataset, root: Path, id_dropout: float, sizes: Sizes, recall_only: bool = False
) -> Bundle:
    """Recall (tables, MF, two-tower), rank and pre-rank trained on `dataset` into one bundle
    (`recall_only`: recall's component alone)."""
    torch.set_num_threads(1)
    data_dir, artifacts = root / "data", root / "artifacts"
    save(dataset, data_dir / dataset.name)
    train_log = split_dataset(dataset).train_interactions
    writer = BundleWriter(artifacts, "v1")
    config = TwoTowerConfig(
        epochs=sizes.two_tower_epochs, id_dropout=id_dropout, id_dropout_without_content=id_dropout
    )
    build_recall(dataset, train_log, writer, two_tower_config=config, progress=False)
    writer.commit()
    if recall_only:
        return Bundle(writer.folder)
    train_config = TrainConfig(
        seed=0,
        max_epochs=sizes.rank_epochs,
        max_train_rows=sizes.rank_rows,
        max_test_rows=sizes.rank_rows // 2,
        item_id_dropout=sizes.rank_item_id_dropout,
    )
    model_config = ModelConfig(content=True)  # the variant measured: the ranker reads content
    model, prepared, info = train(dataset, train_config, model_config)
    writer = BundleWriter(artifacts, "v1")
    write_component(
        writer,
        model,
        prepared.spec,
        dataset.name,
        train_config,
        model_config,
        info,
        prepared.test[0],
    )
    writer.commit()
    distill = DistillConfig(
        epochs=sizes.distill_epochs,
        max_users=sizes.distill_users,
        candidates_per_request=sizes.distill_candidates,
        sampled_per_request=sizes.distill_candidates // 3,
    )
    distill_into_bundle(dataset.name, data_dir, artifacts, "v1", distill)
    return Bundle.open(artifacts, "v1")


def upload(store: InMemoryFeatureStore, world: Dataset, cold: np.ndarray) -> None:
    """The held-out items reach the store as AddItems does (live_catalog.apply_items)."""
    rows = cold - 1  # item ids are 1..n in row order
    items = world.items
    content = items["content"][rows] if "content" in items else None
    store.add_items(
        cold,
        items["creator_id"][rows],
        items["categories"][rows],
        items["upload_ts"][rows],
        content,
    )


def stage_scores(
    bundle: Bundle,
    earlier: Dataset,
    world: Dataset,
    cold: np.ndarray,
    users: np.ndarray,
    stages: tuple[str, ...] = STAGES,
) -> dict[str, np.ndarray]:
    """stage -> (n_users, n_cold) scores of the uploads, each through its serving code."""
    spec = build_spec(earlier)
    store = InMemoryFeatureStore.from_split(earlier, spec, split_dataset(earlier))
    upload(store, world, cold)
    recall = TwoTowerChannel.from_bundle(bundle, store)
    recall.add_uploads()
    upload_ids, upload_vectors = recall.uploads
    order = np.searchsorted(upload_ids, cold)
    full = "rank" in stages
    prerank = PrerankScorer.from_bundle(bundle, store) if full else None
    rank = RankScorer.from_bundle(bundle, store) if full else None
    out = {stage: np.zeros((len(users), len(cold)), np.float32) for stage in stages}
    for row, user in enumerate(users.tolist()):
        history = store.history(np.array([user]))[0]
        recent = history[history > 0]
        out["recall"][row] = upload_vectors[order] @ recall.user_vector(user, recent)[0]
        if prerank is not None and rank is not None:
            out["prerank"][row] = prerank.score(user, cold)[0]
            out["rank"][row] = rank.score(user, cold)[0]
            if "content" in earlier.items:  # pre-rank's cold vectors by content weight
                default = prerank.cold.content_weight
                for weight in CONTENT_WEIGHTS:
                    prerank.cold.content_weight = weight
                    key = f"prerank@content_weight={weight}"
                    out.setdefault(key, np.zeros_like(out["prerank"]))[row] = prerank.score(
                        user, cold
                    )[0]
                prerank.cold.content_weight = default
    return out


def page_engagement(truth_world, users: np.ndarray, cold: np.ndarray, scores: np.ndarray):
    """(n_users,) expected engagement per impression of each user's top PAGE uploads."""
    out = np.zeros(len(users))
    positions = np.arange(PAGE)
    for row, user in enumerate(users.tolist()):
        top = cold[np.argsort(-scores[row], kind="stable")[:PAGE]]
        out[row] = truth_world.expected_engagement(truth_world.utility(user, top), positions).mean()
    return out


def ratio_interval(numerator: np.ndarray, denominator: np.ndarray, seed: int = 0) -> dict:
    """Ratio of means with a 95% paired bootstrap interval over users."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(numerator), (2000, len(numerator)))
    ratios = numerator[draws].mean(axis=1) / denominator[draws].mean(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    point = numerator.mean() / denominator.mean()
    return {
        "ratio": round(float(point), 3),
        "low": round(float(low), 3),
        "high": round(float(high), 3),
    }


def synthetic(data_dir: Path, users: int, sizes: Sizes, seed: int) -> dict:
    from research.simulate import World

    world_data = load_dataset("synthetic", data_dir)
    if "content" not in world_data.items:
        raise SystemExit(
            f"{data_dir}/synthetic has no items.content column: rebuild it with "
            "`cascade data --source synthetic --force`"
        )
    earlier, cold, cut = holdout(world_data)
    truth = World(world_data)
    rng = np.random.default_rng(seed)
    active = np.unique(earlier.interactions["user_id"])
    chosen = np.sort(rng.choice(active, min(users, len(active)), replace=False))
    per_user: dict[str, dict[str, np.ndarray]] = {}
    seconds = {}
    for name, (content, id_dropout) in VARIANTS.items():
        started = time.perf_counter()
        data = earlier if content else without_content(earlier)
        # Without content, pre-rank and rank are today's models: only recall is trained again.
        stages = ("recall",) if name == "creator_categories" else STAGES
        with tempfile.TemporaryDirectory(prefix="content-cold-") as root:
            bundle = build_bundle(data, Path(root), id_dropout, sizes, stages == ("recall",))
            scores = stage_scores(bundle, data, world_data, cold, chosen, stages)
        per_user[name] = {s: page_engagement(truth, chosen, cold, v) for s, v in scores.items()}
        for stage in STAGES:
            per_user[name].setdefault(stage, per_user["today"][stage])
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {seconds[name]} s", flush=True)
    random_scores = rng.random((len(chosen), len(cold)))
    oracle_scores = np.stack([truth.utility(u, cold) for u in chosen.tolist()])
    floor = page_engagement(truth, chosen, cold, random_scores)
    ceiling = page_engagement(truth, chosen, cold, oracle_scores)
    table = {}
    for name in VARIANTS:
        for stage in per_user[name]:
            values = per_user[name][stage]
            gap = (values.mean() - floor.mean()) / (ceiling.mean() - floor.mean())
            table[f"{stage}/{name}"] = {
                "engagement": round(float(values.mean()), 4),
                "oracle_gap_closed": round(float(gap), 3),
                "vs_today": ratio_interval(values, per_user["today"][stage.split("@")[0]], seed),
            }
    return {
        "dataset": "synthetic",
        "world_hash": truth.config.world_hash(),
        "cut_ts": int(cut),
        "held_out_uploads": int(len(cold)),
        "users": int(len(chosen)),
        "random": round(float(floor.mean()), 4),
        "oracle": round(float(ceiling.mean()), 4),
        "stages": table,
        "seconds": seconds,
    }


def movielens(data_dir: Path, sizes: Sizes, seed: int) -> dict:
    """Two-tower recall@10 of held-out items over each user's plays of them (no content)."""
    dataset = load_dataset("ml-100k", data_dir)
    earlier, cold, cut = holdout(dataset)
    later = dataset.interactions["ts"] >= cut
    cold_set = set(cold.tolist())
    played: dict[int, set[int]] = {}
    for user, item in zip(
        dataset.interactions["user_id"][later].tolist(),
        dataset.interactions["item_id"][later].tolist(),
        strict=True,
    ):
        if item in cold_set:
            played.setdefault(user, set()).add(item)
    users = np.array(sorted(u for u in played if u < earlier.n_users), np.int64)
    out: dict[str, object] = {"dataset": "ml-100k", "held_out_items": int(len(cold))}
    recalls = {}
    for name in ("today", "creator_categories"):
        id_dropout = VARIANTS[name][1]
        torch.set_num_threads(1)
        spec = build_spec(earlier)
        split = split_dataset(earlier)
        train_log = split.train_interactions
        config = TwoTowerConfig(
            epochs=sizes.movielens_two_tower_epochs,
            id_dropout_without_content=id_dropout,
            seed=seed,
        )
        model = train_two_tower(earlier, train_log, spec, config, progress=False)
        # What id dropout costs on the items it was trained on (full ranking, test period).
        known = evaluate_model(model, earlier, train_log, split.test_interactions)
        out[f"known_items/{name}"] = {k: round(known[k], 4) for k in REPORTED}
        # The held-out items scored from creator and categories with the id unknown (as uploads).
        batcher = Batcher(dataset, spec)  # ids and creators past the vocabulary: unknown
        with torch.no_grad():
            inputs = batcher.item_inputs(cold, np.ones(len(cold), bool))
            vectors = model.item_vector(**inputs).numpy()
        store = InMemoryFeatureStore.from_split(earlier, spec, split_dataset(earlier))
        histories = store.history(users)
        scores = user_vectors(model, Batcher(earlier, spec), users, histories) @ vectors.T
        hits = []
        for row, user in enumerate(users.tolist()):
            top = set(cold[np.argsort(-scores[row], kind="stable")[:PAGE]].tolist())
            hits.append(len(top & played[user]) / min(PAGE, len(played[user])))
        recalls[name] = np.array(hits)
        out[f"recall@10/{name}"] = round(float(recalls[name].mean()), 4)
    out["users"] = int(len(users))
    out["creator_categories_vs_today"] = ratio_interval(
        recalls["creator_categories"], recalls["today"], seed
    )
    return out


def markdown(report: dict) -> str:
    synthetic_part = report["synthetic"]
    lines = [
        "# Content cold start",
        "",
        f"`python -m bench.content_cold_start` — synthetic world {synthetic_part['world_hash']}: "
        f"{synthetic_part['held_out_uploads']} uploads held out (uploaded at or after the cut), "
        f"{synthetic_part['users']} users, a page of {PAGE} among the uploads per stage, true "
        "expected engagement per impression (random "
        f"{synthetic_part['random']}, oracle {synthetic_part['oracle']}).",
        "",
        "| stage | variant | engagement | oracle gap closed | vs today (95% interval) |",
        "|---|---|---|---|---|",
    ]
    for key, row in synthetic_part["stages"].items():
        stage, name = key.split("/")
        ratio = row["vs_today"]
        lines.append(
            f"| {stage} | {name} | {row['engagement']} | {row['oracle_gap_closed']} | "
            f"{ratio['ratio']} [{ratio['low']}, {ratio['high']}] |"
        )
    ml = report.get("ml-100k")
    if ml:
        ratio = ml["creator_categories_vs_today"]
        lines += [
            "",
            f"MovieLens-100K (no content column): {ml['held_out_items']} items first played at "
            f"or after the cut, {ml['users']} users who played them; two-tower recall@10 among "
            f"them: today {ml['recall@10/today']}, creator + categories "
            f"{ml['recall@10/creator_categories']} (ratio {ratio['ratio']} "
            f"[{ratio['low']}, {ratio['high']}]). On the items it was trained on (full ranking "
            f"of the test period): today {ml['known_items/today']}, creator + categories "
            f"{ml['known_items/creator_categories']}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--part",
        choices=("synthetic", "ml-100k", "both"),
        default="both",
        help="run one part; its figures replace that part's in an existing report",
    )
    parser.add_argument("--out", type=Path, default=Path("results/recall"))
    args = parser.parse_args(argv)
    sizes = Sizes()
    path = args.out / "content_cold_start.json"
    report: dict = json.loads(path.read_text()) if path.exists() else {}
    if args.part in ("synthetic", "both"):
        report["synthetic"] = synthetic(args.data_dir, args.users, sizes, args.seed)
    if args.part in ("ml-100k", "both"):
        report["ml-100k"] = movielens(args.data_dir, sizes, args.seed)
    report["sizes"] = dataclasses.asdict(sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    if "synthetic" in report:
        (args.out / "content_cold_start.md").write_text(markdown(report))
        print(markdown(report))
    else:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
