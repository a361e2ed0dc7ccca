"""A seeded fuzz of every public and stage method of a running local stack: what each answers to
bytes that are not its request, and what the servers log about them.

    python -m bench.fuzz --out results/security [--payloads 3600] [--seed 0]

The stack runs on free loopback ports from the published bundle. Every method every server serves
(those reflection lists, health and reflection excluded, and the CatalogUpdates service the stages
serve beside their own) gets an equal share of the payloads, in three
kinds drawn from one seeded generator: random bytes, a valid request with bytes flipped, cut or
inserted, and a valid request of random field values (extreme integers, long strings). Reported:
the status codes per method, the log lines the servers wrote per 1,000 payloads (read from their
log files once their summary lines account for every malformed request their metrics counted,
so held-back counts are written), the servers'
`cascade_malformed_requests_total`, and whether every server still answers (health SERVING, a
Recommend with items). Writes fuzz.json and fuzz.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import descriptor, message_factory
from google.protobuf import descriptor_pool as pools
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from app import stack
from cascade.malformed import SUMMARY_INTERVAL_S

# Imported for their descriptors: every cascade.v1 service in the default pool.
from cascade.v1 import (  # noqa: F401
    catalog_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    prerank_pb2,
    rank_pb2,
    recall_pb2,
    rerank_pb2,
)

KINDS = ("random bytes", "mutated valid", "random values")
INT_EDGES = (0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63))
FieldDescriptor = descriptor.FieldDescriptor


# Served beside a stage's own service without being listed by reflection (recall, pre-rank, rank).
UNLISTED = ("cascade.v1.CatalogUpdates",)


def methods_of(address: str) -> list[descriptor.MethodDescriptor]:
    """The methods a server serves: those reflection lists (health and reflection left out),
    and the unlisted ones it answers (an empty request not UNIMPLEMENTED)."""
    pool = pools.Default()
    with grpc.insecure_channel(address) as channel:
        names = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        for name in UNLISTED:
            method = pool.FindServiceByName(name).methods[0]
            call = channel.unary_unary(f"/{name}/{method.name}")
            try:
                call(b"", timeout=5)
                names.add(name)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    names.add(name)
    return [
        method
        for name in sorted(names)
        if not name.startswith("grpc.")
        for method in pool.FindServiceByName(name).methods
    ]


def random_message(kind: descriptor.Descriptor, rng: np.random.Generator, depth: int = 0):
    """A message of `kind` with every field set to a random value (nested ones to depth 2)."""
    message = message_factory.GetMessageClass(kind)()
    for field in kind.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        repeated = field.is_repeated
        values = [
            _value(field, rng, depth) for _ in range(int(rng.integers(0, 6)) if repeated else 1)
        ]
        values = [v for v in values if v is not None]
        if not values:
            continue
        target = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for value in values:
                (target.add() if repeated else target).CopyFrom(value)
        elif repeated:
            target.extend(values)
        else:
            setattr(message, field.name, values[0])
    return message


def _value(field: FieldDescriptor, rng: np.random.Generator, depth: int):
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return random_message(field.message_type, rng, depth + 1) if depth < 2 else None
    if kind == FieldDescriptor.TYPE_BOOL:
        return bool(rng.integers(0, 2))
    if kind == FieldDescriptor.TYPE_ENUM:
        return int(rng.choice([v.number for v in field.enum_type.values]))
    if kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        text = "".join(chr(int(c)) for c in rng.integers(32, 0x24F, int(rng.integers(0, 300))))
        return text if kind == FieldDescriptor.TYPE_STRING else text.encode()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return float(rng.choice([0.0, -1.0, 1e30, float("nan"), float("inf"), rng.normal()]))
    unsigned = kind in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    )
    bits = (
        32
        if kind
        in (
            FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_SINT32,
            FieldDescriptor.TYPE_SFIXED32,
            FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_FIXED32,
        )
        else 64
    )
    value = int(rng.choice(INT_EDGES)) if rng.random() < 0.5 else int(rng.integers(-50, 2000))
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return min(high, max(low, value))


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """Bytes flipped, the message cut short, or random bytes inserted."""
    data = bytearray(data or b"\x08\x01")
    for _ in range(int(rng.integers(1, 6))):
        choice = rng.integers(0, 3)
        position = int(rng.integers(0, len(data)))
        if choice == 0:
            data[position] = int(rng.integers(0, 256))
        elif choice == 1:
            del data[position:]
            data = data or bytearray(b"\xff")
        else:
            data[position:position] = (
                rng.integers(0, 256, int(rng.integers(1, 8))).astype(np.uint8).tobytes()
            )
    return bytes(data)


def payload(kind: str, method: descriptor.MethodDescriptor, rng: np.random.Generator) -> bytes:
    if kind == "random bytes":
        return rng.integers(0, 256, int(rng.integers(0, 257))).astype(np.uint8).tobytes()
    valid = random_message(method.input_type, rng).SerializeToString()
    return mutate(valid, rng) if kind == "mutated valid" else valid


# A summary line of cascade/malformed.py: "<stage>: 12 malformed requests answered ...".
SUMMARY = re.compile(r"(\d+) malformed requests? answered INVALID_ARGUMENT")


def log_lines(running: stack.Stack) -> dict[str, int]:
    counts = {}
    for service in running.services:
        try:
            counts[service.name] = len(Path(service.log).read_text(errors="replace").splitlines())
        except OSError:
            counts[service.name] = 0
    return counts


def logged_malformed(running: stack.Stack, before: dict[str, int]) -> dict[str, int]:
    """Per server, the malformed requests its summary lines after line `before[name]` count."""
    counts = {}
    for service in running.services:
        try:
            lines = Path(service.log).read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        counts[service.name] = sum(
            int(match[1])
            for line in lines[before[service.name] :]
            if (match := SUMMARY.search(line))
        )
    return counts


def wait_summaries_logged(running: stack.Stack, before: dict[str, int], timeout_s: float) -> None:
    """Until each server's summary lines account for every malformed request its metrics count:
    the rest of a burst is logged when the summary interval ends (cascade/malformed.py), so the
    lines are counted after that, not before. RuntimeError naming both counts when time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        counted, logged = malformed_counts(running), logged_malformed(running, before)
        if all(logged.get(name, 0) >= count for name, count in counted.items()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"malformed requests counted {counted} but logged {logged} after {timeout_s} s"
            )
        time.sleep(0.2)


