#!/usr/bin/env python3
"""The image's HEALTHCHECK, for either process the image runs.

The bridge is healthy when its /healthz answers 200, i.e. at least one worker is online and
fresh (the seed's check). The worker is healthy when its /metrics says it is connected to the
broker and its backend serves (hailo_worker_broker_connected and hailo_worker_device_up are 1);
with METRICS_PORT=0 there is nothing to ask, and it counts as healthy while it runs.
Which process runs is read from /proc (Compose's `init: true` puts docker-init in front of it).
Standard library only: it runs every few seconds, so it must start fast.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 3.0


def running_role() -> str | None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"hailo-bridge") for arg in args):
            return "bridge"
        if any(arg.endswith(b"hailo-worker") for arg in args) or b"worker" in args[1:3]:
            return "worker"
    return None


def local_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def check_bridge() -> str | None:
    host = local_host(os.environ.get("BRIDGE_HOST", "0.0.0.0"))
    port = os.environ.get("BRIDGE_PORT", "9000")
    status, body = fetch(f"http://{host}:{port}/healthz")
    return None if status == 200 else f"/healthz answered {status}: {body.strip()[:200]}"


def gauge(exposition: str, name: str) -> float | None:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def check_worker() -> str | None:
    port = os.environ.get("METRICS_PORT", "9100")
    if port == "0":
        return None
    status, body = fetch(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return f"/metrics answered {status}"
    if gauge(body, "hailo_worker_broker_connected") != 1.0:
        return "not connected to the broker"
    if gauge(body, "hailo_worker_device_up") != 1.0:
        return "the configured backend is down (degraded)"
    return None


def main() -> int:
    role = running_role()
    if role is None:
        print("unhealthy: neither hailo-worker nor hailo-bridge is running")
        return 1
    try:
        problem = check_bridge() if role == "bridge" else check_worker()
    except (OSError, ValueError) as exc:  # refused, timed out, or a garbled exposition
        problem = f"no answer: {exc}"
    print(f"{role}: {problem or 'healthy'}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
