"""Examples built from recall's output see the recall the profile serves: its quotas and the
gateway's count."""

from pathlib import Path

import pytest

from cascade.config import load_settings
from cascade.profiles import layers, load_profile
from gateway.settings import GatewaySettings
from services.recall.server import RecallSettings
from training.served_recall import served_recall


def test_the_default_profile_serves_the_gateways_count_and_the_recall_services_quotas():
    default = load_profile("default")
    served = served_recall("default")
    gateway = load_settings(GatewaySettings, environ={}, profiles=layers([default], "gateway"))
    recall = load_settings(RecallSettings, environ={}, profiles=layers([default], "recall"))
    assert served.count == gateway.recall_count == 2000
    assert served.settings.budgets() == recall.budgets()
    # A profile that leaves recall_count alone gets the gateway's default through recall's own.
    assert GatewaySettings().recall_count == RecallSettings().default_count


def test_a_profiles_quotas_and_count_reach_the_examples(tmp_path: Path):
    path = tmp_path / "mix.toml"
    path.write_text(
        '[profile]\nname = "mix"\n\n[gateway]\nrecall_count = 300\n\n'
        "[recall]\nmf = { quota = 0.05 }\nitem_cf = { quota = 0.4 }\nsocial = { enabled = false }\n"
    )
    served = served_recall(load_profile(path))
    budgets = served.settings.budgets()
    assert served.count == 300
    assert budgets["mf"].quota == pytest.approx(0.05) and budgets["item_cf"].quota == 0.4
    assert not budgets["social"].enabled and budgets["two_tower"].quota == 0.25
