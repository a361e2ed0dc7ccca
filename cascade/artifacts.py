"""Versioned artifact bundles: what training writes and serving loads.

    artifacts/<version>/manifest.json      versions, metrics, sha256 of every file
    artifacts/<version>/<component>/...    ONNX files, npz arrays, FAISS indexes, JSON
    artifacts/current -> .pins/<sha256>    the bundle services load (swapped atomically) ...
    artifacts/.pins/<sha256> -> ../<version>   ... pinned by its manifest's sha256

No pickle anywhere: ONNX, npz (loaded with allow_pickle=False), FAISS files and JSON. A service
only opens files the manifest lists, after checking their sha256, so a truncated or tampered file
is refused with a message naming it. The manifest itself is checked against the hash `publish`
put in the `current` link, so an edited manifest (listing a swapped file's new checksum) is
refused too; one atomic link flip carries both the version and its hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from cascade.files import write_atomic

MANIFEST = "manifest.json"
CURRENT = "current"
PINS = ".pins"


class ArtifactError(RuntimeError):
    """A bundle, component or file is missing, unlisted or does not match its checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_version() -> str:
    """A sortable version name: UTC time to the second."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class BundleWriter:
    """Adds components to a bundle folder; `commit()` writes the manifest.

    Writing into an existing version keeps its other components (rank, then a prerank distilled
    from it, can land in one bundle).
    """

    def __init__(self, root: Path, version: str | None = None):
        self.version = version or new_version()
        self.folder = Path(root) / self.version
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest_path = self.folder / MANIFEST
        self.manifest: dict[str, Any] = (
            json.loads(manifest_path.read_text())
            if manifest_path.exists()
            else {"version": self.version, "components": {}, "files": {}}
        )

    def path(self, component: str, name: str) -> Path:
        """Where to write a file; call add() afterwards (or use the save_* helpers). A file there
        already is unlinked first: in a `clone` it is a hard link, and writing through it would
        change the source bundle's file too."""
        target = self.folder / component / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        return target

    def add(self, component: str, name: str) -> Path:
        """Records an already written file with its checksum."""
        target = self.folder / component / name
        relative = f"{component}/{name}"
        self.manifest["files"][relative] = {
            "sha256": _sha256(target),
            "bytes": target.stat().st_size,
        }
        return target

    def save_npz(self, component: str, name: str, **arrays: np.ndarray) -> Path:
        with self.path(component, name).open("wb") as handle:
            np.savez(handle, allow_pickle=True, **arrays)  # numpy's default, named for mypy
        return self.add(component, name)

    def save_json(self, component: str, name: str, value: object) -> Path:
        self.path(component, name).write_text(json.dumps(value, indent=2))
        return self.add(component, name)

    def set_component(self, component: str, info: dict) -> None:
        """Component metadata: its version, metrics, feature spec fingerprint, parents, ..."""
        self.manifest["components"][component] = {"created": new_version(), **info}

    def commit(self) -> Path:
        write_atomic(self.folder / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True))
        return self.folder


def clone(root: Path, version: str, new_version: str) -> Path:
    """Bundle `version` again as `new_version`: the same files (hard links where the filesystem
    allows) under a manifest naming the new version. Publishing it rolls the same models out
    as a new version, which is how hot reload is rehearsed (bench/faults.py)."""
    root = Path(root)
    source, target = Bundle.open(root, version).folder, root / new_version
    if target.exists():
        raise ArtifactError(f"{target} exists: pick another version")
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.name != MANIFEST:
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)
    manifest = json.loads((source / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps({**manifest, "version": new_version}, indent=2))
    return target


def publish(root: Path, version: str) -> str:
    """Points artifacts/current at a version atomically (readers see the old or the new one),
    pinned by the sha256 of its manifest as it is now; returns that hash."""
    root = Path(root)
    manifest = root / version / MANIFEST
    if not manifest.exists():
        raise ArtifactError(f"{root / version} has no {MANIFEST}: nothing to publish")
    digest = _sha256(manifest)
    pin = root / PINS / digest
    pin.parent.mkdir(exist_ok=True)
    _replace_link(pin, Path("..") / version)
    _replace_link(root / CURRENT, Path(PINS) / digest)
    return digest


def _replace_link(link: Path, target: Path) -> None:
    temporary = link.parent / f".{link.name}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)


def pinned_sha256(link: Path) -> str | None:
    """The manifest hash a published link carries (current -> .pins/<sha256>); None for a
    plain version folder or a link from before pinning."""
    try:
        target = Path(os.readlink(link))
    except OSError:
        return None
    if target.parent == Path(PINS) and len(target.name) == 64:
        return target.name
    return None


class Bundle:
    """A read-only, checksum-verified bundle."""

    def __init__(self, folder: Path, pinned: str | None = None):
        """`pinned`: the sha256 the manifest must have (what `publish` pinned)."""
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        try:
            data = manifest_path.read_bytes()
            if pinned is not None and hashlib.sha256(data).hexdigest() != pinned:
                raise ArtifactError(
                    f"{manifest_path} does not match the sha256 {pinned[:12]}... it was "
                    "published with: edited after publishing? publish it again to trust it"
                )
            self.manifest = json.loads(data)
        except FileNotFoundError:
            raise ArtifactError(
                f"{manifest_path} is missing: train the models first (`cascade train`)"
            ) from None
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{manifest_path} is corrupt: {error}") from None
        self.version = self.manifest["version"]

    @classmethod
    def open(cls, root: Path, name: str = CURRENT) -> Bundle:
        """Opens artifacts/<name> (default: the published one, checked against its pin)."""
        path = Path(root) / name
        return cls(path.resolve(), pinned_sha256(path))

    def component(self, component: str) -> dict:
        try:
            return self.manifest["components"][component]
        except KeyError:
            raise ArtifactError(
                f"bundle {self.folder} has no {component!r} component "
                f"(it has {sorted(self.manifest['components'])})"
            ) from None

    def file(self, component: str, name: str) -> Path:
        """The path of a listed file whose checksum matches; ArtifactError otherwise."""
        relative = f"{component}/{name}"
        listed = self.manifest["files"].get(relative)
        if listed is None:
            raise ArtifactError(f"{relative} is not listed in {self.folder / MANIFEST}")
        path = self.folder / relative
        if not path.exists():
            raise ArtifactError(f"{path} is listed in the manifest but missing")
        if _sha256(path) != listed["sha256"]:
            raise ArtifactError(f"{path} does not match its sha256 in the manifest")
        return path

    def load_npz(self, component: str, name: str) -> dict[str, np.ndarray]:
        with np.load(self.file(component, name), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}

    def load_json(self, component: str, name: str) -> Any:  # a JSON document
        return json.loads(self.file(component, name).read_text())


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir and --artifacts: the same three options on every stage's training
    command, so `cascade train all` passes one set to each."""
    parser.add_argument(
        "--dataset",
        default="ml-100k",
        help="ml-100k, synthetic or an imported dataset (default: ml-100k)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="where bundles live (default: artifacts)",
    )
