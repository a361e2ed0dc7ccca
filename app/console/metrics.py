"""The services' own Prometheus metrics as the stack page reads them: one scrape per service,
kept for a window, turned into p50/p99 latency and request rate over that window."""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
# Each service's main RPC, as the `rpc` label of cascade_rpc_latency_seconds names it.
RPCS = {
    "gateway": "cascade.v1.Gateway/Recommend",
    "recall": "cascade.v1.Recall/Recall",
    "prerank": "cascade.v1.Prerank/Prerank",
    "rank": "cascade.v1.Rank/Rank",
    "rerank": "cascade.v1.Rerank/Rerank",
}


class ScrapeError(RuntimeError):
    """A metrics endpoint did not answer; the message names it."""


@dataclass(frozen=True)
class Scrape:
    """Every sample of one /metrics answer: (name, sorted labels) -> value."""

    at: float  # time.monotonic() of the scrape
    samples: dict[tuple[str, Labels], float]

    def select(self, name: str, **match: str) -> Iterable[tuple[dict[str, str], float]]:
        for (sample, labels), value in self.samples.items():
            if sample != name:
                continue
            as_dict = dict(labels)
            if all(as_dict.get(k) == v for k, v in match.items()):
                yield as_dict, value

    def total(self, name: str, **match: str) -> float:
        return sum(value for _, value in self.select(name, **match))


def parse(text: str, at: float) -> Scrape:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Scrape(at, samples)


def scrape(url: str, timeout_s: float = 2.0) -> Scrape:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            text = answer.read().decode()
    except (OSError, ValueError) as error:
        raise ScrapeError(f"{url} did not answer: {error}") from error
    return parse(text, time.monotonic())


def buckets(
    scrape: Scrape, service: str, name: str = "cascade_rpc_latency_seconds", **match: str
) -> dict[float, float]:
    """Cumulative buckets (le -> count) of a histogram: by default the live traffic's latency of
    the service's main RPC; with `name` and `match`, that histogram's matching series summed."""
    if not match:
        match = {"rpc": RPCS[service], "traffic": "live"}
    found: dict[float, float] = {}
    for labels, value in scrape.select(f"{name}_bucket", **match):
        le = float(labels["le"])
        found[le] = found.get(le, 0.0) + value
    return found


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts (le -> count): linear inside
    the bucket that holds rank q; None without observations. The +Inf bucket answers its lower
    bound, as Prometheus does."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return bounds[-1]


def delta(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {le: count - old.get(le, 0.0) for le, count in new.items()}


@dataclass(frozen=True)
class Latency:
    p50_ms: float | None
    p99_ms: float | None
    rate: float  # requests per second over the window
    requests: float  # requests in the window


def latency(new: Scrape, old: Scrape | None, service: str, name: str = "", **match: str) -> Latency:
    """p50/p99 and rate of the service's main RPC (or of histogram `name` where `match`) between
    two scrapes (since the process started without `old`)."""
    args = (name,) if name else ()
    now = buckets(new, service, *args, **match)
    window = now if old is None else delta(now, buckets(old, service, *args, **match))
    count = max(window.values(), default=0.0)
    seconds = new.at - old.at if old is not None else 0.0
    p50, p99 = quantile(0.5, window), quantile(0.99, window)
    return Latency(
        None if p50 is None else p50 * 1000,
        None if p99 is None else p99 * 1000,
        count / seconds if seconds > 0 else 0.0,
        count,
    )


class History:
    """Scrapes of each service's metrics endpoint, every `every_s`, kept for `window_s`: the
    stack page's figures are over what it holds (the first scrape is the window's start)."""

    def __init__(self, window_s: float = 300.0, every_s: float = 5.0):
        self.window_s, self.every_s = window_s, every_s
        self._scrapes: dict[str, deque[Scrape]] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, targets: dict[str, str]) -> None:
        """One scrape of each service's metrics URL (name -> URL)."""
        for name, url in targets.items():
            try:
                taken = scrape(url)
            except ScrapeError as error:
                with self._lock:
                    self._errors[name] = str(error)
                continue
            with self._lock:
                self._errors.pop(name, None)
                kept = self._scrapes.setdefault(name, deque())
                kept.append(taken)
                while kept and taken.at - kept[0].at > self.window_s:
                    kept.popleft()

    def scrapes(self, name: str) -> list[Scrape]:
        with self._lock:
            return list(self._scrapes.get(name, ()))

    def error(self, name: str) -> str | None:
        with self._lock:
            return self._errors.get(name)

    def series(self, name: str) -> list[float]:
        """p99 (ms) between consecutive scrapes: the sparkline; 0 where no request came."""
        kept = self.scrapes(name)
        points = []
        for old, new in zip(kept, kept[1:], strict=False):
            p99 = latency(new, old, name).p99_ms
            points.append(p99 or 0.0)
        return points
