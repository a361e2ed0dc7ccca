"""The `cascade` command line, end to end on a small synthetic world."""

import argparse
import json
import socket

import pytest

from app.cli import build_parser, main


def test_data_then_baselines(tmp_path, capsys):
    data_dir = tmp_path / "data"
    main(
        [
            "data",
            "--source",
            "synthetic",
            "--users",
            "300",
            "--items",
            "200",
            "--data-dir",
            str(data_dir),
        ]
    )
    assert "synthetic: 300 users, 200 items" in capsys.readouterr().out
    out = tmp_path / "baselines.json"
    main(["baselines", "--dataset", "synthetic", "--data-dir", str(data_dir), "--out", str(out)])
    rows = json.loads(out.read_text())
    models = {(row["protocol"], row["model"]) for row in rows}
    assert models == {
        (p, m) for p in ("per_user", "global_cut") for m in ("MostPopular", "ItemKNN", "EASE")
    }
    assert all(0.0 <= row["NDCG@10"] <= 1.0 for row in rows)
    assert "EASE" in capsys.readouterr().out


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["baselines", "--dataset", "ml-100k", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "run `cascade data --source ml-100k`" in capsys.readouterr().err


def test_help_explains_each_command():
    parser = build_parser()
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help for action in subcommands._choices_actions}
    assert {"data", "baselines"} <= set(helps)
    assert all(text and text.strip() for text in helps.values()), helps  # none left unexplained


def test_every_stage_entry_point_exists():
    import importlib

    from app.cli import ENTRY_POINTS, TRAIN_ORDER

    for verb, stages in ENTRY_POINTS.items():
        for stage, module_name in stages.items():
            module = importlib.import_module(module_name)
            assert callable(module.main), f"cascade {verb} {stage}: {module_name} has no main"
    assert set(TRAIN_ORDER) <= set(ENTRY_POINTS["train"])


def test_stage_options_reach_the_stage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "rerank", "--help"])
    assert exit_info.value.code == 0
    assert "--dataset" in capsys.readouterr().out


def test_stack_commands_are_listed():
    parser = build_parser()
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"up", "down", "recommend", "feedback", "demo"} <= set(subcommands.choices)


def test_recommend_options_belong_to_the_gateway_cli(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--user" in out and "--target" in out


def test_unknown_options_of_other_commands_are_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["down", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_down_without_a_stack_says_so(tmp_path, capsys):
    main(["down", "--run-dir", str(tmp_path)])
    assert "no stack recorded" in capsys.readouterr().out


def test_recommend_against_no_gateway_fails_cleanly(capsys):
    with socket.socket() as held:  # bound, never listening: refused for the whole test
        held.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(SystemExit) as exit_info:
            main(["recommend", "--user", "196", "--target", target, "--timeout", "0.5"])
    assert exit_info.value.code != 0


def _every_command() -> list[list[str]]:
    from app.cli import ENTRY_POINTS

    commands = [["data"], ["data", "import"], ["baselines"], ["up"], ["down"], ["recommend"]]
    commands += [["feedback"], ["demo"], ["certs"], ["simulate"], ["train", "all"]]
    return commands + [[verb, stage] for verb, stages in ENTRY_POINTS.items() for stage in stages]


@pytest.mark.parametrize("command", _every_command(), ids=" ".join)
def test_every_option_of_every_command_has_help(command, monkeypatch, capsys):
    parsers = []  # every parser `cascade COMMAND --help` goes through, delegated ones included
    parse = argparse.ArgumentParser.parse_known_args

    def recording(self, args=None, namespace=None):
        parsers.append(self)
        return parse(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.startswith(f"usage: cascade {' '.join(command)}")  # as the user typed it
    unexplained = [
        action.option_strings or action.dest
        for parser in parsers
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert unexplained == []


def test_up_says_how_to_put_cascade_on_the_path_only_when_it_is_not(tmp_path, monkeypatch):
    from app.cli import _activate_hint

    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "cascade"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (bin_dir / "activate").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [str(script), "up"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as `make up` runs it from a plain shell
    assert _activate_hint() == (
        "(first, in your shell: `source .venv/bin/activate` puts `cascade` on the PATH)\n"
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # the venv activated
    assert _activate_hint() == ""


def test_a_bad_profile_stops_train_all_and_up_naming_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nitem_cf = "svd"\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "all", "--profile", str(bad), "--artifacts", str(tmp_path / "a")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "cascade train all:" in error and "item_cf=svd from profile bad (" in error
    bad.write_text("[gateway]\nmax_count = 0\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["up", "--profile", str(bad), "--run-dir", str(tmp_path / "run"), "--base-port", "0"])
    assert exit_info.value.code == 1
    assert "refusing to start any service: gateway: invalid settings" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
