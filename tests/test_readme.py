"""The README is a guide a newcomer trusts: its funnel picture shows the gateway's default cuts,
and every relative link in it (and in docs/) points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_pictures_funnel_is_the_gateways_default() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = [int(n) for n in re.findall(r"~(\d+) ids", readme.split("```")[1])]
    defaults = GatewaySettings()
    assert shown == [defaults.recall_count, defaults.prerank_count, defaults.rank_count]


def test_relative_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target in LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, broken
