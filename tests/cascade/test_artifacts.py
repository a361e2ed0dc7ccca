"""Artifact bundles: checksums, atomic publish, no pickle."""

import numpy as np
import pytest

from cascade.artifacts import ArtifactError, Bundle, BundleWriter, clone, publish


def _bundle(root, version="v1"):
    writer = BundleWriter(root, version)
    writer.save_npz("rank", "vectors.npz", items=np.arange(6, dtype=np.float32).reshape(3, 2))
    writer.save_json("rank", "spec.json", {"fields": 3})
    writer.set_component("rank", {"version": version, "metrics": {"auc": 0.8}})
    writer.commit()
    return writer


def test_round_trip_through_current(tmp_path):
    _bundle(tmp_path, "v1")
    publish(tmp_path, "v1")
    bundle = Bundle.open(tmp_path)
    assert bundle.version == "v1"
    assert bundle.component("rank")["metrics"] == {"auc": 0.8}
    assert bundle.load_npz("rank", "vectors.npz")["items"][2].tolist() == [4.0, 5.0]
    assert bundle.load_json("rank", "spec.json") == {"fields": 3}


def test_publish_swaps_versions(tmp_path):
    _bundle(tmp_path, "v1")
    _bundle(tmp_path, "v2")
    publish(tmp_path, "v1")
    publish(tmp_path, "v2")
    assert Bundle.open(tmp_path).version == "v2"
    with pytest.raises(ArtifactError, match="nothing to publish"):
        publish(tmp_path, "v3")


def test_adding_a_component_keeps_the_others(tmp_path):
    _bundle(tmp_path, "v1")
    writer = BundleWriter(tmp_path, "v1")
    writer.save_json("prerank", "head.json", {"teacher": "v1"})
    writer.set_component("prerank", {"teacher_version": "v1"})
    writer.commit()
    bundle = Bundle(tmp_path / "v1")
    assert set(bundle.manifest["components"]) == {"rank", "prerank"}


def test_tampered_or_unlisted_files_are_refused(tmp_path):
    _bundle(tmp_path, "v1")
    bundle = Bundle(tmp_path / "v1")
    (tmp_path / "v1" / "rank" / "spec.json").write_text('{"fields": 4}')
    with pytest.raises(ArtifactError, match=r"spec\.json does not match its sha256"):
        bundle.load_json("rank", "spec.json")
    with pytest.raises(ArtifactError, match=r"rank/model\.onnx is not listed"):
        bundle.file("rank", "model.onnx")
    with pytest.raises(ArtifactError, match="no 'recall' component"):
        bundle.component("recall")


def test_pickled_arrays_are_refused(tmp_path):
    writer = BundleWriter(tmp_path, "v1")
    with writer.path("rank", "evil.npz").open("wb") as handle:
        np.savez(handle, objects=np.array([{"a": 1}], dtype=object))
    writer.add("rank", "evil.npz")
    writer.commit()
    with pytest.raises(ValueError, match="allow_pickle"):
        Bundle(tmp_path / "v1").load_npz("rank", "evil.npz")


def test_missing_bundle_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json is missing: train the models first"):
        Bundle.open(tmp_path)


def test_clone_bundles_the_same_files_as_a_new_version(tmp_path):
    writer = BundleWriter(tmp_path, "v1")
    writer.save_npz("rank", "table.npz", weights=np.arange(4))
    writer.set_component("rank", {"dataset": "tiny"})
    writer.commit()
    clone(tmp_path, "v1", "v2")
    copy = Bundle.open(tmp_path, "v2")
    assert copy.version == "v2"
    assert copy.component("rank") == Bundle.open(tmp_path, "v1").component("rank")
    assert copy.load_npz("rank", "table.npz")["weights"].tolist() == [0, 1, 2, 3]
    assert Bundle.open(tmp_path, "v1").version == "v1"
    with pytest.raises(ArtifactError, match="exists"):
        clone(tmp_path, "v1", "v2")


def test_the_published_manifest_is_pinned_by_its_sha256(tmp_path):
    """Swapping a file and listing its new checksum in the manifest passes the per-file check;
    the pin in `current` catches the edited manifest."""
    import hashlib
    import json
    import os

    _bundle(tmp_path, "v1")
    digest = publish(tmp_path, "v1")
    manifest = tmp_path / "v1" / "manifest.json"
    assert digest == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert os.readlink(tmp_path / "current") == f".pins/{digest}"
    assert Bundle.open(tmp_path).version == "v1"
    spec = tmp_path / "v1" / "rank" / "spec.json"
    spec.write_text('{"fields": 99}')
    edited = json.loads(manifest.read_text())
    edited["files"]["rank/spec.json"]["sha256"] = hashlib.sha256(spec.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        Bundle.open(tmp_path)
    # Named by its version (no pin) it opens: an operator's explicit choice. Publishing it
    # again is how an edited manifest becomes trusted.
    assert Bundle.open(tmp_path, "v1").load_json("rank", "spec.json") == {"fields": 99}
    publish(tmp_path, "v1")
    assert Bundle.open(tmp_path).load_json("rank", "spec.json") == {"fields": 99}
