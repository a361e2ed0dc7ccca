"""What the console reads, each behind one call that raises SourceError with a message the page
shows: the gateway (an explained Recommend), the catalogue and the bundle's neighbour tables, the
event log (online counters, impressions, recent plays), the stack's services and their metrics,
a Prometheus server, the simulation report."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.console import metrics
from app.console.settings import ConsoleSettings
from cascade import healthcheck
from cascade.artifacts import ArtifactError, Bundle
from cascade.backends import open_event_log
from cascade.eventlog import EventLog, EventLogError
from cascade.topology import DEFAULT_PORTS
from cascade.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.request_time import request_time_metadata
from services.recall.tables import item_cf_csr, neighbours_of


class SourceError(RuntimeError):
    """A source the page needs did not answer or does not hold what was asked; the message is
    for the page (no trace)."""


@dataclass(frozen=True)
class Endpoint:
    name: str  # the service: gateway, recall, prerank, rank, rerank
    address: str  # gRPC host:port
    metrics_url: str  # its Prometheus endpoint


class Catalog:
    """The served bundle's dataset: titles, creators, upload times, the logged plays, and the
    bundle's item-CF and two-tower neighbour tables. Loaded on first use."""

    def __init__(self, settings: ConsoleSettings):
        self.settings = settings

    @cached_property
    def bundle(self) -> Bundle:
        try:
            return Bundle.open(Path(self.settings.artifacts), self.settings.bundle)
        except (ArtifactError, OSError, ValueError) as error:
            raise SourceError(
                f"no bundle {self.settings.bundle!r} under {self.settings.artifacts}: {error}"
            ) from error

    @cached_property
    def folder(self) -> Path:
        dataset = self.bundle.component("recall").get("dataset", "")
        folder = Path(self.settings.data_dir) / dataset
        if not (folder / "items.parquet").exists():
            raise SourceError(f"no dataset {dataset!r} under {self.settings.data_dir}")
        return folder

    @cached_property
    def items(self) -> dict[str, np.ndarray]:
        table = pq.read_table(self.folder / "items.parquet")
        ids = table["item_id"].to_numpy()
        n = int(ids.max()) + 1 if len(ids) else 1
        titles = np.full(n, "", dtype=object)
        titles[ids] = table["title"].to_pylist()
        creators, uploaded = np.zeros(n, np.int64), np.zeros(n, np.int64)
        creators[ids], uploaded[ids] = table["creator_id"].to_numpy(), table["upload_ts"].to_numpy()
        known = np.zeros(n, bool)
        known[ids] = True
        return {"title": titles, "creator": creators, "uploaded": uploaded, "known": known}

    @cached_property
    def plays(self) -> pa.Table:
        """The dataset's logged interactions: user_id, item_id, ts (s)."""
        return pq.read_table(
            self.folder / "interactions.parquet", columns=["user_id", "item_id", "ts"]
        )

    @cached_property
    def clock_s(self) -> int:
        """The dataset's last logged time (s): ages are told against it, as the gateway's "data"
        clock starts there for the replayed datasets."""
        stamps = self.plays["ts"].to_numpy()
        return int(stamps.max()) if len(stamps) else 0

    def known(self, item_id: int) -> bool:
        known = self.items["known"]
        return 0 < item_id < len(known) and bool(known[item_id])

    def title(self, item_id: int) -> str:
        return str(self.items["title"][item_id]) if self.known(item_id) else f"item {item_id}"

    def creator(self, item_id: int) -> int:
        return int(self.items["creator"][item_id]) if self.known(item_id) else 0

    def uploaded(self, item_id: int) -> int:
        return int(self.items["uploaded"][item_id]) if self.known(item_id) else 0

    def history(self, user_id: int, limit: int) -> list[tuple[int, int]]:
        """The user's logged plays, newest first: (item_id, ts s)."""
        plays = self.plays.filter(pc.equal(self.plays["user_id"], user_id))
        order = np.argsort(-plays["ts"].to_numpy(), kind="stable")[:limit]
        items, stamps = plays["item_id"].to_numpy()[order], plays["ts"].to_numpy()[order]
        return [(int(i), int(t)) for i, t in zip(items, stamps, strict=True)]

    def item_cf(self, item_id: int, k: int) -> list[tuple[int, float]]:
        items, weights = neighbours_of(item_cf_csr(self._npz("item_cf.npz")), item_id)
        return [(int(i), float(w)) for i, w in zip(items[:k], weights[:k], strict=True)]

    def two_tower(self, item_id: int, k: int) -> list[tuple[int, float]]:
        vectors = self._npz("item_vectors.npz")["vectors"]  # (n_items + 1, dim), row 0 zeros
        if item_id >= len(vectors) or not vectors[item_id].any():
            return []
        scores = vectors @ vectors[item_id]
        scores[[0, item_id]] = -np.inf
        best = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in best if np.isfinite(scores[i])]

    def _npz(self, name: str) -> dict[str, np.ndarray]:
        cache = self.__dict__.setdefault("_tables", {})
        if name not in cache:
            try:
                cache[name] = self.bundle.load_npz("recall", name)
            except (ArtifactError, OSError, KeyError, ValueError) as error:
                raise SourceError(f"the bundle has no recall/{name}: {error}") from error
        return cache[name]


