"""Named profiles: one served configuration per file, deploy/profiles/<name>.toml.

A profile holds every setting that differs from the services' defaults: one table per service
([gateway], [recall], [prerank], [rank], [rerank], each shaped like that service's settings) and
[train] for the settings that shape a bundle. It is the layer just above the defaults
(cascade.config); a settings file, the environment and the command line stay above it. A service
reads the profile files CASCADE_PROFILE_FILE lists (os.pathsep between two: a named evaluation
profile on top of the served one); `cascade up --profile NAME`, compose and the Kubernetes
overlays set it. Its identity is its name and the sha256 of its bytes, recorded in every report.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade.config import Layer, SettingsError
from cascade.topology import SERVICES

PROFILE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "profiles"
# Evaluation profiles: what an evaluation changes on top of the profile it serves (never served
# on their own, so no deployment overlay is generated for them).
EVALUATION_DIR = PROFILE_DIR / "evaluation"
PROFILE_VARIABLE = "CASCADE_PROFILE_FILE"  # the profile file(s) a service reads
DEFAULT = "default"  # the services' defaults, as a profile
TRAIN = "train"  # the table of training settings
# The table about the profile itself: name = "<the file's stem>", description = "...".
ABOUT = "profile"
SECTIONS = (ABOUT, TRAIN, *SERVICES)


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    tables: Mapping[str, Mapping[str, Any]]  # section -> its settings
    sha256: str  # of the file's bytes: two runs that record the same hash served the same file

    @property
    def description(self) -> str:
        return str(self.tables.get(ABOUT, {}).get("description", ""))

    def section(self, name: str) -> Mapping[str, Any]:
        return self.tables.get(name, {})

    def layer(self, service: str) -> Layer:
        """The service's table as a settings layer labelled with the profile and its file."""
        return f"profile {self.name} ({_shown(self.path)}) [{service}]", self.section(service)

    def record(self) -> dict[str, str]:
        """What a report records: which profile, and exactly which content."""
        return {"name": self.name, "sha256": self.sha256, "file": _shown(self.path)}


def load_profile(name: str | Path, directory: Path = PROFILE_DIR) -> Profile:
    """The profile called `name` (DIRECTORY/<name>.toml) or in the file `name` (a path ending in
    .toml); SettingsError names the file and what is wrong with it."""
    by_path = str(name).endswith(".toml")
    path = Path(name) if by_path else directory / f"{name}.toml"
    if not path.is_file():
        known = "" if by_path else f" (profiles: {', '.join(profile_names(directory)) or 'none'})"
        raise SettingsError(f"no profile {str(name)!r}: no file {path}{known}")
    raw = path.read_bytes()
    try:
        tables = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise SettingsError(f"profile file {path}: not TOML: {error}") from error
    for section, table in tables.items():
        if section not in SECTIONS:
            raise SettingsError(
                f"profile file {path}: unknown section [{section}]; known: {', '.join(SECTIONS)}"
            )
        if not isinstance(table, dict):
            raise SettingsError(f"profile file {path}: {section} must be a [{section}] table")
    # A mounted copy keeps the name it states (a ConfigMap key is always profile.toml).
    name = str(tables.get(ABOUT, {}).get("name", path.stem))
    return Profile(name, path, tables, hashlib.sha256(raw).hexdigest())


def evaluation_profile(name: str) -> Profile:
    """A named evaluation profile (deploy/profiles/evaluation/<name>.toml)."""
    return load_profile(name, EVALUATION_DIR)


def profile_names(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(path.stem for path in directory.glob("*.toml"))


def default_profile(dataset: str) -> str:
    """The profile `cascade up --dataset D` serves: the one named after the dataset when there
    is one, else the services' defaults."""
    return dataset if (PROFILE_DIR / f"{dataset}.toml").is_file() else DEFAULT


def variable(profiles: Sequence[Profile]) -> dict[str, str]:
    """The environment that makes a service read `profiles` (later files win)."""
    return {PROFILE_VARIABLE: os.pathsep.join(str(p.path.resolve()) for p in profiles)}


def from_environment(environ: Mapping[str, str]) -> list[Profile]:
    """The profiles CASCADE_PROFILE_FILE names (none when it is unset or empty)."""
    paths = [p for p in environ.get(PROFILE_VARIABLE, "").split(os.pathsep) if p]
    return [load_profile(Path(path)) for path in paths]


def layers(profiles: Sequence[Profile], service: str) -> list[Layer]:
    return [profile.layer(service) for profile in profiles]


def _shown(path: Path) -> str:
    """The path from the repository root when it lies inside it, else as given."""
    try:
        return str(path.resolve().relative_to(PROFILE_DIR.parents[1]))
    except ValueError:
        return str(path)
