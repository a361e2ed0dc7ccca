"""Data-parallel training against one process and against a bare step: `make bench-distributed`.

    python -m bench.distributed [--dataset ml-100k] [--data-dir data] [--artifacts artifacts] \
        [--stages recall rank prerank] [--out results/train]

For each data-parallel stage (recall's two-tower, the ranker, the pre-rank distillation), on the
same data and seed, three runs of `cascade train STAGE`: one process with one torch thread, one
process with torch's default threads (one per core), two processes (`--nproc 2`, one thread
each). Each run trains into its own copy of the published bundle. Reported per run: examples/s
of the training loop, per wall second and per CPU second of every worker (from what the stage
recorded in the bundle: cascade.distributed.LoopClock), the command's wall time (start-up, data
preparation, training, export), and a validation metric: the two-tower's Recall@100 on the test
period, the ranker's validation logloss, the student's AUC on test-period requests. The floor,
measured just before each run at its threads: a bare forward + backward + optimizer step of the
same model on random batches of the same size, one process. Timings on a shared machine vary:
compare ratios within one run, and the CPU-second ones across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cascade.artifacts import Bundle, clone
from cascade.data import load_dataset
from cascade.data.schema import Dataset
from cascade.data.split import split_dataset
from cascade.features import FeatureSpec

CORES = os.cpu_count() or 1
RUNS = (  # label, workers, torch threads per worker
    ("1 process, 1 thread", 1, 1),
    (f"1 process, default threads ({CORES})", 1, CORES),
    ("2 processes, 1 thread each", 2, 1),
)
STAGES = ("recall", "prerank", "rank")
# Shorter than the defaults so the nine runs take minutes on a shared machine; the same for
# every run of a stage, so the runs compare.
STAGE_OPTIONS = {"recall": [], "prerank": ["--epochs", "10"], "rank": ["--max-epochs", "1"]}
TEST_USERS = 300  # the student's test requests: a seeded sample of users
METRICS = {
    "recall": "two-tower Recall@100 (test)",
    "rank": "validation logloss",
    "prerank": "student AUC (test requests)",
}
UNITS = {"recall": "interactions", "rank": "impressions", "prerank": "requests"}
FILES = {"recall": "two_tower.json", "rank": "rank.json", "prerank": "prerank.json"}


def train_run(stage: str, workers: int, threads: int, args, version: str) -> float:
    """`cascade train STAGE` into `version` (a copy of the published bundle); its wall time."""
    clone(args.work, "base", version)
    command = [sys.executable, "-m", "app.cli", "train", stage, "--nproc", str(workers)]
    command += ["--dataset", args.dataset, "--data-dir", str(args.data_dir)]
    command += ["--artifacts", str(args.work), "--version", version, "--threads", str(threads)]
    command += STAGE_OPTIONS[stage]
    if args.seed:  # recall's command has no --seed: refused in main
        command += ["--seed", str(args.seed)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Floor:
    """A bare step's examples per wall second and per CPU second (median step)."""

    per_second: float
    per_cpu_second: float


def measure_floor(bare: Step, threads: int, steps: int) -> Floor:
    """The bare step's examples over its median wall and CPU seconds at `threads` torch threads,
    after two warm-up steps."""
    step, examples = bare
    torch.set_num_threads(threads)
    for _ in range(2):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return Floor(examples / float(np.median(wall)), examples / float(np.median(cpu)))


Step = tuple[Callable[[], None], int]  # a bare training step and the examples it takes


