"""The `stub` backend: a deterministic contract double for machines without a model.

Each window's answer comes from a 64-bit hash of its float32 bit patterns, so it is
bit-identical whatever batch it rides in and whichever wire form it came in, different
windows get different answers, and no model file is needed. It is not a model: it never
stands in for the real backends in their own tests.

The hash is integer arithmetic on the whole batch at once (numpy wraps uint64 exactly, so a
row's hash does not depend on its batch), stretched to one value per output by SplitMix64's
finaliser: a fraction of the cost of a cryptographic hash per window, which matters because
the stub is what the benchmarks measure the worker's own overhead with.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from worker.backends.base import Floats
from worker.settings import WorkerSettings

_U64 = np.uint64


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser: every output bit depends on every input bit."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    mixed: npt.NDArray[np.uint64] = z ^ (z >> _U64(31))
    return mixed


class StubBackend:
    mode = "stub"
    available = True

    def __init__(self, settings: WorkerSettings) -> None:
        self.latent_dim = settings.latent_dim
        self.num_motifs = settings.num_motifs
        self.model_id = "stub-v2"
        size = settings.window_length * settings.channels
        # Odd multipliers, fixed for good: a window's answer must never change between runs.
        self._weights = np.random.default_rng(0x5EED).integers(
            1, 2**63, size=size, dtype=np.uint64) | _U64(1)
        width = self.latent_dim + self.num_motifs
        self._lanes = np.arange(1, width + 1, dtype=np.uint64) * _U64(0x9E3779B97F4A7C15)

    def infer(self, windows: Floats) -> tuple[Floats, Floats]:
        n = windows.shape[0]
        bits = np.ascontiguousarray(windows, dtype=np.float32).reshape(n, -1).view(np.uint32)
        with np.errstate(over="ignore"):
            mixed = _mix((bits @ self._weights)[:, None] + self._lanes)
        # As a float32 in [0, 1]: IEEE rounding, so the same on every machine.
        unit = mixed.astype(np.float32) * np.float32(2.0**-64)
        latent = unit[:, : self.latent_dim] - np.float32(0.5)
        norm = np.sqrt((latent * latent).sum(axis=1, keepdims=True, dtype=np.float32))
        latent /= np.maximum(norm, np.float32(1e-6))
        motifs = unit[:, self.latent_dim :] + np.float32(1e-3)
        motifs /= motifs.sum(axis=1, keepdims=True, dtype=np.float32)
        return latent, motifs

    def reopen(self) -> None:
        return None

    def info(self) -> dict[str, object]:
        return {
            "backend": "stub",
            "model": self.model_id,
            "latent_dim": self.latent_dim,
            "num_motifs": self.num_motifs,
        }

    def close(self) -> None:
        return None
