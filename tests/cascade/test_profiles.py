"""Profile files: found by name or path, named, hashed, their sections checked, layered in order
below the environment and the command line."""

from __future__ import annotations

import hashlib
import os

import pytest

from cascade import profiles
from cascade.config import SettingsError, explain_settings, load_settings
from cascade.profiles import PROFILE_VARIABLE, load_profile


def write(folder, name: str, text: str):
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_a_profile_is_found_by_name_or_path_and_identified_by_its_bytes(tmp_path):
    path = write(tmp_path, "trial", '[profile]\ndescription = "x"\n[rank]\ndefault_count = 7\n')
    by_name = load_profile("trial", tmp_path)
    by_path = load_profile(path)
    assert by_name == by_path and by_name.name == "trial" and by_name.description == "x"
    assert by_name.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert by_name.section("rank") == {"default_count": 7} and by_name.section("recall") == {}
    # A mounted copy (a ConfigMap key is always profile.toml) keeps the name it states.
    mounted = write(tmp_path, "profile", '[profile]\nname = "simulated-lift"\n')
    assert load_profile(mounted).name == "simulated-lift"


def test_an_unknown_profile_or_section_is_refused_naming_the_file(tmp_path):
    write(tmp_path, "good", "")
    with pytest.raises(SettingsError, match=r"no profile 'nope'.*profiles: good"):
        load_profile("nope", tmp_path)
    bad = write(tmp_path, "bad", "[recal]\ndefault_count = 1\n")
    with pytest.raises(SettingsError, match=r"bad\.toml: unknown section \[recal\]; known: "):
        load_profile(bad)
    broken = write(tmp_path, "broken", "[recall\n")
    with pytest.raises(SettingsError, match=r"broken\.toml: not TOML"):
        load_profile(broken)


def test_profiles_sit_above_the_defaults_and_below_file_environment_and_command_line(tmp_path):
    from services.rerank.server import RerankSettings

    base = load_profile(write(tmp_path, "base", "[rerank]\ndefault_count = 7\nmax_count = 300\n"))
    top = load_profile(write(tmp_path, "top", "[rerank]\nmax_count = 400\n"))
    layers = profiles.layers([base, top], "rerank")
    settings = load_settings(RerankSettings, environ={}, profiles=layers)
    assert (settings.default_count, settings.max_count) == (7, 400)  # later profile wins
    environ = {"CASCADE_RERANK_DEFAULT_COUNT": "9"}
    _, rows = explain_settings(
        RerankSettings, None, "CASCADE_RERANK_", {"server": {"port": "1"}}, environ, layers
    )
    source = {row.name: row.source for row in rows}
    assert source["default_count"] == "environment variable CASCADE_RERANK_DEFAULT_COUNT"
    assert source["max_count"].startswith("profile top (") and "[rerank]" in source["max_count"]
    assert source["server.port"] == "command line" and source["server.grace_s"] == "default"


def test_the_variable_lists_the_profile_files_a_service_reads(tmp_path):
    first, second = (load_profile(write(tmp_path, n, "")) for n in ("first", "second"))
    environ = profiles.variable([first, second])
    assert environ[PROFILE_VARIABLE].split(os.pathsep) == [
        str(first.path.resolve()),
        str(second.path.resolve()),
    ]
    assert [p.name for p in profiles.from_environment(environ)] == ["first", "second"]
    assert profiles.from_environment({}) == []


def test_each_dataset_has_a_default_profile():
    assert profiles.default_profile("ml-100k") == "default"  # no profile named after it
    assert profiles.default_profile("synthetic") == "synthetic"  # deploy/profiles/synthetic.toml
    assert "simulated-lift" in profiles.profile_names()
    assert load_profile("default").record()["file"] == "deploy/profiles/default.toml"
