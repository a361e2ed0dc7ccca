"""The replica benchmarks wait on the state they need, not for a guessed time: the gateway's own
count of serving replicas (bench/replica_pause.py) and the recall replicas' play counters taking
in every accepted play (bench/replicas.py)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from app import stack
from bench import replicas
from bench.replica_pause import serving_replicas, wait_serving_replicas
from gateway.server import start
from tests.gateway.conftest import QUIET, gateway_settings, start_stages


def test_the_pause_bench_waits_for_the_gateway_to_count_both_rank_replicas(built, tmp_path):
    stages, _ = start_stages(built)
    # rank's second replica: a port nobody listens on, as a replica that has not started yet.
    target = f"{stages['rank'].address},127.0.0.1:1"
    server = dataclasses.replace(QUIET, metrics_port=0)
    gateway = start(gateway_settings(built, stages, rank_target=target, server=server))
    assert gateway.metrics_port
    service = stack.Service("gateway", gateway.port, gateway.metrics_port, os.getpid(), "gw.log")
    try:
        assert serving_replicas(service, "rank") == 2  # never failed: both count as serving
        wait_serving_replicas(service, "rank", 2, timeout_s=5.0)  # returns at once
        with pytest.raises(RuntimeError, match="serves 2 rank replicas after 0.3 s, not 3"):
            wait_serving_replicas(service, "rank", 3, timeout_s=0.3)
    finally:
        gateway.stop(0)
        gateway.service.close()
        for stage in stages.values():
            stage.stop(0)


class Counters:
    """Each recall replica's play counter as successive scrapes read it."""

    def __init__(self, readings: dict[str, list[int]]):
        self.readings = readings

    def __call__(self, service: stack.Service) -> int:
        values = self.readings[service.log]
        return values.pop(0) if len(values) > 1 else values[0]


def recalls() -> list[stack.Service]:
    return [stack.Service("recall", 1, 2, 3, name) for name in ("a", "b")]


def test_a_shared_store_is_waited_for_until_each_replica_counts_every_play(monkeypatch):
    # Replica b's counters snapshot refreshes one scrape later than a's.
    monkeypatch.setattr(replicas, "play_counter", Counters({"a": [15, 15], "b": [10, 15]}))
    after = replicas.settled_play_counters(recalls(), [5, 5], 10, shared=True, timeout_s=5.0)
    assert after == [15, 15]


def test_the_embedded_store_is_waited_for_until_the_replicas_count_every_play_between_them(
    monkeypatch,
):
    monkeypatch.setattr(replicas, "play_counter", Counters({"a": [8, 11], "b": [9]}))
    after = replicas.settled_play_counters(recalls(), [5, 5], 10, shared=False, timeout_s=5.0)
    assert after == [11, 9]  # 6 + 4 plays: each replica counts the plays it was told of


def test_plays_that_never_arrive_are_an_error_naming_the_counters(monkeypatch):
    monkeypatch.setattr(replicas, "play_counter", Counters({"a": [15], "b": [9]}))
    with pytest.raises(RuntimeError, match=r"counters \[15, 9\] \(from \[5, 5\]\) did not take"):
        replicas.settled_play_counters(recalls(), [5, 5], 10, shared=True, timeout_s=0.3)
