"""Hot reload: a new published bundle is loaded beside the old one and swapped in; a broken one
is counted and the old version keeps serving."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from cascade.artifacts import BundleWriter, publish
from cascade.reload import Reloader


def _bundle(root: Path, version: str) -> None:
    writer = BundleWriter(root, version)
    writer.save_json("rank", "meta.json", {"version": version})
    writer.set_component("rank", {"dataset": "tiny"})
    writer.commit()


def _reloader(root: Path, fail: set[str]) -> tuple[Reloader, list[str], CollectorRegistry]:
    served: list[str] = []

    def load() -> str:
        version = (root / "current").resolve().name
        if version in fail:
            raise ValueError(f"{version} is broken")
        return version

    def swap(version: str) -> str:
        served.append(version)
        return version

    registry = CollectorRegistry()
    reloader = Reloader("rank", root, "current", load, swap, interval_s=0)
    reloader.start(registry)
    return reloader, served, registry


def _count(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "cascade_model_reloads_total", {"stage": "rank", "outcome": outcome}
    )
    return value or 0.0


def test_a_newly_published_bundle_is_swapped_in_once(tmp_path):
    for version in ("v1", "v2"):
        _bundle(tmp_path, version)
    publish(tmp_path, "v1")
    reloader, served, registry = _reloader(tmp_path, fail=set())
    assert reloader.check() is False and served == []  # start-up's version: nothing to do
    publish(tmp_path, "v2")
    assert reloader.check() is True and served == ["v2"]
    assert reloader.check() is False and served == ["v2"]
    assert _count(registry, "ok") == 1


def test_a_broken_bundle_keeps_the_old_version_and_is_not_retried(tmp_path):
    for version in ("v1", "v2", "v3"):
        _bundle(tmp_path, version)
    publish(tmp_path, "v1")
    reloader, served, registry = _reloader(tmp_path, fail={"v2"})
    publish(tmp_path, "v2")
    assert reloader.check() is False and served == []
    assert reloader.check() is False  # the same broken target: no second attempt
    assert _count(registry, "failed") == 1
    publish(tmp_path, "v3")
    assert reloader.check() is True and served == ["v3"]
