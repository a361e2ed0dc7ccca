"""Typed settings: a frozen dataclass per service, read once at start-up.

Layers, later wins: the dataclass defaults, the profile (cascade.profiles: the service's table of
a named profile file), a JSON or TOML settings file, environment variables (`<PREFIX><FIELD>`,
e.g. CASCADE_RANK_PORT; a nested dataclass adds its field name: CASCADE_RANK_SERVER_PORT), then
the command line (`--set KEY=VALUE`). `explain_settings` says which layer gave each value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Secret:
    """A credential (API token, caller token) that never prints: repr and str show `***`, so
    logging or printing the settings cannot leak it. `reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret = ""):
        self._value = str(value.reveal() if isinstance(value, Secret) else value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the field and where its value came from."""


COMMAND_LINE = "command line"
Layer = tuple[str, Mapping[str, Any]]  # (where the values come from, the values)


def load_settings(
    cls: type[T],
    path: Path | str | None = None,
    env_prefix: str = "CASCADE_",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    profiles: Sequence[Layer] = (),
) -> T:
    """Build `cls` from its defaults, then `profiles` (each a labelled table, in order), then
    `path`, then the environment, then `overrides` (the command line)."""
    return _build(cls, _layers(cls, path, env_prefix, overrides, environ, profiles), name="")


@dataclass(frozen=True)
class Setting:
    """One resolved setting: its dotted name, its value and the layer that gave it."""

    name: str  # e.g. "item_cf.quota"
    value: Any
    source: str  # "default", "profile <name> (<file>)", "file <path>",
    # "environment <VARIABLE>" or "command line"


def explain_settings(
    cls: type[T],
    path: Path | str | None = None,
    env_prefix: str = "CASCADE_",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    profiles: Sequence[Layer] = (),
) -> tuple[T, list[Setting]]:
    """The settings `load_settings` builds from the same layers, and each leaf setting with the
    layer its value came from (the last layer that names it, else "default")."""
    layers = _layers(cls, path, env_prefix, overrides, environ, profiles)
    settings = _build(cls, layers, name="")
    rows = []
    for name, _tp, value in leaves(settings):
        source = "default"
        for label, layer in layers:
            found = _lookup(layer, name.split("."))
            if found is not _MISSING:
                source = _where(found, label)
        rows.append(Setting(name, value, source))
    return settings, rows


def leaves(settings: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted name, type, value) of every leaf field of a settings object, in field order."""
    for field, tp in _fields(type(settings)):
        value = getattr(settings, field.name)
        if _is_settings(tp):
            yield from leaves(value, f"{prefix}{field.name}.")
        else:
            yield prefix + field.name, tp, value


def assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs from a command line as the nested table a settings file would hold
    (`server.port=50051` -> {"server": {"port": "50051"}}); SettingsError names a bad pair."""
    table: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set {pair!r}: expected KEY=VALUE, e.g. server.port=50051")
        *parents, leaf = key.strip().split(".")
        node = table
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"--set {pair!r}: {part} is set both as a value and a table")
        node[leaf] = value
    return table


def format_settings(rows: Sequence[Setting]) -> str:
    """One line per setting: name, value, source (secrets print as ***)."""
    width = max((len(row.name) for row in rows), default=0)
    shown = [(row, _shown(row.value)) for row in rows]
    value_width = min(max((len(text) for _, text in shown), default=0), 40)
    return "\n".join(
        f"{row.name:<{width}}  {text:<{value_width}}  {row.source}" for row, text in shown
    )


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return '""' if value == "" else str(value)


_MISSING = object()


def _lookup(layer: Mapping[str, Any], path: list[str]) -> Any:
    node: Any = layer
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _layers(
    cls: type,
    path: Path | str | None,
    env_prefix: str,
    overrides: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None,
    profiles: Sequence[Layer],
) -> list[Layer]:
    layers: list[Layer] = list(profiles)
    if path is not None:
        layers.append((f"file {path}", _read_file(Path(path))))
    env = os.environ if environ is None else environ
    layers.append(("environment", _from_env(cls, env_prefix.upper(), env)))
    if overrides:
        layers.append((COMMAND_LINE, overrides))
    return layers


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as error:
        raise SettingsError(f"cannot read settings file {path}: {error}") from error
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must hold an object/table at the top level")
    return data


def _from_env(cls: type, prefix: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The environment's values for `cls` as a nested dict of strings (only known names are read:
    several settings classes share one environment)."""
    values: dict[str, Any] = {}
    for field, tp in _fields(cls):
        var = f"{prefix}{field.name.upper()}"
        if _is_settings(tp):
            nested = _from_env(tp, var + "_", env)
            if nested:
                values[field.name] = nested
        elif var in env:
            values[field.name] = _EnvValue(var, env[var])
    return values


class _EnvValue(str):
    """A string from the environment that remembers its variable, for error messages."""

    var: str

    def __new__(cls, var: str, value: str) -> _EnvValue:
        self = super().__new__(cls, value)
        self.var = var
        return self


def _build(
    cls: type[T], layers: list[tuple[str, Mapping[str, Any]]], name: str, base: Any = None
) -> T:
    """`base`: the value the fields start from (a nested field's default), else cls's defaults."""
    types_by_name = {field.name: tp for field, tp in _fields(cls)}
    for source, layer in layers:
        unknown = sorted(set(layer) - set(types_by_name))
        if unknown:
            raise SettingsError(
                f"unknown setting {name + unknown[0]!r} in {source}; "
                f"known: {', '.join(name + n for n in sorted(types_by_name))}"
            )
    kwargs: dict[str, Any] = {}
    origins: dict[str, str] = {}  # field -> "name=value from <where>", for error messages
    for field_name, tp in types_by_name.items():
        qualified = name + field_name
        if _is_settings(tp):
            nested = []
            for source, layer in layers:
                if field_name in layer:
                    value = layer[field_name]
                    if not isinstance(value, Mapping):
                        raise SettingsError(f"{qualified} in {source} must be a table/object")
                    nested.append((source, value))
            if nested:
                # Start from the parent's default for this field (e.g. a stage's own ports), not
                # from the nested class's bare defaults.
                start = _nested_default(cls, field_name, base)
                kwargs[field_name] = _build(tp, nested, qualified + ".", start)
            continue
        for source, layer in layers:
            if field_name in layer:
                kwargs[field_name] = _convert(layer[field_name], tp, qualified, source)
                origins[field_name] = (
                    f"{qualified}={layer[field_name]} from {_where(layer[field_name], source)}"
                )
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as error:
        # A cross-field rule (__post_init__) failed: name every value that was set, and where
        # from, so the operator finds the variable to fix.
        given = "; ".join(origins[name] for name in sorted(origins)) or "defaults only"
        raise SettingsError(f"invalid settings {cls.__name__}: {error} (set: {given})") from error


def _where(value: Any, source: str) -> str:
    return f"environment variable {value.var}" if isinstance(value, _EnvValue) else source


def _nested_default(cls: type, field_name: str, base: Any) -> Any:
    if base is not None:
        return getattr(base, field_name)
    field = next(f for f in dataclasses.fields(cls) if f.name == field_name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _convert(value: Any, tp: Any, name: str, source: str) -> Any:
    where = _where(value, source)
    try:
        return _coerce(value, tp)
    except (TypeError, ValueError) as error:
        shown = "***" if tp is Secret else repr(value)  # a bad secret is still a secret
        raise SettingsError(
            f"bad value {shown} for setting {name!r} ({_type_name(tp)}) from {where}: {error}"
        ) from error


def _coerce(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError("only `X | None` unions are supported")
        return _coerce(value, inner[0])
    if origin is tuple:
        items = (
            [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        )
        if not isinstance(items, list | tuple):
            raise TypeError("expected a list")
        item_type = args[0] if args else str
        return tuple(_coerce(item, item_type) for item in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
    if tp is int:
        if isinstance(value, bool) or isinstance(value, float):
            raise TypeError("expected an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError("expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return str(value)
    if tp is Secret:
        if not isinstance(value, str | Secret):
            raise TypeError("expected a string")
        return Secret(value)
    if tp is Path:
        if not isinstance(value, str | Path):
            raise TypeError("expected a path")
        return Path(value)
    raise TypeError(f"unsupported setting type {_type_name(tp)}")


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)
