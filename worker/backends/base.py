"""The one interface every backend shares, and the error a failed batch raises."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
Pending = Callable[[], tuple[Floats, Floats]]
"""A batch started on a device: calling it waits for the answer (or raises InferenceError)."""
PIPELINE_DEPTH = 2
"""Batches a backend with a device beside the host (`submit(windows) -> Pending`, as hailo's)
accepts at once."""


class InferenceError(Exception):
    """A batch could not be run. The worker answers its windows `inference_failed`.

    `device_lost` says whether the backend needs `reopen()` before it can serve again
    (a lost or wedged device), as opposed to one bad batch.
    """

    def __init__(self, message: str, *, device_lost: bool = False) -> None:
        super().__init__(message)
        self.device_lost = device_lost


class Backend(Protocol):
    """A model that maps windows to latents and motif scores.

    Construction loads the model and checks its shapes against the settings, raising
    `worker.settings.ConfigError` (naming the setting) on a mismatch.
    """

    mode: str
    """The INFER_MODE this backend serves: "stub", "cpu" or "hailo"."""
    model_id: str
    """Names the model in results and the status, e.g. "tcn_encoder-v0.1.0"."""
    available: bool
    """False when the device could not be opened at start: `infer` raises until `reopen`."""

    def infer(self, windows: Floats) -> tuple[Floats, Floats]:
        """Run one batch.

        `windows` is C-contiguous float32 `[n, WINDOW_LENGTH, CHANNELS]`, 1 <= n <= BATCH_MAX_SIZE.
        Returns `(latent [n, LATENT_DIM], motif_scores [n, NUM_MOTIFS])`, float32; row i answers
        window i. Raises `InferenceError`; never returns made-up values for a failed batch.
        """
        ...

    def reopen(self) -> None:
        """Release and reacquire the device/model after a `device_lost` error.

        Raises `InferenceError` while it is still unavailable; the worker retries with backoff.
        """
        ...

    def info(self) -> dict[str, object]:
        """Facts for `--check` and the status: shapes, device identity, temperature, hashes."""
        ...

    def close(self) -> None:
        """Release the model and any device. Safe to call twice."""
        ...

