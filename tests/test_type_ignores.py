"""The type checker's escape hatches stay few and explained: `make lint` runs mypy over every
package we ship (pyproject's [tool.mypy]) with no module's errors ignored and no folder left out
(the generated wire contract through its mypy-protobuf stubs, gRPC services included), and each
`# type: ignore[code]` says why on its own line. MAX_IGNORES is the count today: a new one needs
a reason good enough to raise it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_IGNORES = 4
# An ignore names its error code(s), then a comment with the reason.
EXPLAINED = re.compile(r"# type: ignore\[[a-z-]+(, *[a-z-]+)*\]  # \S.{9,}")


def mypy_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]


def shipped_packages() -> list[str]:
    """The top-level packages the wheel ships (setuptools' include patterns)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]


def ignores() -> list[tuple[str, str]]:
    found = []
    for package in shipped_packages():
        for path in sorted((REPO / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "type: ignore" in line:
                    found.append((f"{path.relative_to(REPO)}:{number}", line.strip()))
    return found


def test_every_shipped_package_is_checked_with_strict_optional_and_nothing_left_out():
    config = mypy_config()
    assert sorted(config["files"]) == sorted(shipped_packages())
    assert config.get("strict_optional", True) is True
    assert "exclude" not in config
    ours = tuple(shipped_packages())
    for override in config.get("overrides", []):
        assert "ignore_errors" not in override, override
        modules = (
            override["module"] if isinstance(override["module"], list) else [override["module"]]
        )
        if modules == ["cascade.v1.*"]:  # generated stubs: only their own ignores may go unused
            assert set(override) == {"module", "warn_unused_ignores"}, override
            continue
        # Only third-party libraries without type information may be imported unchecked.
        assert not [m for m in modules if m.split(".")[0] in ours], override


def test_type_ignores_are_few_and_each_names_its_code_and_reason():
    found = ignores()
    unexplained = [(where, line) for where, line in found if not EXPLAINED.search(line)]
    assert unexplained == [], "each needs [code] and '  # why' on the same line"
    assert len(found) <= MAX_IGNORES, "\n".join(f"{w}: {line}" for w, line in found)