@contextmanager
def _event_log(uri: str) -> Iterator[EventLog]:
    """The event log at `uri`, read-only, closed after use; a SourceError when it cannot open."""
    try:
        log = open_event_log(uri, read_only=True)
    except (EventLogError, OSError, ValueError) as error:
        raise SourceError(f"the event log {uri} cannot be read: {error}") from error
    try:
        yield log
    finally:
        log.close()


def event_log_counts(uri: str, item_id: int) -> tuple[dict[str, int], int]:
    """(events by type, impressions) of one item in the event log so far."""
    with _event_log(uri) as log:
        events = log.read_events()
        mine = events.filter(pc.equal(events["item_id"], item_id))
        counts: dict[str, int] = {}
        for name in mine["event"].to_pylist():
            counts[name] = counts.get(name, 0) + 1
        shown = log.read_impressions()
        flat = pc.list_flatten(shown["item_ids"]) if shown.num_rows else pa.array([], pa.int64())
        impressions = int(pc.sum(pc.equal(flat, item_id)).as_py() or 0)
    return counts, impressions


def upload(uri: str, item_id: int) -> dict | None:
    """The item's upload record in the event log (an item added with AddItems): creator_id,
    item_key, upload_ms; None when it is not an upload."""
    with _event_log(uri) as log:
        uploads = log.read_records("uploads")
    mine = uploads.filter(pc.equal(uploads["item_id"], item_id)).to_pylist()
    return mine[-1] if mine else None


@dataclass(frozen=True)
class PoolServed:
    """The traffic pool as the gateway serves it (its metrics endpoint says): slots per page,
    the target K, the window (s) and its clock, the latest served request's time (s; 0 before
    the first)."""

    slots: int
    target: int
    window_s: int
    clock_s: int


def pool_served(metrics_url: str, timeout_s: float) -> PoolServed:
    try:
        answer = metrics.scrape(metrics_url, timeout_s)
    except metrics.ScrapeError as error:
        raise SourceError(f"the gateway's metrics: {error}") from error
    setting = {
        labels["setting"]: int(value)
        for labels, value in answer.select("cascade_gateway_pool_setting")
    }
    if set(setting) != {"slots", "target", "window_s"}:
        raise SourceError(f"the gateway at {metrics_url} reports no traffic pool settings")
    clock = [value for _, value in answer.select("cascade_gateway_pool_clock_seconds")]
    return PoolServed(**setting, clock_s=int(clock[0]) if clock else 0)


def online_plays(uri: str, user_id: int, limit: int) -> list[tuple[int, int, str]]:
    """The user's events in the event log, newest first: (item_id, timestamp ms, event)."""
    with _event_log(uri) as log:
        events = log.read_events()
    mine = events.filter(pc.equal(events["user_id"], user_id))
    order = np.argsort(-mine["timestamp_ms"].to_numpy(), kind="stable")[:limit]
    rows = zip(
        mine["item_id"].to_numpy()[order],
        mine["timestamp_ms"].to_numpy()[order],
        np.asarray(mine["event"].to_pylist(), dtype=object)[order],
        strict=True,
    )
    return [(int(i), int(t), str(e)) for i, t, e in rows]


