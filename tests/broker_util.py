"""Run a real Mosquitto for tests: a given config text, every listener on a free loopback port.

Mosquitto 2.0 binds all interfaces for a ``listener`` line without an address and ignores
``-p``, so each ``listener PORT [ADDRESS]`` line is rewritten to ``listener <free> 127.0.0.1``.
A WebSocket listener (``protocol websockets`` in its block) is the exception: Mosquitto 2.0.11
hands the address to libwebsockets as an *interface name*, so ``127.0.0.1`` listens on every
interface (``*:port`` in ``ss -ltn``) while the interface name ``lo`` listens on loopback only
(``[::ffff:127.0.0.1]:port``); such listeners are rewritten to ``listener <free> lo``.
For the network-fault tests the other listeners can bind the host end of a veth pair too, on
the same free port: Mosquitto binds one socket per ``listener PORT ADDRESS`` line.
Started as root the broker drops to the ``mosquitto`` user, which cannot read pytest's private
tmp dirs, so ``user`` lines are replaced by ``user root`` (a no-op when not run as root).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
_LISTENER = re.compile(r"^listener\s+(\d+)(?:\s+\S+)?\s*$", re.MULTILINE)
_WEBSOCKETS = re.compile(r"^protocol\s+websockets\s*$", re.MULTILINE)
_USER = re.compile(r"^user\s+\S+\s*$", re.MULTILINE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rewrite_config(
    text: str, substitutions: Mapping[str, str] | None = None, ports: dict[int, int] | None = None,
    also_on: Sequence[str] = (),
) -> tuple[str, dict[int, int]]:
    """Return the text for loopback use and the map {port in the text: port now used}.

    ``ports`` collects the listeners of several files (a main config and its includes).
    ``also_on``: more addresses each (non-WebSocket) listener binds as well, on the same port.
    Options after a listener line apply to the last of its copies (they are global without
    ``per_listener_settings``, as in mosquitto/dev.conf).
    """
    ports = {} if ports is None else ports
    for old, new in (substitutions or {}).items():
        text = text.replace(old, new)

    starts = [m.start() for m in _LISTENER.finditer(text)] + [len(text)]
    websockets = {
        start for start, end in pairwise(starts)
        if _WEBSOCKETS.search(text, start, end)
    }

    def loopback(match: re.Match[str]) -> str:
        port = free_port()
        while port in ports.values():  # the OS may hand out the same free port twice
            port = free_port()
        ports[int(match.group(1))] = port
        if match.start() in websockets:
            return f"listener {port} lo"
        return "\n".join(f"listener {port} {address}" for address in ("127.0.0.1", *also_on))

    return _USER.sub("", _LISTENER.sub(loopback, text)), ports


@dataclass
class Broker:
    """A running broker; ``port`` is where the config's first listener now listens."""

    config_path: Path
    ports: dict[int, int]
    command: Sequence[str]
    env: Mapping[str, str]
    host: str = "127.0.0.1"
    log_path: Path = field(init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.log_path = self.config_path.with_suffix(".log")

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def port_for(self, configured: int) -> int:
        """The free port that replaced ``listener <configured>``."""
        return self.ports[configured]

    def start(self, timeout: float = 10.0) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                list(self.command), stdout=log, stderr=subprocess.STDOUT, env=dict(self.env)
            )
        deadline = time.monotonic() + timeout
        waiting = set(self.ports.values())
        while waiting:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self._proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"mosquitto did not listen on {sorted(waiting)}:\n{self.log()}")
            for port in list(waiting):
                with socket.socket() as sock:
                    if sock.connect_ex((self.host, port)) == 0:
                        waiting.discard(port)
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: a clean exit is when Mosquitto writes its persistence file."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads the password and ACL files (and most of its config)."""
        assert self._proc is not None and self._proc.poll() is None, "broker is not running"
        self._proc.send_signal(signal.SIGHUP)

    @property
    def pid(self) -> int:
        """The broker's process id (start.sh execs mosquitto, so it is Mosquitto's)."""
        assert self._proc is not None, "broker never started"
        return self._proc.pid

    def rss_bytes(self) -> int:
        """Resident memory of the broker now, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def listening(self) -> set[str]:
        """Local addresses (``ss -ltnp`` form, e.g. ``127.0.0.1:1883``) the broker listens on."""
        out = subprocess.run(
            ["ss", "-Hltnp"], check=True, capture_output=True, text=True
        ).stdout
        return {line.split()[3] for line in out.splitlines() if f"pid={self.pid}," in line}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_broker(
    config_text: str,
    workdir: Path,
    *,
    substitutions: Mapping[str, str] | None = None,
    conf_d: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    also_on: Sequence[str] = (),
) -> Broker:
    """Write ``config_text`` (rewritten for loopback) to ``workdir`` and start Mosquitto on it.

    ``conf_d`` files go, rewritten the same way, to ``workdir/conf.d`` (their listeners are
    waited for too). ``command`` replaces ``mosquitto -c <config>``; it gets the config path
    as ``MOSQUITTO_CONF``. ``also_on``: addresses every listener binds besides loopback.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    text, ports = rewrite_config(config_text, substitutions, also_on=also_on)
    for name, extra in (conf_d or {}).items():
        (workdir / "conf.d").mkdir(exist_ok=True)
        (workdir / "conf.d" / name).write_text(
            rewrite_config(extra, substitutions, ports, also_on)[0])
    if not ports:
        raise ValueError("the config has no listener line")
    config_path = workdir / "mosquitto.conf"
    config_path.write_text(f"user root\n{text}")
    full_env = {**os.environ, **(env or {}), "MOSQUITTO_CONF": str(config_path)}
    broker = Broker(
        config_path=config_path,
        ports=ports,
        command=command or [MOSQUITTO, "-c", str(config_path)],
        env=full_env,
    )
    broker.start()
    return broker
