"""The `stub` backend: a deterministic contract double for machines without a model.

Each window's answer comes from a SHAKE-256 digest of its float32 bytes, so it is
bit-identical whatever batch it rides in and whichever wire form it came in, different
windows get different answers, and no model file is needed. It is not a model: it never
stands in for the real backends in their own tests.
"""

from __future__ import annotations

import hashlib

import numpy as np

from worker.backends.base import Floats
from worker.settings import WorkerSettings


class StubBackend:
    mode = "stub"
    available = True

    def __init__(self, settings: WorkerSettings) -> None:
        self.latent_dim = settings.latent_dim
        self.num_motifs = settings.num_motifs
        self.model_id = "stub-v1"

    def infer(self, windows: Floats) -> tuple[Floats, Floats]:
        n = windows.shape[0]
        width = self.latent_dim + self.num_motifs
        # SHA-256 condenses the window (read in place: a row of a C-contiguous batch is one
        # contiguous buffer); SHAKE stretches its 32 bytes cheaply.
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        digest = b"".join(
            hashlib.shake_256(hashlib.sha256(w).digest()).digest(width) for w in windows
        )
        raw = np.frombuffer(digest, dtype=np.uint8).reshape(n, width).astype(np.float32)
        raw = (raw - np.float32(127.5)) / np.float32(127.5)
        latent = raw[:, : self.latent_dim]
        norm = np.sqrt((latent * latent).sum(axis=1, keepdims=True, dtype=np.float32))
        latent = latent / np.maximum(norm, np.float32(1e-6))
        logits = raw[:, self.latent_dim :] * np.float32(4.0)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        motifs = exp / exp.sum(axis=1, keepdims=True, dtype=np.float32)
        return latent.astype(np.float32, copy=False), motifs.astype(np.float32, copy=False)

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
