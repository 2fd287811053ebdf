"""`hailo-bridge`: the HTTP sidecar's command line (FastAPI served by uvicorn)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from worker import __version__
from worker.logs import configure
from worker.settings import (
    EXIT_CONFIG,
    BridgeSettings,
    ConfigError,
    fail,
    load_or_exit,
    masked,
    settings_help,
)

PROG = "hailo-bridge"
GRACEFUL_SHUTDOWN_S = 5


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve GET /healthz, POST /infer and GET /metrics over HTTP (OpenAPI at "
        "/docs) for clients of the old sidecar, answering /infer through the workers over "
        "MQTT: the window goes to imu/bridge/window, the answer comes back on "
        "reply/<client id>/.",
        epilog=settings_help(BridgeSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings (secrets masked) and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_or_exit(BridgeSettings, PROG)
    if args.print_config:
        print(json.dumps(masked(settings), indent=2, default=str))
        return 0
    configure(settings.log_level, settings.log_format)

    # Imported here so that --help and --print-config stay quick, and so that a package
    # installed without its `bridge` extra says what is missing instead of a traceback.
    try:
        import uvicorn

        from worker.bridge.app import create_app
        from worker.bridge.mqtt import BridgeMqtt
        from worker.bridge.server import LIMIT_CONCURRENCY, HeaderTimeoutH11
    except ModuleNotFoundError as exc:
        print(f"{PROG}: {exc.name} is not installed; the bridge needs its extra: "
              "pip install 'hailo-edge-worker[bridge]'", file=sys.stderr)
        return EXIT_CONFIG

    try:
        bridge = BridgeMqtt(settings)
    except ConfigError as exc:
        fail(PROG, str(exc))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the
    # handlers it found: with these the process exits 0 after a clean stop, as the worker does.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    app = create_app(settings, bridge)
    server = uvicorn.Server(uvicorn.Config(
        app,
        host=settings.bridge_host,
        port=settings.bridge_port,
        log_config=None,  # our handlers (LOG_FORMAT) take uvicorn's records too
        access_log=settings.log_level == "DEBUG",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        http=HeaderTimeoutH11,
        limit_concurrency=LIMIT_CONCURRENCY,
    ))
    # An event stream never ends by itself: it ends when the server starts to stop.
    app.state.stopping = lambda: server.should_exit
    server.run()
    return 0


def _stopped(signum: int, frame: FrameType | None) -> None:
    return None


if __name__ == "__main__":
    sys.exit(main())
