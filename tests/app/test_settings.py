"""`cascade settings` says where each value came from; the generated reference is fresh."""

from __future__ import annotations

from pathlib import Path

from app.settings import REFERENCE, field_meanings, reference, show
from cascade.profiles import PROFILE_VARIABLE, load_profile

ROOT = Path(__file__).resolve().parents[2]


def rows(output: str) -> dict[str, list[str]]:
    """`name value source...` lines of one service's table, by name."""
    lines = [line.split() for line in output.splitlines()[3:] if line.strip()]
    return {words[0]: words[1:] for words in lines}


def test_cascade_settings_shows_the_layer_of_each_value(tmp_path, monkeypatch, capsys):
    path = tmp_path / "trial.toml"
    path.write_text("[recall]\ndefault_count = 1000\nmax_count = 3000\n")
    monkeypatch.setenv("CASCADE_RECALL_MAX_COUNT", "4000")  # above the profile
    monkeypatch.delenv(PROFILE_VARIABLE, raising=False)
    argv = ["recall", "--profile", str(path), "--set", "server.port=50999"]
    assert show(argv) == 0
    found = rows(capsys.readouterr().out)
    assert found["overfetch"] == ["1.5", "default"]
    assert found["default_count"][:3] == ["1000", "profile", "trial"]
    assert found["max_count"] == ["4000", "environment", "variable", "CASCADE_RECALL_MAX_COUNT"]
    assert found["server.port"] == ["50999", "command", "line"]


def test_without_a_profile_it_shows_what_cascade_up_would_serve(monkeypatch, capsys):
    monkeypatch.delenv(PROFILE_VARIABLE, raising=False)
    assert show(["gateway", "--dataset", "synthetic"]) == 0  # the dataset's own profile
    out = capsys.readouterr().out
    assert out.startswith("profile synthetic: deploy/profiles/synthetic.toml sha256 ")
    assert load_profile("synthetic").sha256[:12] in out.splitlines()[0]
    assert rows(out)["recall_count"] == ["2000", "default"]


def test_a_bad_setting_is_named_and_exits_2(tmp_path, capsys):
    assert show(["rank", "--set", "colour=red"]) == 2
    assert "unknown setting 'colour' in command line" in capsys.readouterr().err


def test_every_server_prints_its_resolved_settings(monkeypatch, capsys):
    from services.rerank.server import SERVER

    monkeypatch.setenv(PROFILE_VARIABLE, str(load_profile("simulated-lift").path))
    assert SERVER.main(["--print-settings", "--set", "default_count=5"]) == 0
    found = rows("\n\n\n" + capsys.readouterr().out)
    assert found["rerank.dpp_trade_off"][:3] == ["1.0", "profile", "simulated-lift"]
    assert found["default_count"] == ["5", "command", "line"]


def test_a_server_refuses_to_start_on_a_bad_profile(tmp_path, monkeypatch, capsys):
    from services.rerank.server import SERVER

    path = tmp_path / "bad.toml"
    path.write_text("[rerank]\nmax_candidates = [1, 2]\n")
    monkeypatch.setenv(PROFILE_VARIABLE, str(path))
    assert SERVER.main([]) == 2
    error = capsys.readouterr().err
    assert "refusing to start" in error and "'max_candidates'" in error and str(path) in error


def test_the_generated_reference_is_fresh_and_explains_every_setting():
    text = reference()
    assert (ROOT / REFERENCE).read_text() == text, "stale: run `make settings-reference`"
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(table) > 250 and not [line for line in table if line.endswith("|  |")]
    assert "| `item_cf.quota` | float | `0.15` |" in text


def test_a_fields_meaning_is_its_comment_or_its_groups():
    from dataclasses import dataclass

    @dataclass
    class Example:
        alone: int = 1  # its own
        # a group's head
        first: int = 2
        second: int = 3

        third: int = 4

    assert field_meanings(Example) == {
        "alone": "its own",
        "first": "a group's head",
        "second": "a group's head",
        "third": "",
    }
