from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cascade.client import ClientSettings
from cascade.config import SettingsError, load_settings
from cascade.server import ServerSettings


@dataclass(frozen=True)
class ModelSettings:
    path: Path = Path("artifacts/current")
    threads: int = 1


@dataclass(frozen=True)
class RankSettings:
    server: ServerSettings = field(default_factory=ServerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    default_count: int = 100
    fusion_weight: float = 0.5
    debug: bool = False
    tasks: tuple[str, ...] = ("click", "like")
    fallback: str | None = None

    def __post_init__(self) -> None:
        if self.default_count < 1:
            raise ValueError(f"default_count must be >= 1, got {self.default_count}")


def test_defaults_when_nothing_is_set():
    assert load_settings(RankSettings, environ={}) == RankSettings()


def test_layers_apply_in_order_file_then_env_then_overrides(tmp_path):
    path = tmp_path / "rank.json"
    path.write_text(
        json.dumps(
            {"default_count": 50, "fusion_weight": 0.25, "server": {"port": 7000, "grace_s": 2}}
        )
    )
    env = {"CASCADE_RANK_DEFAULT_COUNT": "60", "CASCADE_RANK_SERVER_METRICS_PORT": "-1"}
    settings = load_settings(RankSettings, path, "CASCADE_RANK_", {"debug": "true"}, environ=env)
    assert settings.default_count == 60  # env beats file
    assert settings.fusion_weight == 0.25  # file beats default
    assert settings.server == ServerSettings(port=7000, metrics_port=-1, grace_s=2.0)
    assert settings.debug is True
    assert isinstance(settings.server.grace_s, float)


def test_toml_file_and_typed_conversions(tmp_path):
    path = tmp_path / "rank.toml"
    path.write_text('tasks = ["click"]\nfallback = "popular"\n[model]\npath = "/m"\nthreads = 2\n')
    env = {"CASCADE_RANK_TASKS": "click, like ,share", "CASCADE_RANK_MODEL_THREADS": "4"}
    settings = load_settings(RankSettings, path, "CASCADE_RANK_", environ=env)
    assert settings.tasks == ("click", "like", "share")
    assert settings.model == ModelSettings(path=Path("/m"), threads=4)
    assert settings.fallback == "popular"
    assert load_settings(RankSettings, overrides={"fallback": None}, environ={}).fallback is None


def test_overrides_accept_nested_dicts():
    settings = load_settings(RankSettings, overrides={"server": {"port": 9}}, environ={})
    assert settings.server.port == 9
    assert settings.server.host == "127.0.0.1"


def test_setting_one_nested_field_keeps_the_parents_defaults_for_the_others():
    @dataclass(frozen=True)
    class StageSettings:  # a stage's own ports, as services/*/server.py declare them
        server: ServerSettings = field(
            default_factory=lambda: ServerSettings(port=50053, metrics_port=9153)
        )

    env = {"CASCADE_RANK_SERVER_HOST": "0.0.0.0", "CASCADE_RANK_SERVER_INSECURE": "true"}
    settings = load_settings(StageSettings, env_prefix="CASCADE_RANK_", environ=env)
    assert settings.server == ServerSettings(
        host="0.0.0.0", port=50053, metrics_port=9153, insecure=True
    )


def test_bad_env_value_names_the_variable_and_field():
    env = {"CASCADE_RANK_SERVER_PORT": "fifty"}
    with pytest.raises(SettingsError) as caught:
        load_settings(RankSettings, env_prefix="CASCADE_RANK_", environ=env)
    assert "CASCADE_RANK_SERVER_PORT" in str(caught.value) and "'server.port'" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        load_settings(
            RankSettings, env_prefix="CASCADE_RANK_", environ={"CASCADE_RANK_DEBUG": "maybe"}
        )
    assert "CASCADE_RANK_DEBUG" in str(caught.value) and "'debug'" in str(caught.value)


def test_unknown_key_in_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "rank.json"
    path.write_text(json.dumps({"server": {"prot": 1}}))
    with pytest.raises(SettingsError, match=r"unknown setting 'server\.prot'"):
        load_settings(RankSettings, path, environ={})
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings(RankSettings, overrides={"colour": "red"}, environ={})


def test_wrong_json_type_and_validation_errors():
    with pytest.raises(SettingsError, match="default_count"):
        load_settings(RankSettings, overrides={"default_count": 1.5}, environ={})
    with pytest.raises(SettingsError, match="default_count must be >= 1"):
        load_settings(RankSettings, overrides={"default_count": 0}, environ={})
    with pytest.raises(SettingsError, match="port must be in"):
        load_settings(ServerSettings, overrides={"port": 70000}, environ={})


def test_unreadable_file_is_a_settings_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(SettingsError, match="broken.json"):
        load_settings(RankSettings, path, environ={})


def test_library_settings_load_from_the_environment():
    env = {"CASCADE_RANK_PORT": "50051", "CASCADE_RANK_HOST": "0.0.0.0"}
    env["CASCADE_RANK_INSECURE"] = "1"  # plaintext off loopback only when said
    server = load_settings(ServerSettings, env_prefix="CASCADE_RANK_", environ=env)
    assert (server.host, server.port) == ("0.0.0.0", 50051)
    client = load_settings(ClientSettings, env_prefix="X_", environ={"X_TIMEOUT_S": "0.25"})
    assert client.timeout_s == 0.25
