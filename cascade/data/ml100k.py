"""MovieLens-100K in the common schema, obtained offline from the recbole==1.2.1 wheel.

The wheel carries RecBole's atomic files under recbole/dataset_example/ml-100k/. We download the
wheel with `pip download --no-deps` (never install recbole), unpack those five files, and map them:

* users: age, gender, occupation and a region from the first digit of the zip code;
* items: genres as categories; creator = the film's director from the .kg + .link files where known
  (first by id when a film has several); upload_ts = the item's first rating time, i.e. when it
  entered this catalog (release years predate the log);
* interactions: every rating is a play; rating >= 4 is a like; complete/share are unknown (false);
* impressions: every interaction as a positive (click = play = true, like as above) plus
  `negatives_per_positive` negatives at the same time, drawn uniformly from the items that had
  entered the catalog by then and that the user never rated. Positions are unknown (-1).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from cascade.data.schema import MAX_CATEGORIES, DataError, Dataset, fix_command

NAME = "ml-100k"
WHEEL = "recbole==1.2.1"
RAW_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item", "ml-100k.kg", "ml-100k.link")
_IN_WHEEL = "recbole/dataset_example/ml-100k/"


def fetch_raw(raw_dir: Path) -> None:
    """Unpacks the raw atomic files into raw_dir, downloading the wheel when they are missing."""
    if all((raw_dir / name).exists() for name in RAW_FILES):
        return
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            why = result.stderr.strip()[-300:]
            raise DataError(f"could not download {WHEEL} from the package index ({why})")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in RAW_FILES:
                (raw_dir / name).write_bytes(wheel.read(_IN_WHEEL + name))


def _read_atomic(path: Path) -> list[list[str]]:
    """Rows of a RecBole atomic file (tab-separated, one header line), header dropped."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    except FileNotFoundError:
        raise DataError(f"{path} is missing: run `{fix_command(NAME)}`") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise _corrupt(path, error) from None
    if not rows or not rows[0] or ":" not in rows[0][0]:
        raise _corrupt(path, "no RecBole header line")
    return [row for row in rows[1:] if row]


def _corrupt(path: Path, why: object) -> DataError:
    return DataError(
        f"{path} is corrupt ({why}): delete {path.parent} and run `{fix_command(NAME)}`"
    )


def _columns(path: Path, rows: list[list[str]], n: int) -> list[list[str]]:
    if any(len(row) < n for row in rows):
        raise _corrupt(path, f"a row has fewer than {n} columns")
    return [[row[i] for row in rows] for i in range(n)]


def build(raw_dir: Path, negatives_per_positive: int = 4, seed: int = 0) -> Dataset:
    """Maps the raw files in raw_dir to the common schema."""
    try:
        users, occupations = _users(raw_dir / "ml-100k.user")
        interactions = _interactions(raw_dir / "ml-100k.inter")
        items, categories, creators = _items(raw_dir, interactions)
    except ValueError as error:  # a number that does not parse
        raise DataError(
            f"a file under {raw_dir} is corrupt ({error}): run `{fix_command(NAME)}`"
        ) from None
    rng = np.random.default_rng(seed)
    impressions = sample_impressions(interactions, items, negatives_per_positive, rng)
    meta = {
        "name": NAME,
        "categories": categories,
        "occupations": occupations,
        "tasks": ["play", "like"],
        "description": "MovieLens-100K (ratings as plays, rating >= 4 as likes), from " + WHEEL,
        "negatives_per_positive": negatives_per_positive,
    }
    empty = np.zeros(0, dtype=np.int64)
    follows = {"follower_id": empty, "followee_id": empty, "ts": empty}
    return Dataset(users, items, creators, follows, interactions, impressions, meta)


def _users(path: Path) -> tuple[dict, list[str]]:
    user_id, age, gender, occupation, zip_code = _columns(path, _read_atomic(path), 5)
    occupations = ["unknown"] + sorted(set(occupation) - {"unknown"})
    first_digit = [z[:1] for z in zip_code]
    users = {
        "user_id": np.array(user_id, dtype=np.int64),
        "age": np.array(age, dtype=np.int16),
        "gender": np.array([{"M": 1, "F": 2}.get(g, 0) for g in gender], dtype=np.int8),
        "occupation": np.array([occupations.index(o) for o in occupation], dtype=np.int16),
        # zip codes starting with a letter (Canada) and malformed ones are "unknown".
        "region": np.array([int(d) + 1 if d.isdigit() else 0 for d in first_digit], np.int32),
    }
    return users, occupations


def _interactions(path: Path) -> dict:
    user_id, item_id, rating, ts = _columns(path, _read_atomic(path), 4)
    rating_array = np.array(rating, dtype=np.float32)
    n = len(rating_array)
    return {
        "user_id": np.array(user_id, dtype=np.int64),
        "item_id": np.array(item_id, dtype=np.int64),
        "ts": np.array(ts, dtype=np.float64).astype(np.int64),
        "play": np.ones(n, dtype=bool),
        "complete": np.zeros(n, dtype=bool),
        "like": rating_array >= 4,
        "share": np.zeros(n, dtype=bool),
        "rating": rating_array,
    }