def malformed_counts(running: stack.Stack) -> dict[str, float]:
    counts = {}
    for service in running.services:
        if not service.metrics_port or service.metrics_port < 0:
            continue
        url = f"http://127.0.0.1:{service.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        counts[service.name] = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "cascade_malformed_requests"
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    return counts


def still_answering(running: stack.Stack) -> dict[str, bool]:
    answers = {}
    for service in running.services:
        with grpc.insecure_channel(service.address) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                answers[service.name] = status.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                answers[service.name] = False
    with grpc.insecure_channel(running.address("gateway")) as channel:
        try:
            page = gateway_pb2_grpc.GatewayStub(channel).Recommend(
                gateway_pb2.RecommendRequest(user_id=1, count=10), timeout=5
            )
            answers["gateway Recommend with items"] = len(page.items.item_ids) == 10
        except grpc.RpcError:
            answers["gateway Recommend with items"] = False
    return answers


def fuzz(running: stack.Stack, payloads: int, seed: int, timeout_s: float) -> dict:
    targets = [
        (service, method) for service in running.services for method in methods_of(service.address)
    ]
    per_method = -(-payloads // len(targets))
    rng = np.random.default_rng(seed)
    codes: dict[str, Counter] = {}
    kinds: Counter = Counter()
    before = log_lines(running)
    started = time.perf_counter()
    for service, method in targets:
        name = f"{service.name} {method.full_name}"
        counter = codes.setdefault(name, Counter())
        path = f"/{method.containing_service.full_name}/{method.name}"
        with grpc.insecure_channel(service.address) as channel:
            call = channel.unary_unary(path)  # bytes in, bytes out
            for n in range(per_method):
                kind = KINDS[n % len(KINDS)]
                kinds[kind] += 1
                try:
                    call(payload(kind, method, rng), timeout=timeout_s)
                    counter["OK"] += 1
                except grpc.RpcError as error:
                    counter[error.code().name] += 1
    seconds = time.perf_counter() - started
    wait_summaries_logged(running, before, timeout_s=3 * SUMMARY_INTERVAL_S)
    after = log_lines(running)
    sent = per_method * len(targets)
    lines = {name: after[name] - before[name] for name in after}
    totals: Counter = Counter()
    for counter in codes.values():
        totals.update(counter)
    return {
        "payloads": sent,
        "methods": len(targets),
        "payloads_per_method": per_method,
        "kinds": dict(kinds),
        "seconds": round(seconds, 1),
        "codes": dict(totals),
        "codes_by_method": {name: dict(counter) for name, counter in codes.items()},
        "log_lines": lines,
        "log_lines_per_1000": round(1000 * sum(lines.values()) / sent, 2),
        "malformed_requests_metric": malformed_counts(running),
        "still_answering": still_answering(running),
    }


def to_markdown(report: dict) -> str:
    total = report["payloads"]
    lines = [
        "# Fuzzing every public and stage method of a running stack",
        "",
        f"`python -m bench.fuzz` (seed {report['seed']}): {total:,} payloads, "
        f"{report['payloads_per_method']} to each of {report['methods']} methods "
        f"({', '.join(f'{k}: {v}' for k, v in report['kinds'].items())}), in "
        f"{report['seconds']} s; machine load average {report['load_average']}.",
        "",
        f"- Log lines written by all servers: **{sum(report['log_lines'].values())}** = "
        f"**{report['log_lines_per_1000']} per 1,000 payloads** (goal <= 5) "
        f"({', '.join(f'{k} {v}' for k, v in report['log_lines'].items())})",
        "- `cascade_malformed_requests_total` per server: "
        + ", ".join(f"{k} {v:.0f}" for k, v in report["malformed_requests_metric"].items())
        + f" (sum {sum(report['malformed_requests_metric'].values()):.0f})",
        "- Codes: " + ", ".join(f"{k} {v}" for k, v in sorted(report["codes"].items())),
        "- Still answering afterwards: "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["still_answering"].items()),
        "",
        "| server and method | " + " | ".join(sorted(report["codes"])) + " |",
        "|---|" + "---|" * len(report["codes"]),
    ]
    for name, counter in report["codes_by_method"].items():
        row = " | ".join(str(counter.get(code, 0)) for code in sorted(report["codes"]))
        lines.append(f"| {name} | {row} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/fuzz"))
    parser.add_argument("--payloads", type=int, default=3600, help="in all, shared by methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0, help="per call, seconds")
    parser.add_argument("--out", type=Path, default=Path("data/run/security"))
    args = parser.parse_args(argv)
    where = {"artifacts": args.artifacts, "data_dir": args.data_dir, "dataset": args.dataset}
    where |= {"bundle": args.bundle, "train": args.bundle == "current"}
    load_start = round(os.getloadavg()[0], 2)
    with stack.running_stack(args.run_dir, **where) as running:
        report = {"seed": args.seed} | fuzz(running, args.payloads, args.seed, args.timeout)
    report["load_average"] = f"{load_start} at the start, {round(os.getloadavg()[0], 2)} at the end"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "fuzz.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"saved {args.out}/fuzz.json, fuzz.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
