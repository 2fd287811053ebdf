"""Silent network faults for the tests: a namespace joined to this host by a veth pair.

A process started with `NetNamespace.command()` runs inside its own network namespace and
reaches the test broker only across the veth pair (host side `host_ip`, namespace side `ns_ip`,
a /30 of 10.231.0.0/16 picked per run). Faults are nftables rules in an `inet netfault` table
*inside* the namespace, on the veth only (the namespace's loopback is left alone):

* `cut()`: drop every packet both ways. No RST, no FIN, no ICMP: what a pulled cable or a
  lost Wi-Fi link looks like, so each side learns of it only from its keepalive.
* `lose(percent)`: drop that share of packets at random both ways (`numgen random mod 100`).
* `heal()`: remove the rules; TCP retransmits whatever is still in the socket buffers.

`tc netem` would be the usual tool, but this kernel has no `sch_netem` (ENVIRONMENT.md), so
added delay is out of reach here; loss and partitions are enough for keepalive and
retransmission. Everything made is removed by `close()` (also when a test fails), and the
processes started through `command()` are killed first, since a live process would keep the
namespace and its veth alive.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
SUBNET = ipaddress.IPv4Network("10.231.0.0/16")  # unlikely to be anyone's real network
TABLE = "netfault"
PREFIX = "hailo-nf-"  # then the pid of the test run and a random tag


class NetFaultUnavailable(RuntimeError):
    """This machine cannot make a namespace or its rules; the message says which step failed."""


def _run(argv: Sequence[str], what: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetFaultUnavailable(f"{what}: {' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise NetFaultUnavailable(
            f"{what}: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _addresses_in_use() -> set[ipaddress.IPv4Address]:
    out = _run([IP, "-4", "-o", "addr", "show"], "listing this host's addresses")
    used = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.add(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).ip)
    return used


def _free_pair() -> tuple[ipaddress.IPv4Network, str, str]:
    """A /30 of SUBNET that no interface of this host uses (another run may hold one)."""
    used = _addresses_in_use()
    for _ in range(100):
        net = ipaddress.IPv4Network(
            f"{SUBNET.network_address + 4 * secrets.randbelow(SUBNET.num_addresses // 4)}/30")
        hosts = list(net.hosts())
        if not used.intersection(hosts):
            return net, str(hosts[0]), str(hosts[1])
    raise NetFaultUnavailable(f"no free /30 left in {SUBNET}")


@dataclass
class NetNamespace:
    """One namespace, its veth pair and its fault rules. Use `create()`; always `close()`."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    faults: list[str] = field(default_factory=list)
    """What was done to the link, in order ("cut", "loss 5%", "healed"), for the test's log."""
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @classmethod
    def create(cls) -> NetNamespace:
        if os.geteuid() != 0:
            raise NetFaultUnavailable(
                "network namespaces and nftables need root (CI runs the tests as root)")
        for tool in (IP, NFT):
            if not os.access(tool, os.X_OK):
                raise NetFaultUnavailable(
                    f"{tool} is missing: scripts/install_system_deps.sh installs iproute2 and "
                    "nftables")
        sweep_stale()
        tag = secrets.token_hex(4)  # interface names are at most 15 characters
        net, host_ip, ns_ip = _free_pair()
        ns = cls(f"{PREFIX}{os.getpid()}-{tag}", f"nfh{tag}", f"nfn{tag}", host_ip, ns_ip)
        try:
            ns._build(net.prefixlen)
        except BaseException:
            ns.close()
            raise
        return ns

    def _build(self, prefix: int) -> None:
        ip, name = IP, self.name
        _run([ip, "netns", "add", name], "creating a network namespace")
        _run([ip, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
              "netns", name], "creating a veth pair")
        _run([ip, "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.host_if],
             "addressing the host end")
        _run([ip, "link", "set", self.host_if, "up"], "raising the host end")
        _run([ip, "-n", name, "addr", "add", f"{self.ns_ip}/{prefix}", "dev", self.ns_if],
             "addressing the namespace end")
        _run([ip, "-n", name, "link", "set", self.ns_if, "up"], "raising the namespace end")
        _run([ip, "-n", name, "link", "set", "lo", "up"], "raising the namespace's loopback")
        # Two empty base chains now, so that a fault is one rule added and a heal one flush.
        self._nft(f"""
            table inet {TABLE} {{
                chain input {{ type filter hook input priority 0; policy accept; }}
                chain output {{ type filter hook output priority 0; policy accept; }}
            }}""", "creating the nftables table in the namespace")

    def _nft(self, script: str, what: str) -> None:
        _run([IP, "netns", "exec", self.name, NFT, "-f", "-"], what, stdin=script)

    # -- processes ---------------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: the pid is argv's)."""
        return [IP, "netns", "exec", self.name, *argv]

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        """A process started with `command()`: killed by `close()` if still running."""
        self._procs.append(proc)

    # -- faults ------------------------------------------------------------------------------

    def _set(self, rule_in: str | None, rule_out: str | None, label: str) -> None:
        lines = [f"flush chain inet {TABLE} input", f"flush chain inet {TABLE} output"]
        if rule_in:
            lines.append(f"add rule inet {TABLE} input iifname {self.ns_if} {rule_in}")
        if rule_out:
            lines.append(f"add rule inet {TABLE} output oifname {self.ns_if} {rule_out}")
        self._nft("\n".join(lines) + "\n", f"setting the fault '{label}'")
        self.faults.append(f"{time.monotonic():.3f} {label}")

    def cut(self, ports: Iterable[int] = ()) -> None:
        """A silent partition: drop everything across the veth both ways.

        With `ports`, only TCP traffic to or from those ports of the host side (the broker)
        is dropped, so that a test can still reach a server inside the namespace.
        """
        ports = sorted(ports)
        if not ports:
            self._set("drop", "drop", "cut")
            return
        spec = "{ " + ", ".join(str(p) for p in ports) + " }"
        self._set(f"ip saddr {self.host_ip} tcp sport {spec} drop",
                  f"ip daddr {self.host_ip} tcp dport {spec} drop", f"cut ports {spec}")

    def lose(self, percent: int) -> None:
        """Drop `percent` % of the packets crossing the veth, each way, at random."""
        if not 0 < percent < 100:
            raise ValueError(f"loss must be 1-99 %, got {percent}")
        rule = f"numgen random mod 100 < {percent} drop"
        self._set(rule, rule, f"loss {percent}%")

    def heal(self) -> None:
        self._set(None, None, "healed")

    def traffic(self) -> tuple[int, int]:
        """(bytes, packets) that crossed the veth so far, both ways, Ethernet headers included
        (14 bytes a frame: subtract them for what an IP link such as LTE would count)."""
        out = _run([IP, "-s", "-j", "link", "show", "dev", self.host_if], "reading counters")
        stats = json.loads(out)[0]["stats64"]
        return (stats["rx"]["bytes"] + stats["tx"]["bytes"],
                stats["rx"]["packets"] + stats["tx"]["packets"])

    # -- clean-up ----------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what runs inside, delete the veth (both ends) and the namespace. Idempotent."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        self._procs.clear()
        for argv in ([IP, "link", "del", self.host_if], [IP, "netns", "del", self.name]):
            subprocess.run(argv, capture_output=True, timeout=20, check=False)

    def exists(self) -> bool:
        names = subprocess.run([IP, "netns", "list"], capture_output=True, text=True,
                               timeout=20, check=False).stdout.split()
        links = subprocess.run([IP, "-o", "link", "show"], capture_output=True, text=True,
                               timeout=20, check=False).stdout
        return self.name in names or f" {self.host_if}@" in links


def sweep_stale() -> list[str]:
    """Delete namespaces of ours whose test run died without cleaning up (kill -9 of pytest).

    A namespace's name carries the pid of the run that made it; one whose pid is gone is
    stale (a run alive elsewhere on this machine keeps its own). Deleting a namespace deletes
    its end of the veth pair, and with it the host end.
    """
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=20,
                            check=False).stdout.split()
    stale = []
    for name in listed:
        match = re.fullmatch(rf"{PREFIX}(\d+)-[0-9a-f]+", name)
        if match and not _alive(int(match.group(1))):
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=20,
                           check=False)
            stale.append(name)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
