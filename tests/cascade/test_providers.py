"""The execution-provider choice of the scoring stages: CUDA when asked and present, else CPU."""

from __future__ import annotations

import logging

from cascade.providers import AUTO, CPU, CUDA, session_providers


def test_auto_takes_cuda_only_when_present():
    assert session_providers(AUTO, [CUDA, CPU]) == [CUDA, CPU]
    assert session_providers(AUTO, [CPU]) == [CPU]


def test_a_missing_provider_falls_back_to_cpu_with_a_log_line(caplog):
    with caplog.at_level(logging.WARNING):
        assert session_providers("TensorrtExecutionProvider", [CPU], stage="rank") == [CPU]
    assert "rank: execution provider TensorrtExecutionProvider is not available" in caplog.text
    assert session_providers(CPU, [CUDA, CPU]) == [CPU]