def floor_recall(dataset: Dataset, spec: FeatureSpec, base: Bundle) -> Step:
    """A bare two-tower step (batch_loss, backward, Adam) on random example rows."""
    from services.recall.model import TwoTower
    from services.recall.two_tower import (
        Batcher,
        Towers,
        TwoTowerConfig,
        batch_loss,
        make_examples,
        sampling_log_q,
    )

    config = TwoTowerConfig()
    train = split_dataset(dataset).train_interactions
    examples = make_examples(train, spec.history_length)
    batcher, model = Batcher(dataset, spec), TwoTower(spec, config.dim, config.hidden)
    towers, rng = Towers(model), np.random.default_rng(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    log_q = torch.from_numpy(
        sampling_log_q(examples.item_ids, dataset.n_items, config.batch_size, 0)
    )
    empty = np.zeros(0, dtype=np.int64)

    def step() -> None:
        rows = rng.integers(0, len(examples.item_ids), config.batch_size)
        loss = batch_loss(
            towers,
            batcher,
            examples.user_ids[rows],
            examples.item_ids[rows],
            examples.histories[rows],
            empty,
            log_q,
            config.temperature,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, config.batch_size


def floor_rank(dataset: Dataset, spec: FeatureSpec, base: Bundle) -> Step:
    """A bare ranker step (forward, BCE, backward, Adam) on random rows, encoded as the run
    encodes them (with the bundle's MF position field)."""
    from services.rank.model import ModelConfig, RankModel
    from services.rank.train import TrainConfig, TrainingLogits, _tensors, labels
    from training.rank_train import prepare

    config = TrainConfig()
    prepared = prepare(dataset, config, spec, bundle=base)
    tasks = tuple(dataset.meta["tasks"])
    model = RankModel(prepared.spec, tasks, ModelConfig())
    inputs = _tensors(prepared.train[0], prepared.spec)
    targets = torch.from_numpy(labels(prepared.train[1], tasks))
    objective, generator = TrainingLogits(model), torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    def step() -> None:
        rows = torch.randint(0, len(targets), (config.batch_size,), generator=generator)
        logits = objective([x[rows] for x in inputs], None)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, config.batch_size


def floor_prerank(dataset: Dataset, spec: FeatureSpec, base: Bundle) -> Step:
    """A bare distillation step on random requests (ids, labels, teacher logits) of the
    distillation's shape: requests_per_batch x sampled_per_request candidates."""
    from services.prerank.distill import DistillConfig, DistillLoss, Inputs
    from services.prerank.model import Student

    config = DistillConfig(listwise_weight=1.0)  # the shipped variant's loss
    model = Student(spec, config.student)
    objective = DistillLoss(model, Inputs(dataset, spec), config, None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(0)
    r, k = config.requests_per_batch, config.sampled_per_request

    def step() -> None:
        batch = {
            "user_ids": torch.randint(1, dataset.n_users, (r,), generator=generator),
            "history": torch.randint(0, dataset.n_items, (r, spec.history_length)),
            "item_ids": torch.randint(1, dataset.n_items, (r, k), generator=generator),
            "valid": torch.ones(r, k, dtype=torch.bool),
            "labels": (torch.rand(r, k, generator=generator) < 0.05).float(),
            "teacher_logits": torch.randn(r, k, generator=generator),
        }
        loss = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, r


FLOORS = {"recall": floor_recall, "rank": floor_rank, "prerank": floor_prerank}


def recall_at_100(bundle: Bundle, dataset: Dataset) -> float:
    """The two-tower's Recall@100 on the test period, scored as serving does (ONNX user tower,
    the exported item vectors)."""
    import onnxruntime as ort

    from cascade.evaluation import evaluate_ranking
    from cascade.features import history_before
    from services.recall.two_tower import Batcher

    info = bundle.component("recall")
    spec = FeatureSpec.from_json(info["feature_spec"])
    split = split_dataset(dataset)
    session = ort.InferenceSession(
        str(bundle.file("recall", "user_tower.onnx")), providers=["CPUExecutionProvider"]
    )
    vectors = bundle.load_npz("recall", "item_vectors.npz")["vectors"]
    batcher, names = Batcher(dataset, spec), [i.name for i in session.get_inputs()]
    train = split.train_interactions

    def score(users: np.ndarray) -> np.ndarray:
        histories = history_before(train, users, np.full(len(users), 2**32), spec.history_length)
        inputs = batcher.user_inputs(users, histories)
        user = session.run(None, {n: inputs[n].numpy() for n in names})[0]
        return user @ vectors.T

    found = evaluate_ranking(score, train, split.test_interactions, dataset.n_items, (100,))
    return float(found["Recall@100"])


class StudentMetric:
    """The student's AUC on test-period requests of the base bundle's world (built once)."""

    def __init__(self, args):
        from services.prerank.distill import DistillConfig
        from training.distill_world import open_world, test_requests

        self.world = open_world(args.dataset, args.data_dir, args.work, "base")
        config = DistillConfig()
        self.test = test_requests(self.world, config.candidates_per_request, TEST_USERS)
        self.world.merger.close()

    def __call__(self, bundle: Bundle) -> float:
        from services.prerank.distill import student_scores
        from services.prerank.model import Student, StudentConfig
        from training.prerank_evaluate import true_label_quality

        weights = bundle.load_npz("prerank", "weights.npz")
        model = Student(self.world.spec, StudentConfig())
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        model.eval()
        scores = student_scores(model, self.world.dataset, self.world.spec, self.test)
        return float(true_label_quality(scores, self.test)["AUC"])


def run(args, write: Callable[[dict], None]) -> dict:
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    source = Bundle.open(args.artifacts)
    shutil.copytree(source.folder, args.work / "base")
    dataset = load_dataset(args.dataset, args.data_dir)
    base = Bundle(args.work / "base")
    spec = FeatureSpec.from_json(base.component("recall")["feature_spec"])
    student_metric = StudentMetric(args) if "prerank" in args.stages else None
    stages: list[dict] = []
    report = {
        "dataset": args.dataset,
        "bundle": source.version,
        "cores": CORES,
        "seed": args.seed,
        "torch": torch.__version__,
        "stage_options": {s: STAGE_OPTIONS[s] for s in args.stages},
        "stages": stages,
    }
    for stage in args.stages:
        bare = FLOORS[stage](dataset, spec, base)
        rows: list[dict] = []
        stages.append(
            {
                "stage": stage,
                "examples": UNITS[stage],
                "metric": METRICS[stage],
                "rows": rows,
            }
        )
        for label, workers, threads in (RUNS[i - 1] for i in args.runs):
            # Measured just before the run, at its threads: the load on a shared machine drifts
            floor = measure_floor(bare, threads, args.floor_steps)
            load = os.getloadavg()[0]
            version = f"{stage}-{workers}x{threads}"
            wall = train_run(stage, workers, threads, args, version)
            bundle = Bundle(args.work / version)
            training = bundle.load_json(stage, FILES[stage])["training"]
            if stage == "recall":
                metric = recall_at_100(bundle, dataset)
            elif stage == "rank":
                metric = float(training["best_validation_logloss"])
            else:
                assert student_metric is not None
                metric = student_metric(bundle)
            speed = float(training["examples_per_second"])
            cpu_speed = float(training["examples_per_cpu_second"])
            rows.append(
                {
                    "run": label,
                    "workers": workers,
                    "threads": threads,
                    "examples_per_second": round(speed, 1),
                    "examples_per_cpu_second": round(cpu_speed, 1),
                    "loop_seconds": training["loop_seconds"],
                    "loop_cpu_seconds": training["loop_cpu_seconds"],
                    "wall_seconds": round(wall, 1),
                    "load_average": round(load, 2),
                    "metric": round(metric, 4),
                    "floor_examples_per_second": round(floor.per_second, 1),
                    "floor_examples_per_cpu_second": round(floor.per_cpu_second, 1),
                    # the loop's examples/s against `workers` bare steps side by side
                    "share_of_floor": round(speed / (floor.per_second * workers), 3),
                    # the same per CPU second: what the loop costs beyond the bare step
                    "cpu_share_of_floor": round(cpu_speed / floor.per_cpu_second, 3),
                }
            )
            print(stage, rows[-1], flush=True)
            write(report)  # each run as it completes
    return report


def markdown(report: dict) -> str:
    lines = [
        f"# Data-parallel training on {report['dataset']} ({report['cores']} cores, "
        f"torch {report['torch']})",
        "",
        "`make bench-distributed` (bench/distributed.py): each stage trained three ways on the "
        f"same data and seed ({report.get('seed', 0)}), with {report['stage_options']}. "
        "examples/s: the training loop's "
        "(every worker's examples over the loop's seconds, no data preparation, validation or "
        "export), as the stage recorded it; per CPU s: the same over the CPU seconds every "
        "worker's process spent in the loop. wall: the whole `cascade train STAGE` command. "
        "Floor: a bare forward + backward + Adam step of the same model on random batches of "
        "the same size, one process at the run's threads, measured just before the run; share "
        "of floor: the loop's examples/s over the floor's times the run's workers, and per CPU "
        "second over the floor's per CPU second. load: the machine's 1-minute load average when "
        "the run started.",
        "",
        "The machine is shared: wall-clock rates are the CPU share a "
        "run got while it ran, and drift with the other jobs' load. The CPU-second rates "
        "drift far less; on a free 2-core machine the two-process speed-up would be about "
        "2 x (two processes' examples per CPU s / one process's), an estimate, not measured.",
        "",
        *(f"Note: {note}\n" for note in report.get("notes", [])),
    ]
    for stage in report["stages"]:
        lines += [
            f"## {stage['stage']} ({stage['examples']}/s; metric: {stage['metric']})",
            "",
            "| run | examples/s | per CPU s | wall s | metric | floor /s | floor per CPU s "
            "| share of floor | per CPU s share | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in stage["rows"]:
            lines.append(
                f"| {row['run']} | {row['examples_per_second']:,.0f} | "
                f"{row['examples_per_cpu_second']:,.0f} | {row['wall_seconds']} | "
                f"{row['metric']:.4f} | {row['floor_examples_per_second']:,.0f} | "
                f"{row['floor_examples_per_cpu_second']:,.0f} | {row['share_of_floor']:.2f} | "
                f"{row['cpu_share_of_floor']:.2f} | {row['load_average']:.1f} |"
            )
        by_shape = {(row["workers"], row["threads"]): row for row in stage["rows"]}
        one, two = by_shape.get((1, 1)), by_shape.get((2, 1))
        if one is None or two is None:
            lines.append("")
            continue
        cpu_ratio = two["examples_per_cpu_second"] / one["examples_per_cpu_second"]
        lines += [
            "",
            f"Two processes against one (one thread each): examples/s x"
            f"{two['examples_per_second'] / one['examples_per_second']:.2f} (wall clock), per "
            f"CPU second x{cpu_ratio:.2f} (estimated on a free 2-core machine: "
            f"x{2 * cpu_ratio:.2f}); "
            f"metric {two['metric'] - one['metric']:+.4f}.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="its current")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--floor-steps", type=int, default=20)
    parser.add_argument(
        "--runs",
        type=int,
        nargs="+",
        choices=range(1, len(RUNS) + 1),
        default=list(range(1, len(RUNS) + 1)),
        help="which runs (1: one process, one thread; 2: default threads; 3: two processes)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the rank and pre-rank training seed (another seed's metric: the noise a "
        "two-process run's metric is judged against)",
    )
    parser.add_argument("--work", type=Path, default=Path("data/run/bench_distributed"))
    parser.add_argument("--out", type=Path, default=Path("results/train"))
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="distributed.json files of other runs whose stages join this report",
    )
    args = parser.parse_args(argv)
    if args.seed and "recall" in args.stages:
        parser.error("--seed applies to rank and prerank (recall's two-tower keeps seed 0)")

    def write(report: dict) -> None:
        """The report, with the stages it did not run kept from the file already there (and
        from --merge: stages measured by another run of this bench)."""
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "distributed.json"
        merged = {**report, "stages": list(report["stages"])}  # this run's stays as it is
        ran = {s["stage"] for s in report["stages"]}
        for other in [path, *args.merge]:
            if other.exists():
                kept = json.loads(other.read_text())
                merged["stage_options"] = {**kept["stage_options"], **merged["stage_options"]}
                merged["stages"] += [s for s in kept["stages"] if s["stage"] not in ran]
                ran |= {s["stage"] for s in kept["stages"]}
        merged["stages"].sort(key=lambda s: STAGES.index(s["stage"]))
        path.write_text(json.dumps(merged, indent=2) + "\n")
        (args.out / "distributed.md").write_text(markdown(merged))

    print(markdown(run(args, write)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
