"""Which ONNX Runtime execution provider a scoring stage runs on: the configured one (e.g.
CUDAExecutionProvider with the `gpu` extra installed) when this machine has it, else the CPU.

The CPU path is the default and the one the tests use; a missing provider is logged, never fatal.
"""

from __future__ import annotations

import logging

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
AUTO = "auto"  # CUDA when present, else the CPU


def session_providers(
    wanted: str, available: list[str] | None = None, stage: str = "scoring"
) -> list[str]:
    """The providers to ask ONNX Runtime for: `wanted` (then CPU) when available, else CPU."""
    available = ort.get_available_providers() if available is None else available
    if wanted == CPU:
        return [CPU]
    if wanted == AUTO:
        return [CUDA, CPU] if CUDA in available else [CPU]
    if wanted in available:
        return [wanted, CPU]
    log.warning(
        "%s: execution provider %s is not available (have %s); falling back to %s",
        stage,
        wanted,
        ", ".join(available),
        CPU,
    )
    return [CPU]