def recently_shown(uri: str, user_id: int, ttl_s: float) -> list[int]:
    """Items on the pages served to the user (impression records) within `ttl_s` of the newest
    one, newest first: rerank's already-shown filter with the embedded store, which keeps its
    shown set in the rerank process."""
    with _event_log(uri) as log:
        shown = log.read_impressions()
    mine = shown.filter(pc.equal(shown["user_id"], user_id))
    if not mine.num_rows:
        return []
    stamps = mine["request_time_ms"].to_numpy()
    recent = np.flatnonzero(stamps >= stamps.max() - ttl_s * 1000)
    pages = mine["item_ids"].to_pylist()
    items: list[int] = []
    for row in recent[np.argsort(-stamps[recent], kind="stable")]:
        items += [int(i) for i in pages[row] if int(i) not in items]
    return items


def explain(
    address: str,
    token: str,
    user: str,
    count: int,
    timeout_s: float,
    tls_ca: str = "",
    at_ms: int = 0,
) -> gateway_pb2.RecommendResponse:
    """An explained Recommend for `user` (a dense id in digits, else an external key); `tls_ca`:
    the gateway serves TLS signed by that CA; `at_ms`: the request time to explain at (a gateway
    with clock "caller" honours it; 0 = its own clock)."""
    request = gateway_pb2.RecommendRequest(count=count, explain=True, debug=True)
    if user.isdigit():
        request.user_id = int(user)
    else:
        request.user_key = user
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
    if at_ms:
        metadata += request_time_metadata(at_ms)
    if tls_ca:
        from cascade.tls import channel_credentials

        channel = grpc.secure_channel(address, channel_credentials(Path(tls_ca)))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            return gateway_pb2_grpc.GatewayStub(channel).Recommend(
                request, timeout=timeout_s, metadata=metadata or None
            )
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else "UNAVAILABLE"
            detail = error.details() if isinstance(error, grpc.Call) else str(error)
            raise SourceError(f"the gateway at {address} answered {code}: {detail}") from error


def endpoints(settings: ConsoleSettings) -> list[Endpoint]:
    """The stack's services: from `services` ("name=host:port=metrics URL", comma separated)
    when set, else from the local stack's state in run_dir (`cascade up`)."""
    if settings.services:
        found = []
        for entry in settings.services.split(","):
            name, address, url = (entry.strip().split("=", 2) + ["", ""])[:3]
            found.append(Endpoint(name, address, url))
        return found
    from app import stack

    running = stack.running(Path(settings.run_dir))
    if running is None:
        raise SourceError(
            f"no running stack recorded in {settings.run_dir}: start one with "
            "`cascade up --console`"
        )
    return [
        Endpoint(s.name, s.address, f"http://127.0.0.1:{s.metrics_port}/metrics")
        for s in running.services
        if s.name in DEFAULT_PORTS
    ]


def gateway_address(settings: ConsoleSettings) -> str:
    if settings.gateway_target:
        return settings.gateway_target
    for endpoint in endpoints(settings):
        if endpoint.name == "gateway":
            return endpoint.address
    raise SourceError("the stack has no gateway running")


def health(address: str, timeout_s: float) -> str:
    return healthcheck.check(address, timeout_s=timeout_s)


def prometheus_query(url: str, query: str, timeout_s: float) -> list[dict]:
    """An instant query's result vector; SourceError when Prometheus does not answer."""
    full = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(full, timeout=timeout_s) as answer:
            body = json.loads(answer.read().decode())
    except (OSError, ValueError) as error:
        raise SourceError(f"Prometheus at {url} did not answer: {error}") from error
    if body.get("status") != "success":
        raise SourceError(f"Prometheus at {url} refused {query!r}: {body.get('error', body)}")
    return list(body["data"]["result"])


def simulation_report(folder: Path) -> dict:
    path = Path(folder) / "simulation.json"
    try:
        return dict(json.loads(path.read_text()))
    except OSError as error:
        raise SourceError(f"no simulation report at {path}: run `make bench-loop`") from error
    except ValueError as error:
        raise SourceError(f"{path} is not JSON: {error}") from error


def age(seconds_then: int, now_s: float) -> str:
    """How long before `now_s`, in words ("3 d 4 h")."""
    delta = int(now_s - seconds_then)
    days, rest = divmod(max(delta, 0), 86_400)
    hours, rest = divmod(rest, 3600)
    return f"{days} d {hours} h" if days else f"{hours} h {rest // 60} min"
