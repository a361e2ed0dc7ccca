"""Data sources in one common schema: real MovieLens-100K, a seeded synthetic UGC world, and any
dataset a user brought with `cascade data import` (cascade/data/import_cli.py).

prepare("ml-100k", Path("data"))     # fetch + convert + save (idempotent)
dataset = load_dataset("ml-100k", Path("data"))
"""

from __future__ import annotations

from pathlib import Path

from cascade.data.schema import DataError, Dataset, load, save

SOURCES = ("ml-100k", "synthetic")

__all__ = ["SOURCES", "DataError", "Dataset", "dataset_folder", "load_dataset", "prepare"]


def load_dataset(name: str, data_dir: Path) -> Dataset:
    """Loads a prepared or imported dataset (data_dir/<name>/); raises DataError naming the
    missing file and the fixing command."""
    return load(dataset_folder(name, data_dir))


def dataset_folder(name: str, data_dir: Path) -> Path:
    """data_dir/<name>/ for a built-in source (prepared on demand) or an imported dataset that is
    there; DataError saying how to get it otherwise (a command checks its names before work)."""
    folder = Path(data_dir) / name
    if name not in SOURCES and (Path(name).name != name or not folder.is_dir()):
        raise DataError(
            f"no dataset {name!r} under {data_dir}: built-in sources are {', '.join(SOURCES)}; "
            f"bring your own with `cascade data import --name {name} ...`"
        )
    return folder


def prepare(name: str, data_dir: Path, **options) -> Dataset:
    """Builds a source into data_dir/<name>/ and returns it.

    ml-100k options: negatives_per_positive, seed. synthetic options: the fields of SyntheticConfig.
    """
    data_dir = Path(data_dir)
    if name == "ml-100k":
        from cascade.data import ml100k

        raw_dir = data_dir / "raw" / "ml-100k"
        ml100k.fetch_raw(raw_dir)
        dataset = ml100k.build(raw_dir, **options)
    elif name == "synthetic":
        from cascade.data import synthetic

        dataset = synthetic.generate(synthetic.SyntheticConfig(**options))
    else:
        raise DataError(f"unknown data source {name!r}; choose one of {', '.join(SOURCES)}")
    save(dataset, data_dir / name)
    return dataset
