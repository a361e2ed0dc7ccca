"""bench/ kept honest: docs/benchmarks.md lists every module, and the bench make targets run
modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_modules() -> list[str]:
    return sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "__init__.py")


def listed_modules(page: str) -> set[str]:
    """The bench modules a table row of docs/benchmarks.md names in its first cell."""
    return set(re.findall(r"^\| `bench/(\w+\.py)` \|", page, flags=re.M))


def bench_targets(makefile: str) -> dict[str, list[str]]:
    """Each make target named bench or bench-*, with the modules its recipe runs (`-m name`)."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in makefile.splitlines():
        rule = re.match(r"^([\w-]+):", line)
        if rule:
            name = rule.group(1)
            current = name if name == "bench" or name.startswith("bench-") else None
            if current:
                targets[current] = []
        elif current and line.startswith("\t"):
            targets[current] += re.findall(r"-m ([\w.]+)", line)
        elif not line.startswith("\t"):
            current = None
    return targets


def test_every_bench_module_is_listed_in_docs_benchmarks():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert sorted(set(bench_modules()) - listed_modules(page)) == []


def test_docs_benchmarks_lists_no_module_that_is_gone():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert sorted(listed_modules(page) - set(bench_modules())) == []


def test_every_bench_make_target_runs_modules_that_exist():
    targets = bench_targets((ROOT / "Makefile").read_text())
    assert "bench" in targets and "bench-load" in targets
    missing = [
        (target, module)
        for target, modules in targets.items()
        for module in modules
        if not (ROOT / (module.replace(".", "/") + ".py")).exists()
    ]
    assert missing == []


def test_each_module_a_bench_target_runs_is_listed_with_that_target():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    rows = {
        m: line for line in page.splitlines() for m in re.findall(r"^\| `bench/(\w+)\.py`", line)
    }
    unlisted = [
        (target, module)
        for target, modules in bench_targets((ROOT / "Makefile").read_text()).items()
        for module in modules
        if module.startswith("bench.") and f"`make {target}`" not in rows.get(module[6:], "")
    ]
    assert unlisted == []


def test_the_target_parser_reads_recipes():
    """The checks above would catch a target whose module is gone."""
    makefile = (
        "bench-x: setup\n\t$(BIN)/python -m bench.gone --out y\n\nother:\n\t-m bench.not_mine\n"
    )
    assert bench_targets(makefile) == {"bench-x": ["bench.gone"]}
    assert listed_modules("| `bench/load.py` | `make bench-load` |\n") == {"load.py"}
