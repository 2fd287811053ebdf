"""The pipeline benchmark's table: medians, ratios to the relay, and the targets.

A run is the JSON object bench/load.py prints, plus the harness's `kind`, `form` and `round`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_BATCH = 8  # BATCH_MAX_SIZE's default


def candidates(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(n, str(Path(d).resolve())) for n, d in (c.split("=", 1) for c in args.candidate)]


def kind_of(kind: str, variant: str) -> str:
    return f"{kind} [{variant}]" if variant else kind


def batch_size(args: argparse.Namespace) -> int:
    for item in args.worker_env:
        if item.startswith("BATCH_MAX_SIZE="):
            return int(item.split("=", 1)[1])
    return DEFAULT_BATCH


def devices(args: argparse.Namespace) -> list[tuple[float, float]]:
    return [(float(ms), float(pf)) for ms, pf in
            (item.split(",") for item in args.device or ["1,0.1", "4,0.4"])]


def _pick(runs: list[dict[str, Any]], kind: str, form: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["kind"] == kind and r["form"] == form]


def median(runs: list[dict[str, Any]], kind: str, form: str, key: str,
            get: Callable[[dict[str, Any]], float] | None = None) -> float:
    values = [get(r) if get else float(r[key]) for r in _pick(runs, kind, form)]
    return statistics.median(values) if values else float("nan")


def _cpu(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r["cpu_us_per_window"].get(name, float("nan")))


def _switches(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r.get("switches_per_window", {}).get(name, float("nan")))


def _lat(q: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r["latency_ms"][q]) if "latency_ms" in r else float("nan")


def baseline(kind: str) -> str:
    """The relay run a kind is compared with: the same load, the relay in the worker's place."""
    if kind.startswith("burst"):
        return "relay burst"
    if kind.startswith("latency-light"):
        return "relay latency-light"
    return "relay"


def _paired(runs: list[dict[str, Any]], kind: str, form: str,
            get: Callable[[dict[str, Any]], float]) -> list[float]:
    """kind / relay, round by round: neighbours in time share the machine's mood."""
    relay = {r["round"]: get(r) for r in _pick(runs, baseline(kind), form)}
    return [get(r) / relay[r["round"]] for r in _pick(runs, kind, form) if r["round"] in relay]


def _ratio(runs: list[dict[str, Any]], kind: str, form: str,
           get: Callable[[dict[str, Any]], float]) -> float:
    ratios = _paired(runs, kind, form, get)
    return statistics.median(ratios) if ratios else float("nan")


def _rate(r: dict[str, Any]) -> float:
    return float(r["rate"])


def table(a: argparse.Namespace, runs: list[dict[str, Any]], forms: list[str]) -> str:
    variants = ["", *(name for name, _ in candidates(a))]
    rows = [f"{'run':<36}{'windows/s':>10}{'x relay':>8}{'CPU us/w':>9}{'x relay':>8}"
            f"{'ctx/w':>7}{'broker':>7}{'load':>6}{'p50 ms':>8}{'p99 ms':>8}{'others':>7}"]
    spread = []

    def row(label: str, kind: str, form: str, relay: bool) -> None:
        if not _pick(runs, kind, form):
            return
        rate, cpu = median(runs, kind, form, "rate"), median(runs, kind, form, "", _cpu("target"))
        nan = float("nan")
        r_rate = _ratio(runs, kind, form, _rate) if relay else nan
        r_cpu = _ratio(runs, kind, form, _cpu("target")) if relay else nan
        if relay and not kind.startswith("relay"):
            rates = _paired(runs, kind, form, _rate)
            cpus = _paired(runs, kind, form, _cpu("target"))
            spread.append(f"  {label}: throughput x {min(rates):.2f}-{max(rates):.2f}, "
                          f"CPU x {min(cpus):.2f}-{max(cpus):.2f} over {len(rates)} rounds")
        rows.append(
            f"{label:<36}{rate:>10.0f}{r_rate:>8.2f}{cpu:>9.1f}{r_cpu:>8.2f}"
            f"{median(runs, kind, form, '', _switches('target')):>7.2f}"
            f"{median(runs, kind, form, '', _cpu('broker')):>7.1f}"
            f"{median(runs, kind, form, '', _cpu('load')):>6.1f}"
            f"{median(runs, kind, form, '', _lat('p50')):>8.2f}"
            f"{median(runs, kind, form, '', _lat('p99')):>8.2f}"
            f"{median(runs, kind, form, 'others_cores'):>7.2f}")

    row("publisher + broker alone (echo)", "publisher", "bin", False)
    for form in forms:
        row(f"relay, {form}", "relay", form, True)
        for v in variants:
            row(f"worker{' ' + v if v else ''} (stub), {form}", kind_of("worker", v), form, True)
    burst = _pick(runs, "relay burst", "bin")
    if burst:
        rows.append(f"open loop: {burst[0]['sent']} windows at the broker's pace")
        row("relay, bin burst", "relay burst", "bin", True)
        for v in variants:
            row(f"worker{' ' + v if v else ''} (stub), bin burst", kind_of("burst", v), "bin",
                True)
    for form in forms:
        picked = _pick(runs, "relay latency-light", form)
        if picked:
            rate = statistics.median(r["send_rate"] for r in picked)
            row(f"relay {form} @ {rate:.0f}/s", "relay latency-light", form, False)
    for v in variants:
        for form in forms:
            for load in ("light", "heavy"):
                kind = kind_of(f"latency-{load}", v)
                picked = _pick(runs, kind, form)
                if picked:
                    share = f" ({a.load_fraction:.0%} cap)" if load == "heavy" else ""
                    rate = statistics.median(r["send_rate"] for r in picked)
                    row(f"worker{' ' + v if v else ''} {form} @ {rate:.0f}/s{share}", kind, form,
                        False)
    legend = textwrap.fill(
        "x relay: median over rounds of (this run / the relay run of the same round). CPU us/w: "
        "CPU time of the process, all threads, per answered window; ctx/w: its context switches "
        "per window; broker, load: their CPU per window in the same runs; others: cores used "
        "outside the bench meanwhile (noise).", 100)
    lines = ["\n".join(rows).replace("nan", " - "), legend,
             *(["paired ratios, lowest-highest:", *spread] if spread else [])]
    for kind in ["relay burst", *(kind_of(k, v) for v in variants for k in ("burst", "backlog"))]:
        picked = _pick(runs, kind, "bin")
        if picked:
            lines.append(f"{kind}: " + "; ".join(_answered(r) for r in picked))
    batch = batch_size(a)
    for v in variants:
        feed = median(runs, kind_of("device 0+0", v), "bin", "rate")
        if feed == feed:
            lines.append(f"worker{' ' + v if v else ''} on a double that takes no time: "
                         f"{feed:.0f} w/s, the most this host feeds a device (worker CPU "
                         f"{median(runs, kind_of('device 0+0', v), 'bin', '', _cpu('target')):.0f}"
                         " us/w)")
        for ms, per_frame in devices(a):
            kind = kind_of(f"device {ms:g}+{per_frame:g}", v)
            if not _pick(runs, kind, "bin"):
                continue
            capacity = batch / (ms + per_frame * batch) * 1000
            rate = median(runs, kind, "bin", "rate")
            lines.append(
                f"worker{' ' + v if v else ''} on the double at {ms:g} ms + {per_frame:g} "
                f"ms/frame, batch {batch} (capacity {capacity:.0f} w/s): {rate:.0f} w/s = "
                f"{rate / capacity:.2f} of it; device busy "
                f"{median(runs, kind, 'bin', 'device_busy'):.2f}, mean batch "
                f"{median(runs, kind, 'bin', 'mean_batch'):.1f}, worker CPU "
                f"{median(runs, kind, 'bin', '', _cpu('target')):.0f} us/w, p99 "
                f"{median(runs, kind, 'bin', '', _lat('p99')):.0f} ms")
    for v in variants:
        lines.extend(_targets(a, runs, forms, v))
    return "\n".join(lines)


