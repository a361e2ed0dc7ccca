"""A profile is checked for every service before any starts: an unknown setting, a value of the
wrong type or out of range is refused with the file, the key and the reason."""

from __future__ import annotations

import pytest

from app import stack
from app.profiles import foreign_settings, resolve_services, train_settings
from cascade.config import SettingsError
from cascade.profiles import evaluation_profile, load_profile, profile_names
from cascade.topology import SERVICES


def profile(tmp_path, text: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return load_profile(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[recall]\nitem_cf = { qouta = 1.0 }\n", r"recall: unknown setting 'item_cf\.qouta' in"),
        ('[gateway]\nrecall_count = "many"\n', r"gateway: bad value 'many' for setting"),
        ("[rerank.rerank]\ndpp_trade_off = 2.0\n", r"rerank: invalid settings RerankConfig"),
        ("[gateway]\nrecall_count = 0\n", r"recall_count, prerank_count and rank_count must be"),
        ('[train]\nitem_cf = "svd"\n', r"train: invalid settings TrainSettings: item_cf must be"),
        ("[gateway.pool]\nslots = -1\n", r"gateway: invalid settings .*pool\.slots must be an int"),
        ("[gateway.pool]\nslots = 1.5\n", r"gateway: bad value 1\.5 for setting 'pool\.slots'"),
    ],
)
def test_a_bad_profile_is_refused_with_file_key_and_reason(tmp_path, text, message):
    bad = profile(tmp_path, text)
    environments = {name: {} for name in SERVICES}
    with pytest.raises(SettingsError, match=message) as refused:
        resolve_services([bad], environments)
    assert f"profile bad ({bad.path})" in str(refused.value)  # the file


def test_every_bad_service_is_named_at_once(tmp_path):
    bad = profile(tmp_path, "[recall]\nmax_count = -1\n[rank]\ncolour = 1\n")
    with pytest.raises(SettingsError) as refused:
        resolve_services([bad], {name: {} for name in SERVICES})
    assert "recall: invalid settings RecallSettings" in str(refused.value)
    assert "rank: unknown setting 'colour'" in str(refused.value)


def test_a_bad_profile_stops_cascade_up_before_anything_starts(tmp_path):
    bad = profile(tmp_path, "[prerank]\ndefault_count = 1.5\n")
    run_dir = tmp_path / "run"
    with pytest.raises(stack.StackError, match=r"refusing to start any service: prerank: bad"):
        stack.up(tmp_path / "artifacts", tmp_path / "data", "ml-100k", run_dir, profiles=[bad])
    assert not run_dir.exists()  # no process, no run folder, no training


def test_every_shipped_profile_resolves_for_every_service():
    for name in profile_names():
        served = [load_profile(name)]
        assert set(resolve_services(served, {s: {} for s in SERVICES})) == set(SERVICES)
        served.append(evaluation_profile("ask-twice"))
        rows = resolve_services(served, {"rerank": {}})["rerank"]
        shown = next(row for row in rows if row.name == "rerank.rules.filter_shown")
        assert shown.value is False and shown.source.startswith("profile ask-twice (")


@pytest.mark.parametrize("slots", [2, 3])
def test_a_pool_slots_profile_is_the_synthetic_profile_with_more_slots(slots):
    """synthetic-pool-N repeats the synthetic profile's tables (a profile is one file) and
    adds only the pool's slots: a change to synthetic.toml must be made there too."""
    synthetic, more = load_profile("synthetic"), load_profile(f"synthetic-pool-{slots}")
    assert more.name == f"synthetic-pool-{slots}" and "gateway" not in synthetic.tables
    assert {k: v for k, v in more.tables.items() if k not in ("profile", "gateway")} == {
        k: v for k, v in synthetic.tables.items() if k != "profile"
    }
    assert more.section("gateway") == {"pool": {"slots": slots}}
    rows = resolve_services([more], {"gateway": {}})["gateway"]
    assert next(row.value for row in rows if row.name == "pool.slots") == slots


def test_training_settings_come_from_the_train_table():
    assert train_settings([load_profile("default")]).item_cf == "co_consumption"
    assert train_settings([load_profile("simulated-lift")]).arguments("recall") == [
        "--item-cf",
        "ease",
    ]


def test_a_setting_from_an_environment_the_harness_did_not_set_is_foreign(tmp_path):
    served = [load_profile("default")]
    environments = {
        "gateway": {"CASCADE_GATEWAY_CLOCK": "caller"},  # the harness's own
        "recall": {"CASCADE_RECALL_MF_QUOTA": "0.5"},  # the caller's
    }
    rows = resolve_services(served, environments)
    wiring = {"gateway": {"CASCADE_GATEWAY_CLOCK"}, "recall": set()}
    assert foreign_settings(rows, wiring) == ["CASCADE_RECALL_MF_QUOTA=0.5 (recall.mf.quota)"]
