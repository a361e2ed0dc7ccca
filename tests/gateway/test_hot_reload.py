"""Hot reload on a real rank server: a bundle with different weights is published while requests
keep flowing, and the scores change with no failed call; then a broken bundle is published, the
failed reload is counted and the previous model keeps serving, scores unchanged."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cascade.artifacts import BundleWriter, clone, publish
from cascade.candidates import to_proto
from cascade.client import ClientSettings, make_channel
from cascade.v1 import common_pb2, rank_pb2, rank_pb2_grpc
from tests.gateway.conftest import QUIET, Built, start_rank

pytestmark = pytest.mark.timeout(120)
RELOAD_S = 0.05  # the watcher's poll interval


def rewrite_rank_model(root: Path, version: str, data: bytes) -> None:
    """Replaces the version's rank model by `data` and records its checksum, so the bundle is
    consistent and only the model itself differs (clone hard-links: never write in place)."""
    path = root / version / "rank" / "model.onnx"
    path.unlink()
    path.write_bytes(data)
    writer = BundleWriter(root, version)
    writer.add("rank", "model.onnx")
    writer.commit()


def scaled_weights(path: Path, factor: float) -> bytes:
    """The same network with every float weight multiplied by `factor`: different scores."""
    model = onnx.load(path)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32:
            tensor.CopyFrom(numpy_helper.from_array(array * np.float32(factor), tensor.name))
    return model.SerializeToString()


def rank_request() -> rank_pb2.RankRequest:
    request = rank_pb2.RankRequest(user=common_pb2.UserContext(user_id=2), count=20)
    ids = np.arange(1, 21)
    to_proto(ids, np.zeros(len(ids), dtype=np.float32), out=request.candidates)
    return request


class Traffic:
    """Sends the same Rank request in a loop; remembers each answer's version and scores by
    item, and every error."""

    def __init__(self, address: str):
        self.channel = make_channel(address, ClientSettings(max_attempts=1, timeout_s=5))
        self.stub = rank_pb2_grpc.RankStub(self.channel)
        self.answers: list[tuple[str, dict[int, float]]] = []
        self.errors: list[Exception] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        request = rank_request()
        while not self.stopped.is_set():
            try:
                reply = self.stub.Rank(request, timeout=5)
            except Exception as error:  # every failure is a finding
                self.errors.append(error)
                continue
            scores = dict(zip(reply.candidates.item_ids, reply.candidates.scores, strict=True))
            self.answers.append((reply.model_version, scores))

    def wait_for(self, version: str, timeout_s: float = 60.0) -> dict[int, float]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.answers and self.answers[-1][0] == version:
                return self.answers[-1][1]
            time.sleep(0.01)
        raise AssertionError(f"never served {version}; last {self.answers[-1:]}")

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopped.set()
        self.thread.join(10)
        self.channel.close()


def reloads(server, outcome: str) -> float:
    value = server.registry.get_sample_value(
        "cascade_model_reloads_total", {"stage": "rank", "outcome": outcome}
    )
    return value or 0.0


def test_new_weights_are_served_without_a_failed_call_and_a_broken_bundle_is_refused(
    built, tmp_path
):
    root = tmp_path / "artifacts"
    shutil.copytree(built.artifacts, root, symlinks=True)  # publishing must not touch `built`
    own = Built(built.dataset, built.data_dir, root)
    server = start_rank(own, dataclasses.replace(QUIET, reload_interval_s=RELOAD_S))
    try:
        with Traffic(server.address) as traffic:
            v1 = traffic.wait_for("v1")
            clone(root, "v1", "v2")
            rewrite_rank_model(root, "v2", scaled_weights(root / "v1" / "rank" / "model.onnx", 3))
            publish(root, "v2")
            v2 = traffic.wait_for("v2")
            assert set(v2) == set(v1)
            changed = [item for item in v1 if abs(v1[item] - v2[item]) > 1e-4]
            assert len(changed) >= len(v1) // 2, (v1, v2)  # the new weights score differently
            served_v2 = len(traffic.answers)

            clone(root, "v2", "v3")
            rewrite_rank_model(root, "v3", b"\x08\x07not an onnx graph")
            publish(root, "v3")
            deadline = time.monotonic() + 60
            while reloads(server, "failed") < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert reloads(server, "failed") == 1
            answered = len(traffic.answers)
            while len(traffic.answers) < answered + 5 and time.monotonic() < deadline:
                time.sleep(0.01)  # a few more answers after the failed reload
            after = traffic.answers[served_v2:]
        assert traffic.errors == []  # not one call failed through both reloads
        assert after and all(version == "v2" for version, _ in after)
        assert all(scores == v2 for _, scores in after)  # the v2 model, unchanged
        assert reloads(server, "ok") == 1
    finally:
        server.stop(0)
