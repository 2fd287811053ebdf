"""How uvicorn serves the bridge: limits a LAN client cannot hold open for ever.

uvicorn has a keep-alive timeout for idle connections but none for a request whose headers never
finish arriving: a slow-loris client holding half-sent headers kept a connection (and its socket)
for as long as it liked. HeaderTimeoutH11 closes a connection that has not sent a whole request
head within HEADER_TIMEOUT_S of connecting or of its previous answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# A real client sends its request head in one packet; five seconds covers a slow Wi-Fi link.
HEADER_TIMEOUT_S = 5.0
# Beyond this many connections (or requests in progress) uvicorn answers 503 at once rather than
# accept work it cannot finish in BRIDGE_TIMEOUT_MS; far above what the workers can answer.
LIMIT_CONCURRENCY = 512
# The whole body of /infer must arrive within this long (the body limit bounds its size).
BODY_TIMEOUT_S = 10.0


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is late."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._expect_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _expect_head(self) -> None:
        """Arm the deadline while a request head is awaited, disarm it once one has come."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._cancel_deadline()
        elif self._head_deadline is None:
            self._head_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._head_late)

    def _cancel_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
