"""Logging set-up: plain text for a terminal, or one JSON object a line for collectors."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # paho's per-packet debug lines drown everything else below WARNING.
    logging.getLogger("paho").setLevel(max(logging.getLevelName(level), logging.INFO))


class Throttled:
    """A failure a sensor can repeat at will, logged in full the first time, then counted.

    Every bad window logging a traceback made 115 MB of log from 65k windows; this logs the
    first with its traceback, then at most one line a minute saying how many more there were.
    """

    def __init__(self, logger: logging.Logger, what: str, every_s: float = 60.0) -> None:
        self.logger, self.what, self.every_s = logger, what, every_s
        self._unreported = 0
        self._next = 0.0
        self._first = True

    def exception(self, fmt: str, *args: object) -> None:
        """Log the exception being handled (in full the first time only)."""
        self._log(fmt, args, exc_info=True)

    def warning(self, fmt: str, *args: object) -> None:
        self._log(fmt, args, exc_info=False)

    def _log(self, fmt: str, args: tuple[object, ...], exc_info: bool) -> None:
        now = time.monotonic()
        if self._first:
            self._first = False
            self._next = now + self.every_s
            level = logging.ERROR if exc_info else logging.WARNING
            self.logger.log(level, f"{self.what} {fmt}", *args, exc_info=exc_info)
            return
        self._unreported += 1
        if now >= self._next:
            self.logger.warning("%s: %d more in the last %.0f s, the latest %s", self.what,
                                self._unreported, self.every_s, fmt % args)
            self._unreported = 0
            self._next = now + self.every_s
