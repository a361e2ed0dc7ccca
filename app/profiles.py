"""What a profile (cascade.profiles) means to the application: every service's settings resolved
from it and checked before any process starts, the training settings it gives a bundle, and the
settings a harness would serve that the profile does not say.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.stages import SERVER_MODULES
from cascade import profiles as profile_files
from cascade.artifacts import ArtifactError, Bundle
from cascade.config import Setting, SettingsError, load_settings
from cascade.profiles import TRAIN, Profile
from services.recall.tables import CF_MODELS, TableSettings

ENVIRONMENT = "environment variable "  # how cascade.config labels a value from the environment


@dataclass(frozen=True)
class TrainSettings:
    """The [train] table: settings that shape the bundle `cascade train all --profile` builds."""

    # recall's item-CF table: "co_consumption" or "ease" (EASE's item-item weights; `cascade
    # train recall --item-cf`), recorded in the bundle and kept by the daily retrain.
    item_cf: str = TableSettings.cf_model

    def __post_init__(self) -> None:
        if self.item_cf not in CF_MODELS:
            raise ValueError(f"item_cf must be one of {CF_MODELS}, got {self.item_cf!r}")

    def arguments(self, stage: str) -> list[str]:
        """The stage's `cascade train <stage>` options that give a bundle these settings."""
        return ["--item-cf", self.item_cf] if stage == "recall" else []

    def matches(self, artifacts: Path, bundle: str = "current") -> bool:
        """Whether `bundle` was built with these settings."""
        try:
            recall = Bundle.open(artifacts, bundle).component("recall")
        except (ArtifactError, OSError, KeyError, ValueError):
            return False
        tables = recall.get("tables", {}).get("settings", {})
        return bool(TableSettings.from_dict(tables).cf_model == self.item_cf)


def settings_class(service: str) -> type:
    """The settings dataclass of the service's StageServer declaration."""
    return server(service).settings


def server(service: str) -> Any:
    return importlib.import_module(SERVER_MODULES[service]).SERVER


def train_settings(profiles: Sequence[Profile]) -> TrainSettings:
    """The profiles' [train] tables over the defaults; SettingsError names the file and key."""
    layers = [profile.layer(TRAIN) for profile in profiles]
    return load_settings(TrainSettings, environ={}, profiles=layers)


def resolve_services(
    profiles: Sequence[Profile],
    environments: Mapping[str, Mapping[str, str]],
) -> dict[str, list[Setting]]:
    """Every named service's settings, as it would resolve them from `profiles` and its
    environment, and the [train] table: SettingsError naming every service (file, key, reason)
    that could not start, before any does."""
    errors, rows = [], {}
    try:
        train_settings(profiles)
    except SettingsError as error:
        errors.append(f"train: {error}")
    for service, environ in environments.items():
        overlay = {**environ, **profile_files.variable(profiles)}
        try:
            rows[service] = server(service).resolve(environ=overlay)[1]
        except SettingsError as error:
            errors.append(f"{service}: {error}")
    if errors:
        raise SettingsError("; ".join(errors))
    return rows


def foreign_settings(
    rows: Mapping[str, Sequence[Setting]], wiring: Mapping[str, Collection[str]]
) -> list[str]:
    """Settings a service would take from an environment variable that the harness did not set
    itself (its wiring: ports, paths, clock, arms): what the served profile does not say."""
    out = []
    for service, settings in rows.items():
        for setting in settings:
            variable = setting.source.removeprefix(ENVIRONMENT)
            if setting.source.startswith(ENVIRONMENT) and variable not in wiring[service]:
                value = os.environ.get(variable, setting.value)
                out.append(f"{variable}={value} ({service}.{setting.name})")
    return out
