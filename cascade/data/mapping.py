"""The mapping file of `cascade data import`: which file and column is the user, the item, the time.

A TOML file with one table per input ([interactions] required; [items], [users], [follows], [kg]
and [options] optional). Paths are relative to the mapping file. RecBole atomic files need no
mapping: `recbole_mapping` derives one from the typed headers, and a mapping file may override it.
See examples/tiny-music/mapping.toml for every key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from cascade.data.schema import DataError
from cascade.data.tabular import Source

FLAGS = ("play", "complete", "like", "share")


@dataclass
class Interactions:
    source: Source
    user: str
    item: str
    time: str
    time_format: str = "unix"
    event: str | None = None  # a column whose values say what happened
    events: dict[str, list[str]] = field(default_factory=dict)  # flag -> the values meaning it
    rating: str | None = None
    like_threshold: float = 4.0  # rating >= this is a like


@dataclass
class Items:
    source: Source
    item: str
    title: str | None = None
    creator: str | None = None
    categories: str | None = None
    category_delimiter: str = "|"
    upload_time: str | None = None
    upload_time_format: str = "unix"
    content: str | None = None  # a column of content vectors: floats joined by the delimiter
    content_delimiter: str = " "


@dataclass
class Users:
    source: Source
    user: str
    age: str | None = None
    gender: str | None = None
    occupation: str | None = None
    region: str | None = None
    region_prefix: int = 0  # keep the first N characters (a coarse region from a postal code)
    region_pattern: str = ""  # tokens not matching this regular expression are "unknown"


@dataclass
class Follows:
    source: Source
    follower: str
    followee: str
    time: str | None = None
    time_format: str = "unix"


@dataclass
class KnowledgeGraph:
    """RecBole .kg (head, relation, tail) + .link (item, entity): an item's creator is the smallest
    tail of `creator_relation` from its entity (ml-100k: film.film.directed_by)."""

    kg: Source
    link: Source
    creator_relation: str


@dataclass
class Mapping:
    interactions: Interactions
    items: Items | None = None
    users: Users | None = None
    follows: Follows | None = None
    kg: KnowledgeGraph | None = None
    negatives_per_positive: int = 4  # sampled impressions per interaction (no impression log)
    seed: int = 0
    strict: bool = False  # what is otherwise dropped with a warning becomes an error
    creator_is_user: bool = False  # a creator key that is also a user key is that user's account
    description: str = ""


def _section(cls, table: dict, where: str, source: Source | None, base: Path):
    """One dataclass from its TOML table; unknown keys are errors (a typo must not pass)."""
    table = dict(table)
    known = {f.name for f in fields(cls)} - {"source"}
    unknown = set(table) - known - {"file", "format", "delimiter"}
    if unknown:
        raise DataError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    path = table.pop("file", None)
    kind, delimiter = table.pop("format", None), table.pop("delimiter", None)
    if path is not None:
        source = Source.of(base / path, kind, delimiter)
    elif source is not None and delimiter is not None:
        source.delimiter = delimiter
    if source is None:
        raise DataError(f"{where}: `file` is required")
    if cls is Interactions:
        events = table.get("events", {})
        bad = set(events) - set(FLAGS)
        if bad:
            raise DataError(f"{where}.events: {sorted(bad)} are not among {', '.join(FLAGS)}")
        table["events"] = {k: [v] if isinstance(v, str) else list(v) for k, v in events.items()}
    try:
        return cls(source=source, **table)
    except TypeError as error:
        raise DataError(f"{where}: {error}") from None


def load_mapping(path: Path | None, recbole_dir: Path | None = None) -> Mapping:
    """The mapping file at `path`, over RecBole defaults when `recbole_dir` is given."""
    defaults = recbole_defaults(recbole_dir) if recbole_dir is not None else {}
    config: dict = {}
    base = Path(".")
    if path is not None:
        path = Path(path)
        base = path.parent
        try:
            config = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: no such mapping file") from None
        except tomllib.TOMLDecodeError as error:
            raise DataError(f"{path}: not valid TOML ({error})") from None
    options = config.pop("options", {})
    unknown_tables = set(config) - {"interactions", "items", "users", "follows", "kg"}
    if unknown_tables:
        raise DataError(f"{path}: unknown tables {sorted(unknown_tables)}")
    where = str(path) if path else str(recbole_dir)
    parts = {}
    for name, cls in (
        ("interactions", Interactions),
        ("items", Items),
        ("users", Users),
        ("follows", Follows),
    ):
        source, table = defaults.get(name, (None, {}))
        table = {**table, **config.get(name, {})}
        if name not in config and name not in defaults:
            continue
        parts[name] = _section(cls, table, f"{where} [{name}]", source, base)
    if "interactions" not in parts:
        raise DataError(f"{where}: an [interactions] table (file, user, item, time) is required")
    kg = {**defaults.get("kg", {}), **config.get("kg", {})}
    if kg.get("creator_relation"):
        if "kg" not in kg or "link" not in kg:
            raise DataError(f"{where} [kg]: creator_relation needs the .kg and .link files")
        parts["kg"] = KnowledgeGraph(
            Source.of(base / kg["kg"]), Source.of(base / kg["link"]), kg["creator_relation"]
        )
    known = {f.name for f in fields(Mapping)} - set(parts)
    if set(options) - known:
        raise DataError(f"{where} [options]: unknown keys {sorted(set(options) - known)}")
    return Mapping(**parts, **options)


def recbole_defaults(folder: Path) -> dict:
    """Sources and column roles from a RecBole dataset folder (NAME.inter, .user, .item, .kg,
    .link), chosen by RecBole's usual field names; a mapping file overrides any of them."""
    folder = Path(folder)
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        raise DataError(f"{folder}: expected one RecBole .inter file, found {len(inters)}")
    stem = inters[0].resolve().with_suffix("")
    out: dict = {}
    inter = Source.of(inters[0])
    names = inter.header()
    roles = {"user": "user_id", "item": "item_id", "time": "timestamp"}
    table = {role: name for role, name in roles.items() if name in names}
    if "rating" in names:
        table["rating"] = "rating"
    out["interactions"] = (inter, table)
    item_path = stem.with_suffix(".item")
    if item_path.exists():
        items = Source.of(item_path)
        names = items.header()
        table = {"item": "item_id"}
        title = [n for n in names if "title" in n or n == "name"]
        genre = [n for n in names if n in ("genre", "class", "categories", "category")]
        if title:
            table["title"] = title[0]
        if genre:
            table |= {"categories": genre[0], "category_delimiter": " "}
        out["items"] = (items, table)
    user_path = stem.with_suffix(".user")
    if user_path.exists():
        users = Source.of(user_path)
        names = users.header()
        table = {"user": "user_id"}
        table |= {n: n for n in ("age", "gender", "occupation") if n in names}
        out["users"] = (users, table)
    if stem.with_suffix(".kg").exists() and stem.with_suffix(".link").exists():
        out["kg"] = {"kg": str(stem.with_suffix(".kg")), "link": str(stem.with_suffix(".link"))}
    return out