def _answered(run: dict[str, Any]) -> str:
    sent = run["answered"] + run["errors"] + run["unanswered"]
    text = f"{run['answered']} of {sent} results"
    if run["errors"] or run["unanswered"]:
        text += f" ({run['errors']} errors, {run['unanswered']} unanswered)"
    if "drain_s" in run:
        text += f" in {run['drain_s']:.1f} s after the restart"
    return text


def _targets(a: argparse.Namespace, runs: list[dict[str, Any]], forms: list[str],
             variant: str) -> list[str]:
    out = [f"targets (issues #7 and #12), worker{' ' + variant if variant else ''}:"]

    def check(what: str, value: float, ok: bool) -> None:
        if value == value:
            out.append(f"  {'PASS' if ok else 'FAIL'}  {what}: {value:.2f}")

    worker = kind_of("worker", variant)
    w = median(runs, worker, "bin", "rate")
    for form in forms:
        ratio = _ratio(runs, worker, form, _rate)
        check(f"closed-loop throughput / relay's, {form} (>= 0.90)", ratio, ratio >= 0.9)
    ratio = _ratio(runs, worker, "bin", _cpu("target"))
    check("closed-loop CPU per window / relay's, bin (<= 1.25)", ratio, ratio <= 1.25)
    for kind, what in ((kind_of("burst", variant), "burst"),
                       (kind_of("backlog", variant), "restart backlog")):
        picked = _pick(runs, kind, "bin")
        if picked:
            short = sum(r["errors"] + r["unanswered"] for r in picked)
            out.append(f"  {'PASS' if short == 0 else 'FAIL'}  {what}: every window answered "
                       f"with a result, every round: {short} short")
    burst = kind_of("burst", variant)
    ratio = _ratio(runs, burst, "bin", _rate)
    check("burst results per second / relay's (>= 0.95)", ratio, ratio >= 0.95)
    ratio = _ratio(runs, burst, "bin", _cpu("target"))
    check("burst CPU per window / relay's (<= 1.10)", ratio, ratio <= 1.1)
    light = kind_of("latency-light", variant)
    for form in forms:
        for q, slack in (("p50", 1.0), ("p99", 2.0)):
            extra = median(runs, light, form, "", _lat(q)) - median(
                runs, "relay latency-light", form, "", _lat(q))
            check(f"{q} at {a.light_rate:g}/s minus the relay's, {form}, ms (<= {slack:g})",
                  extra, extra <= slack)
    batch = batch_size(a)
    feed = median(runs, kind_of("device 0+0", variant), "bin", "rate")
    for ms, per_frame in devices(a):
        kind = kind_of(f"device {ms:g}+{per_frame:g}", variant)
        busy = median(runs, kind, "bin", "device_busy")
        what = f"double {ms:g}+{per_frame:g} busy when overloaded (>= 0.95)"
        capacity = batch / (ms + per_frame * batch) * 1000
        ceiling, named = min((w, "stub ceiling"), (feed, "ceiling on a zero-time double"),
                             key=lambda c: c[0] if c[0] == c[0] else math.inf)
        if busy == busy and capacity > ceiling:
            # The host cannot feed the device that fast: no device overload to test.
            out.append(f"  n/a   {what}: {busy:.2f}, but host-bound (capacity "
                       f"{capacity:.0f} w/s > this worker's {named} {ceiling:.0f})")
            continue
        check(what, busy, busy >= 0.95)
    return out
