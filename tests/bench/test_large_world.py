"""bench/large_world.py's verdict: the large world's latency and CPU over the 10k world's, held
against the goals (p50 and p99 ratios <= 1.3, CPU per request ratio <= 1.5) in each mode."""

import json

from bench.large_world import World, ratios, reused


def served(p50: float, p99: float, cpu: float) -> dict:
    row = {"p50_ms": p50, "p99_ms": p99, "cpu_ms_per_request": cpu}
    return {"one_at_a_time": row, "saturation": row}


def test_ratios_meet_the_goals_only_within_every_limit():
    reference = served(10.0, 20.0, 4.0)
    within = ratios({"large": served(13.0, 26.0, 6.0), "ref": reference}, "large", "ref")
    assert within["one_at_a_time"] == {
        "p50_ratio": 1.3,
        "p99_ratio": 1.3,
        "cpu_ratio": 1.5,
        "met": True,
    }
    slow_tail = ratios({"large": served(12.0, 30.0, 4.0), "ref": reference}, "large", "ref")
    assert slow_tail["saturation"]["p99_ratio"] == 1.5 and not slow_tail["saturation"]["met"]
    costly = ratios({"large": served(10.0, 20.0, 6.4), "ref": reference}, "large", "ref")
    assert costly["one_at_a_time"]["cpu_ratio"] == 1.6 and not costly["one_at_a_time"]["met"]


def test_a_world_trained_elsewhere_is_served_as_its_current_bundle(tmp_path):
    """--reference-data/--reference-artifacts: no generation or training, the bundle named."""
    bundle = tmp_path / "artifacts" / "v7"
    bundle.mkdir(parents=True)
    manifest = {"version": "v7", "components": {}, "files": {"a": {"bytes": 2**30}}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "artifacts" / "current").symlink_to("v7")
    world = World(
        "reference", 10, 2, 1.0, tmp_path / "w", (tmp_path / "data", tmp_path / "artifacts")
    )
    assert world.data_dir == tmp_path / "data" and world.artifacts == tmp_path / "artifacts"
    got = reused(world)
    assert got["reused_bundle"] == f"{tmp_path / 'artifacts'}/current (version v7)"
    assert got["stages"] == {} and got["bundle_gib"] == 1.0
