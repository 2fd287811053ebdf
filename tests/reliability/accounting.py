"""The exactly-once ledger every reliability test shares.

A window is registered (`Ledger.expect`) before it is published, keyed by (sensor_id, seq), with
the answers that would be correct for it. The ledger listens to `infer/+/result` and
`infer/+/error` on a persistent session (so answers published while it is reconnecting after a
broker restart still reach it) and `Ledger.report()` says what does not add up: windows never
answered, windows answered more than once, and answers that are wrong (a result that differs
from the reference, an unexpected error code, a seq that was not echoed).

A malformed payload has no trustworthy seq, so it is published under a sensor id of its own and
registered with seq None: its answer is matched by topic alone.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import wait_until

from worker import wire
from worker.backends.stub import StubBackend
from worker.settings import WorkerSettings

Key = tuple[str, "int | None"]
RESULT = "result"
LEDGER_SESSION_S = 600


def window_x(sensor_id: str, seq: int, length: int = 100, channels: int = 9) -> np.ndarray:
    """The window a sensor publishes as `seq`: regenerated for checking, never stored."""
    seed = zlib.crc32(f"{sensor_id}/{seq}".encode())
    return np.random.default_rng(seed).standard_normal((length, channels)).astype(np.float32)


@dataclass(frozen=True)
class Expect:
    """What a correct answer to one window looks like."""

    outcomes: frozenset[str]
    """"result" and/or the error codes that are a correct answer."""
    seq: int | None = None
    """The seq the answer must echo (None: must not carry one), unless `any_seq`."""
    any_seq: bool = False
    """A payload whose seq cannot be known in advance (random bytes): do not check it."""

    @staticmethod
    def result(seq: int, *also: str) -> Expect:
        return Expect(frozenset((RESULT, *also)), seq)

    @staticmethod
    def error(code: str, seq: int | None = None, *, any_seq: bool = False) -> Expect:
        return Expect(frozenset((code,)), seq, any_seq)


@dataclass(frozen=True)
class Answer:
    t: float
    """time.monotonic() when the ledger received it."""
    outcome: str
    """"result" or the error code."""
    doc: dict[str, Any]


def stub_reference(keys: Iterable[Key]) -> dict[Key, tuple[list[float], list[float]]]:
    """The stub backend's answer for each window: bit-identical whatever batch it rode in."""
    keys = [k for k in keys if k[1] is not None]
    if not keys:
        return {}
    x = np.stack([window_x(s, q) for s, q in keys if q is not None])
    latent, motifs = StubBackend(WorkerSettings()).infer(x)
    return {k: (latent[i].tolist(), motifs[i].tolist()) for i, k in enumerate(keys)}


def cpu_reference(keys: Iterable[Key]) -> dict[Key, tuple[list[float], list[float]]]:
    """The reference ONNX model on onnxruntime: what `cpu`, and `hailo` on the double, answer."""
    from worker.backends.cpu import CpuBackend

    keys = [k for k in keys if k[1] is not None]
    if not keys:
        return {}
    backend = CpuBackend(WorkerSettings(infer_mode="cpu"))
    out: dict[Key, tuple[list[float], list[float]]] = {}
    for i in range(0, len(keys), 64):
        part = keys[i:i + 64]
        latent, motifs = backend.infer(np.stack([window_x(s, q) for s, q in part
                                                 if q is not None]))
        out.update({k: (latent[j].tolist(), motifs[j].tolist()) for j, k in enumerate(part)})
    backend.close()
    return out


Reference = Callable[[Iterable[Key]], dict[Key, tuple[list[float], list[float]]]]


@dataclass
class Report:
    published: int
    missing: list[Key]
    duplicates: dict[Key, int]
    """Windows answered more than once: key -> number of answers."""
    wrong: list[str]
    unmatched: list[Answer]
    outcomes: Counter[str]
    """First answers by outcome ("result", or the error code)."""
    worker_latency_ms: list[float]
    """Results' own latency_ms (receipt to publish, inside the worker)."""
    e2e_ms: list[float]
    """Publish to first answer, seen from the ledger (includes any time the worker was down)."""
    served_by: Counter[str]

    @property
    def extra_answers(self) -> int:
        return sum(n - 1 for n in self.duplicates.values())

    def summary(self) -> str:
        def pct(values: list[float], p: float) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(len(ordered) * p))]:.1f}"

        return (
            f"published {self.published}, missing {len(self.missing)}, "
            f"duplicated {len(self.duplicates)} (+{self.extra_answers} answers), "
            f"wrong {len(self.wrong)}, unmatched {len(self.unmatched)}; "
            f"outcomes {dict(self.outcomes)}; worker latency ms p50 "
            f"{pct(self.worker_latency_ms, 0.5)} p99 {pct(self.worker_latency_ms, 0.99)} max "
            f"{pct(self.worker_latency_ms, 1.0)}; end-to-end ms p50 {pct(self.e2e_ms, 0.5)} "
            f"p99 {pct(self.e2e_ms, 0.99)} max {pct(self.e2e_ms, 1.0)}; "
            f"served by {dict(self.served_by)}"
        )

    def assert_clean(self, allow_duplicate: Callable[[Key], bool] | None = None) -> None:
        """Every window answered, correctly; duplicates only where `allow_duplicate` says."""
        problems: list[str] = []
        if self.missing:
            problems.append(f"{len(self.missing)} never answered, e.g. {self.missing[:5]}")
        if self.wrong:
            problems.append(f"{len(self.wrong)} wrong answers, e.g. {self.wrong[:5]}")
        if self.unmatched:
            problems.append(f"{len(self.unmatched)} answers to windows nobody sent, e.g. "
                            f"{[a.doc for a in self.unmatched[:3]]}")
        bad_dups = [k for k in self.duplicates if allow_duplicate is None or not allow_duplicate(k)]
        if bad_dups:
            problems.append(f"{len(bad_dups)} answered more than once, e.g. "
                            f"{[(k, self.duplicates[k]) for k in bad_dups[:5]]}")
        assert not problems, "; ".join(problems) + f"\n{self.summary()}"


