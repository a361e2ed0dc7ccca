"""Data-parallel training primitives for the stages' training loops: the process group torchrun
sets up, each worker's shard of the examples, DistributedDataParallel, and the gathers.

A process not started by torchrun is one worker of one: every function here is then the identity
(no process group, every example, the bare model), so the single-process path is unchanged. The
launcher, the staged bundle and the failure report live in training/distributed.py.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

# How long a collective waits for a missing worker before it raises: the survivors of a dead
# worker fail within this instead of hanging (torchrun also stops them when one exits).
TIMEOUT = datetime.timedelta(minutes=10)


def launched() -> bool:
    """True in a worker torchrun started (it sets RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


def backend() -> str:
    """Gloo for CPU tensors, with NCCL for CUDA tensors when a GPU is present."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init() -> None:
    """Joins the process group of a torchrun worker (no-op otherwise, or when joined)."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend(), timeout=TIMEOUT)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    """Only worker 0 writes files (the bundle, reports); the others train and return."""
    return rank() == 0


def shard(n: int, seed: int) -> np.ndarray:
    """The example rows (of n) this worker reads, in order: a seeded permutation cut into equal
    parts, one per worker, the remainder (< world size rows) dropped so that every worker runs
    the same number of steps (a collective waits for all). One worker: every row, in order."""
    size = world_size()
    if size == 1:
        return np.arange(n)
    per_worker = n // size
    if per_worker == 0:
        raise ValueError(f"{n} examples cannot be shared by {size} workers")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[rank() * per_worker : (rank() + 1) * per_worker])


def local_batch(global_batch: int) -> int:
    """Each worker's share of a global batch (a global batch of B is W batches of B / W)."""
    size = world_size()
    if global_batch % size:
        raise ValueError(f"a batch of {global_batch} does not split over {size} workers")
    return global_batch // size


def wrap(model: nn.Module) -> nn.Module:
    """DistributedDataParallel over `model` (gradients averaged across workers in backward;
    worker 0's initial weights broadcast); the model itself with one worker."""
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(model)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every worker's `tensor` concatenated along dim 0 in rank order, carrying gradient: the
    backward pass returns each worker the gradient every worker's loss put on its rows."""
    if world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor))


def gather_values(array: np.ndarray) -> np.ndarray:
    """`gather` for values without gradient (ids, labels); arrays of equal shape per worker."""
    if world_size() == 1:
        return array
    local = torch.from_numpy(np.ascontiguousarray(array))
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).numpy()


def sum_values(values: np.ndarray) -> np.ndarray:
    """The element-wise sum of `values` over workers (float64), e.g. a loss sum and a count."""
    if world_size() == 1:
        return values
    total = torch.from_numpy(np.asarray(values, dtype=np.float64).copy())
    dist.all_reduce(total)
    return total.numpy()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class LoopClock:
    """The training loop's own time, epoch by epoch (no data preparation, validation or export),
    so every stage reports examples/s the same way: the global batch's examples over worker 0's
    wall seconds, and over the CPU seconds every worker's process spent in the loop. On a shared
    machine the wall rate is the CPU share the loop got; the CPU rate is what the loop costs."""

    def __init__(self) -> None:
        self.wall_seconds = 0.0
        self.cpu_seconds = 0.0  # this process's, all its threads

    @contextmanager
    def epoch(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall_seconds += time.perf_counter() - wall
        self.cpu_seconds += time.process_time() - cpu

    def report(self, examples: int) -> dict[str, float]:
        """`examples` (global: every worker's) per second; a collective, called by every worker."""
        cpu = float(sum_values(np.array([self.cpu_seconds]))[0])
        return {
            "loop_seconds": round(self.wall_seconds, 2),
            "loop_cpu_seconds": round(cpu, 2),
            "examples_per_second": round(examples / max(self.wall_seconds, 1e-9), 1),
            "examples_per_cpu_second": round(examples / max(cpu, 1e-9), 1),
        }