def _directors(raw_dir: Path) -> dict[int, str]:
    """item id -> director entity, from the knowledge graph."""
    link_path, kg_path = raw_dir / "ml-100k.link", raw_dir / "ml-100k.kg"
    item_of_entity = {e: int(i) for i, e in _read_atomic(link_path) if i.isdigit()}
    directors: dict[int, str] = {}
    for row in _read_atomic(kg_path):
        if len(row) < 3:
            raise _corrupt(kg_path, "a row has fewer than 3 columns")
        head, relation, tail = row[:3]
        if relation == "film.film.directed_by" and head in item_of_entity:
            item = item_of_entity[head]
            directors[item] = min(directors.get(item, tail), tail)
    return directors


def _items(raw_dir: Path, interactions: dict) -> tuple[dict, list[str], dict]:
    path = raw_dir / "ml-100k.item"
    item_id, title, _year, genres = _columns(path, _read_atomic(path), 4)
    ids = np.array(item_id, dtype=np.int64)
    genre_lists = [g.split() for g in genres]
    categories = ["none"] + sorted({g for gs in genre_lists for g in gs})
    category_matrix = np.zeros((len(ids), MAX_CATEGORIES), dtype=np.int16)
    for row, gs in enumerate(genre_lists):
        codes = [categories.index(g) for g in gs][:MAX_CATEGORIES]
        category_matrix[row, : len(codes)] = codes

    directors = _directors(raw_dir)
    names = sorted(set(directors.values()))
    creator_of_name = {name: i + 1 for i, name in enumerate(names)}
    creator_id = np.array([creator_of_name.get(directors.get(i, ""), 0) for i in ids.tolist()])

    # An item enters the catalog with its first rating; never-rated items exist from the start.
    first_seen = np.full(ids.max() + 1, interactions["ts"].min(), dtype=np.int64)
    order = np.argsort(interactions["ts"], kind="stable")[::-1]  # latest first, earliest wins
    first_seen[interactions["item_id"][order]] = interactions["ts"][order]
    items = {
        "item_id": ids,
        "creator_id": creator_id.astype(np.int64),
        "categories": category_matrix,
        "upload_ts": first_seen[ids],
        "title": np.array(title, dtype=object),
    }
    creators = {
        "creator_id": np.arange(1, len(names) + 1, dtype=np.int64),
        "user_id": np.zeros(len(names), dtype=np.int64),
        "name": np.array(names, dtype=object),
    }
    return items, categories, creators


def sample_impressions(interactions: dict, items: dict, k: int, rng: np.random.Generator) -> dict:
    """Positives plus k negatives per positive from the items in the catalog at that time (any
    source without an impression log: ml-100k, an imported dataset)."""
    users, ts = interactions["user_id"], interactions["ts"]
    by_upload = np.argsort(items["upload_ts"], kind="stable")
    upload_sorted = items["upload_ts"][by_upload]
    n_items = int(items["item_id"].max()) + 1
    consumed = PairSet(users * n_items + interactions["item_id"])

    neg_users, neg_ts = np.repeat(users, k), np.repeat(ts, k)
    # The items in the catalog by then, counted once per positive (its k negatives share it).
    eligible = np.repeat(np.searchsorted(upload_sorted, ts, side="right"), k)
    neg_items = np.zeros(len(neg_users), dtype=np.int64)
    todo = np.arange(len(neg_users))
    for _ in range(20):  # rejection sampling; a handful of rounds empties `todo` in practice
        draw = items["item_id"][by_upload[(rng.random(len(todo)) * eligible[todo]).astype(int)]]
        rejected = consumed.contains(neg_users[todo] * n_items + draw)
        neg_items[todo[~rejected]] = draw[~rejected]
        todo = todo[rejected]
        if len(todo) == 0:
            break
    keep = neg_items > 0
    n_pos, n_neg = len(users), int(keep.sum())
    false = np.zeros(n_neg, dtype=bool)
    return {
        "user_id": np.r_[users, neg_users[keep]],
        "item_id": np.r_[interactions["item_id"], neg_items[keep]],
        "ts": np.r_[ts, neg_ts[keep]],
        "position": np.full(n_pos + n_neg, -1, dtype=np.int16),
        "click": np.r_[np.ones(n_pos, dtype=bool), false],
        "play": np.r_[np.ones(n_pos, dtype=bool), false],
        "complete": np.r_[interactions["complete"], false],
        "like": np.r_[interactions["like"], false],
        "share": np.r_[interactions["share"], false],
    }


class PairSet:
    """A set of non-negative int64 keys (user * n_items + item) answering membership for many
    keys at once. A byte per slot of a table 16x the set's size marks the slots the keys hash to
    (multiplicative hashing): a key whose slot is unmarked is out at the cost of one lookup, and
    only the few whose slot is marked (the members and about 1 in 16 of the rest) are searched
    exactly in the sorted keys, which costs a fraction of sorting every batch of keys to search
    them all."""

    MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd

    def __init__(self, keys: np.ndarray) -> None:
        keys = np.sort(keys)
        self.keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys  # unique
        self.bits = max(int(len(self.keys) * 16).bit_length(), 10)
        self.marked = np.zeros(1 << self.bits, dtype=bool)
        self.marked[self._slot(self.keys)] = True

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return (keys.astype(np.uint64) * self.MULTIPLIER) >> np.uint64(64 - self.bits)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of `keys` is in the set."""
        found = self.marked[self._slot(keys)]
        maybe = np.flatnonzero(found)
        if len(maybe):
            candidates = keys[maybe]
            at = np.minimum(np.searchsorted(self.keys, candidates), len(self.keys) - 1)
            found[maybe] = self.keys[at] == candidates
        return found