class Ledger:
    """Expected windows and the answers seen, over a persistent MQTT v5 session."""

    def __init__(self, port: int, *, reference: Reference = stub_reference,
                 tolerance: float = 0.0, ignore: Iterable[str] = ()) -> None:
        self.port = port
        self.reference = reference
        self.tolerance = tolerance
        """0: results must equal the reference bit for bit (the stub's promise)."""
        self.ignore = frozenset(ignore)
        """Sensor ids whose answers are someone else's business (the HTTP bridge's)."""
        self._lock = threading.Lock()
        self.expected: dict[Key, Expect] = {}
        self.published_at: dict[Key, float] = {}
        self.answers: dict[Key, list[Answer]] = {}
        self.unmatched: list[Answer] = []
        self.statuses: list[tuple[float, dict[str, Any], bool]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"ledger-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self._topics = [("infer/+/result", 1), ("infer/+/error", 1), ("hailo/+/status", 1)]
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = LEDGER_SESSION_S
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("the ledger could not subscribe")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        # Resubscribing is harmless when the session survived, and needed when it did not.
        client.subscribe(self._topics)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        parts = msg.topic.split("/")
        if parts[0] == "hailo":
            with self._lock:
                self.statuses.append((now, json.loads(msg.payload), bool(msg.retain)))
            return
        if parts[1] in self.ignore:
            return
        try:
            doc = wire.decode(msg.payload)
            if not isinstance(doc, dict):
                raise TypeError(type(doc).__name__)
            answer = Answer(now, doc["error"] if parts[2] == "error" else RESULT, doc)
        except Exception:  # an answer that breaks the contract is a finding, not a crash here
            with self._lock:
                self.unmatched.append(Answer(now, "undecodable", {"raw": bytes(msg.payload)}))
            return
        with self._lock:
            key: Key = (parts[1], doc.get("seq"))
            if key not in self.expected:
                key = (parts[1], None)
            if key in self.expected:
                self.answers.setdefault(key, []).append(answer)
            else:
                self.unmatched.append(answer)

    # -- what was sent -----------------------------------------------------------------------

    def expect(self, key: Key, expect: Expect) -> None:
        with self._lock:
            if key in self.expected:
                raise ValueError(f"{key} registered twice")
            self.expected[key] = expect
            self.published_at[key] = time.monotonic()

    # -- what came back ----------------------------------------------------------------------

    def unanswered(self) -> int:
        with self._lock:
            return sum(1 for k in self.expected if not self.answers.get(k))

    def wait_complete(self, timeout: float, settle_s: float = 0.5) -> None:
        """Wait until every registered window has an answer, then a moment for duplicates."""
        try:
            wait_until(lambda: self.unanswered() == 0, timeout, "every window answered")
        except AssertionError:
            raise AssertionError(f"{self.unanswered()} windows still unanswered after "
                                 f"{timeout:.0f} s\n{self.report().summary()}") from None
        time.sleep(settle_s)

    def snapshot(self) -> dict[Key, list[Answer]]:
        """The answers so far, copied (paho's thread keeps adding to the live ones)."""
        with self._lock:
            return {k: list(v) for k, v in self.answers.items()}

    def first_answer_at(self, key: Key) -> float | None:
        with self._lock:
            answers = self.answers.get(key)
            return answers[0].t if answers else None

    def states(self, worker_id: str) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, d["state"]) for t, d, _ in self.statuses
                    if d.get("worker_id") == worker_id]

    def wait_state(self, worker_id: str, state: str, after: float = 0.0,
                   timeout: float = 20) -> float:
        """When `worker_id` said `state` (at or after monotonic time `after`)."""
        def seen() -> float | None:
            return next((t for t, s in self.states(worker_id) if s == state and t >= after), None)

        wait_until(lambda: seen() is not None, timeout, f"{worker_id} to say {state}")
        found = seen()
        assert found is not None
        return found

    def report(self) -> Report:
        with self._lock:
            expected = dict(self.expected)
            answers = {k: list(v) for k, v in self.answers.items()}
            unmatched = list(self.unmatched)
            published_at = dict(self.published_at)
        results = [k for k, a in answers.items() if any(x.outcome == RESULT for x in a)]
        reference = self.reference(results)
        wrong: list[str] = []
        outcomes: Counter[str] = Counter()
        served_by: Counter[str] = Counter()
        latency: list[float] = []
        e2e: list[float] = []
        for key, got in answers.items():
            exp = expected[key]
            outcomes[got[0].outcome] += 1
            e2e.append((got[0].t - published_at[key]) * 1000)
            for a in got:
                problem = _check(key, exp, a, reference, self.tolerance)
                if problem:
                    wrong.append(problem)
                if a.outcome == RESULT:
                    served_by[a.doc.get("worker_id", "?")] += 1
                    latency.append(float(a.doc["latency_ms"]))
        return Report(
            published=len(expected),
            missing=[k for k in expected if k not in answers],
            duplicates={k: len(a) for k, a in answers.items() if len(a) > 1},
            wrong=wrong,
            unmatched=unmatched,
            outcomes=outcomes,
            worker_latency_ms=latency,
            e2e_ms=e2e,
            served_by=served_by,
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _check(key: Key, exp: Expect, a: Answer,
           reference: dict[Key, tuple[list[float], list[float]]], tolerance: float) -> str | None:
    sensor = key[0]
    if a.doc.get("sensor_id") != sensor:
        return f"{key}: sensor_id {a.doc.get('sensor_id')!r}"
    if a.outcome not in exp.outcomes:
        return (f"{key}: answered {a.outcome!r} ({a.doc.get('detail')}), "
                f"expected {set(exp.outcomes)}")
    if not exp.any_seq and a.doc.get("seq") != exp.seq:
        return f"{key}: seq {a.doc.get('seq')!r}, expected {exp.seq!r} ({a.outcome})"
    if a.outcome != RESULT:
        return None if a.doc.get("detail") else f"{key}: error without a detail"
    want = reference.get(key)
    if want is None:
        return None
    got = (a.doc["latent"], a.doc["motif_scores"])
    if tolerance == 0.0:
        same = got == want
    else:
        same = all(len(g) == len(w) and np.allclose(g, w, rtol=0, atol=tolerance)
                   for g, w in zip(got, want, strict=True))
    return None if same else f"{key}: result differs from the reference answer"


@dataclass
class Sensors:
    """Sensors publishing QoS 1 windows through one paho client that reconnects on its own."""

    port: int
    ledger: Ledger
    names: list[str]
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
    seq: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.seq = dict.fromkeys(self.names, 0)
        self._next = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"sensors-{uuid.uuid4().hex[:8]}",
                                  protocol=self.protocol)
        # Windows published while the broker is away wait in paho and are sent on reconnect.
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(1, 2)
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not connected.wait(5):
            raise AssertionError("the sensors could not connect")

    def publish_window(self, sensor: str | None = None, *, also: Iterable[str] = (),
                       form: str = "bin") -> Key:
        """The next window of `sensor` (round robin if None); a result is the right answer.

        `form`: the compact msgpack bin, msgpack lists of lists, or JSON; the stub's answer is
        the same for all three.
        """
        if sensor is None:
            sensor = self.names[self._next % len(self.names)]
            self._next += 1
        seq = self.seq[sensor]
        self.seq[sensor] = seq + 1
        key: Key = (sensor, seq)
        x, ts = window_x(sensor, seq), 1_700_000_000.0 + seq
        if form == "json":
            payload = json.dumps({"x": x.tolist(), "seq": seq, "ts": ts}).encode()
        else:
            payload = wire.encode_window(x, seq=seq, ts=ts, compact=form == "bin")
        self.publish_raw(sensor, payload, key, Expect.result(seq, *also))
        return key

    def publish_raw(self, sensor: str, payload: bytes, key: Key, expect: Expect) -> None:
        self.ledger.expect(key, expect)
        self.client.publish(f"imu/{sensor}/window", payload, qos=1)
        self.published += 1

    def start(self, rate: float, duration: float | None = None,
              also: Iterable[str] = ()) -> Sensors:
        """Publish `rate` windows a second (all sensors together) in the background."""
        also = tuple(also)

        def loop() -> None:
            started = time.monotonic()
            sent = 0
            while not self._stop.is_set():
                elapsed = time.monotonic() - started
                if duration is not None and elapsed >= duration:
                    return
                due = int(elapsed * rate) + 1 - sent
                for _ in range(max(0, due)):
                    self.publish_window(also=also)
                    sent += 1
                self._stop.wait(min(0.01, 1 / rate))

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="sensors", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float = 60) -> None:
        """Wait for a run started with a duration to end."""
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def wait_delivered(self, timeout: float = 20) -> None:
        """Wait until the broker has acknowledged every window (nothing left in paho)."""
        wait_until(lambda: not self.client._out_messages, timeout,
                   "the broker to acknowledge every window")

    def close(self) -> None:
        self.stop()
        self.client.disconnect()
        self.client.loop_stop()
