"""The application layer's module tables cover exactly the services and stages of the topology."""

import importlib.util

from app.stages import EVALUATE_MODULES, SERVER_MODULES, TRAIN_MODULES
from cascade.topology import SERVICES, STAGES, TRAIN_ORDER


def test_one_server_per_service_and_one_trainer_per_stage_in_topology_order():
    assert tuple(SERVER_MODULES) == SERVICES
    assert tuple(TRAIN_MODULES) == TRAIN_ORDER and set(TRAIN_ORDER) == set(STAGES)
    assert set(STAGES) <= set(EVALUATE_MODULES)


def test_every_module_named_exists():
    for module in (*SERVER_MODULES.values(), *TRAIN_MODULES.values(), *EVALUATE_MODULES.values()):
        assert importlib.util.find_spec(module) is not None, module
