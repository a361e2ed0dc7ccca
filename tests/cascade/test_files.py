"""write_atomic: a reader sees the old file or the new one, and a secret is never readable by
others, not even for the moment before a chmod."""

from __future__ import annotations

import stat

from cascade.files import write_atomic


def test_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, '{"pid": 1, "services": ["a long first version"]}')
    write_atomic(path, '{"pid": 2}')
    assert path.read_text() == '{"pid": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_bytes_and_owner_only_mode(tmp_path):
    path = tmp_path / "key.pem"
    write_atomic(path, b"\x00secret", mode=0o600)
    assert path.read_bytes() == b"\x00secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_rerun_table_keeps_the_other_datasets_rows(tmp_path):
    import json

    from cascade.files import with_other_datasets

    table = tmp_path / "table.json"
    assert with_other_datasets(table, [{"dataset": "own", "v": 1}]) == [{"dataset": "own", "v": 1}]
    table.write_text(json.dumps([{"dataset": "synthetic", "v": 2}, {"dataset": "own", "v": 0}]))
    rows = [{"dataset": "own", "v": 1}, {"dataset": "own", "v": 3}]
    assert with_other_datasets(table, rows) == [*rows, {"dataset": "synthetic", "v": 2}]
