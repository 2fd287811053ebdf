"""Inference backends, chosen by INFER_MODE (one module each, imported only when chosen).

Every backend has the small interface in `base.Backend`. `create(mode, settings)` builds one;
a vendor SDK that is missing only matters when its backend is chosen.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from worker.backends.base import Backend, InferenceError

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

__all__ = ["REGISTRY", "Backend", "InferenceError", "create"]

# mode -> "module:factory"; the factory takes WorkerSettings and returns a Backend.
REGISTRY: dict[str, str] = {
    "stub": "worker.backends.stub:StubBackend",
    "cpu": "worker.backends.cpu:CpuBackend",
    "hailo": "worker.backends.hailo:HailoBackend",
}


def create(mode: str, settings: WorkerSettings) -> Backend:
    """Build the backend for `mode`. Raises ConfigError when the model disagrees with settings."""
    module_name, _, factory_name = REGISTRY[mode].partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    backend: Backend = factory(settings)
    return backend
