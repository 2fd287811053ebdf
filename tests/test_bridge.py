"""The real `hailo-bridge` process against a real Mosquitto and the real worker (stub mode)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from broker_util import Broker, start_broker
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import REPO, BridgeProcess, Collector, WorkerProcess, wait_until

from worker import wire
from worker.backends.stub import StubBackend
from worker.settings import WorkerSettings

StartBridge = Callable[..., BridgeProcess]
StartWorker = Callable[..., WorkerProcess]
SEED_BODY = {"x": [[0.0] * 9 for _ in range(100)]}


def window(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((100, 9)).astype(np.float32)


def stub_answer(x: np.ndarray) -> tuple[list[float], list[float]]:
    latent, motifs = StubBackend(WorkerSettings()).infer(x[None])
    return latent[0].tolist(), motifs[0].tolist()


def metric(text: str, line_start: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


@dataclass
class System:
    broker: Broker
    worker: WorkerProcess
    bridge: BridgeProcess
    log_dir: Path


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One broker, one stub worker and one bridge, shared by the tests that only need them up."""
    if os.environ.get("MQTT_TEST_BROKER") == "container":
        pytest.skip("container brokers are set up by tests/test_container_broker.py")
    tmp = tmp_path_factory.mktemp("bridge-system")
    broker = start_broker((REPO / "mosquitto" / "dev.conf").read_text(), tmp / "broker")
    worker = WorkerProcess(broker.port, log_dir=tmp).start()
    bridge: BridgeProcess | None = None
    try:
        bridge = BridgeProcess(broker.port, log_dir=tmp).start()
        with httpx.Client(base_url=bridge.url) as http:
            wait_until(lambda: http.get("/healthz").status_code == 200, 20, "a healthy bridge")
        yield System(broker, worker, bridge, tmp)
    finally:
        if bridge is not None:
            bridge.kill()
        worker.kill()
        broker.stop()


@pytest.fixture
def http(system: System) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.bridge.url, timeout=10) as client:
        yield client


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    started: list[BridgeProcess] = []

    def start(mqtt_port: int, **settings: Any) -> BridgeProcess:
        b = BridgeProcess(mqtt_port, log_dir=tmp_path, **settings).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.kill()


# -- the healthy path -------------------------------------------------------------------------


def test_seed_body_is_answered_with_the_stub_result(http: httpx.Client, system: System) -> None:
    r = http.post("/infer", json=SEED_BODY)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    latent, motifs = stub_answer(np.zeros((100, 9), np.float32))
    assert set(doc) == {"latent", "motif_scores", "model", "worker_id"}
    assert len(doc["latent"]) == 64 and len(doc["motif_scores"]) == 12
    assert doc["latent"] == latent and doc["motif_scores"] == motifs
    assert doc["model"] == "stub-v2" and doc["worker_id"] == system.worker.worker_id


def test_50_concurrent_requests_each_get_their_own_answer(system: System) -> None:
    windows = [window(1000 + i) for i in range(50)]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=system.bridge.url, timeout=10,
                                     limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/infer", json={"x": w.tolist()}) for w in windows))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 50
    for w, r in zip(windows, responses, strict=True):
        latent, motifs = stub_answer(w)
        assert r.json()["latent"] == latent and r.json()["motif_scores"] == motifs
    text = httpx.get(f"{system.bridge.url}/metrics").text
    assert metric(text, "hailo_bridge_pending_replies") == 0


def test_two_bridges_on_one_broker_get_only_their_own_answers(
    system: System, start_bridge: StartBridge
) -> None:
    other = start_bridge(system.broker.port)
    urls = [system.bridge.url, other.url] * 10
    windows = [window(2000 + i) for i in range(len(urls))]

    def late(url: str) -> float:
        return metric(httpx.get(f"{url}/metrics").text, "hailo_bridge_late_replies_total")

    late_before = late(system.bridge.url)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            wait = time.monotonic() + 10
            while (await client.get(f"{other.url}/healthz")).status_code != 200:
                assert time.monotonic() < wait, other.log()
                await asyncio.sleep(0.05)
            return await asyncio.gather(*(client.post(f"{u}/infer", json={"x": w.tolist()})
                                          for u, w in zip(urls, windows, strict=True)))

    for w, r in zip(windows, asyncio.run(run()), strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["latent"] == stub_answer(w)[0]
    # Neither saw the other's answers (they would count as replies nobody waited for).
    assert late(system.bridge.url) == late_before and late(other.url) == 0


def test_healthz_lists_the_live_worker(http: httpx.Client, system: System) -> None:
    r = http.get("/healthz")
    assert r.status_code == 200
    doc = r.json()
    assert doc["status"] == "ok" and "reason" not in doc
    (worker,) = doc["workers"]
    assert worker["worker_id"] == system.worker.worker_id and worker["state"] == "online"
    assert worker["mode"] == "stub" and "updated_at" in worker


def test_smoke_script_passes_against_the_running_system(system: System) -> None:
    missing = [t for t in ("curl", "jq") if not shutil.which(t)]
    if missing:
        pytest.skip(f"scripts/smoke.sh needs {', '.join(missing)}")
    env = {**os.environ, "BRIDGE_URL": system.bridge.url, "MQTT_HOST": "127.0.0.1",
           "MQTT_PORT": str(system.broker.port), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "smoke.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("OK")
    # And it says what failed, non-zero, when the bridge is not there.
    env["BRIDGE_URL"] = "http://127.0.0.1:1"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "smoke.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "FAIL: /healthz" in proc.stderr


# -- bad bodies -------------------------------------------------------------------------------

ROWS = [[0.0] * 9 for _ in range(100)]


def _with(value: str) -> bytes:
    rows = [["0"] * 9 for _ in range(100)]
    rows[3][2] = value
    return ('{"x": [' + ",".join("[" + ",".join(r) + "]" for r in rows) + "]}").encode()


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        (json.dumps({"x": ROWS[:99]}).encode(), "x", "at least 100 items"),
        (json.dumps({"x": [*ROWS, [0.0] * 9]}).encode(), "x", "at most 100 items"),
        (json.dumps({"x": [[0.0] * 8, *ROWS[1:]]}).encode(), "x[0]", "at least 9 items"),
        (_with('"a"'), "x[3][2]", "valid number"),
        (_with("true"), "x[3][2]", "valid number"),
        (_with("null"), "x[3][2]", "valid number"),
        (_with("NaN"), "x[3][2]", "finite number"),
        (_with("Infinity"), "x[3][2]", "finite number"),
        (_with("1e39"), "x[3][2]", "float32 range"),
        (b'{"y": 1}', "x", "Field required"),
        (b"[1, 2]", "body", "object"),
        (b"nope", "body", "Invalid JSON"),
        (b"", "body", "Invalid JSON"),
    ],
    ids=["99 rows", "101 rows", "8 columns", "string", "bool", "null", "NaN", "Infinity",
         "beyond float32", "no x", "not an object", "not JSON", "empty"],
)
def test_bad_body_gets_422_with_a_clear_message(
    http: httpx.Client, body: bytes, where: str, words: str
) -> None:
    r = http.post("/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["error"] == "invalid_body"
    assert doc["detail"].startswith(f"{where}: ") and words in doc["detail"], doc["detail"]
    assert "100 rows of 9 numbers" in doc["detail"]
    assert doc["errors"][0]["loc"] == where


def test_body_over_the_limit_gets_413_declared_or_streamed(http: httpx.Client) -> None:
    big = b" " * 300_000  # over the default BRIDGE_MAX_BODY_BYTES (262144)
    r = http.post("/infer", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert "300000 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        for _ in range(40):
            yield b" " * 10_000

    r = http.post("/infer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "more than" in r.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
    ids=["text", "form", "multipart", "none"],
)
def test_a_body_that_is_not_declared_json_gets_415(
    http: httpx.Client, system: System, content_type: str | None
) -> None:
    """What a web page may POST cross-origin without a preflight is refused, body unread."""
    body = json.dumps(SEED_BODY).encode()
    headers = {"content-type": content_type} if content_type else {}
    r = http.post("/infer", content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type"
    assert "application/json" in r.json()["detail"]
    assert r.headers["accept-post"] == "application/json"
    # Parameters and case do not matter for a JSON body.
    r = http.post("/infer", content=body,
                  headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_half_sent_headers_and_a_trickled_body_do_not_hold_the_bridge(
    http: httpx.Client,
) -> None:
    """A slow-loris client is cut off: its head within HEADER_TIMEOUT_S, its body within
    BODY_TIMEOUT_S; meanwhile and afterwards everyone else is answered."""
    from worker.bridge.server import BODY_TIMEOUT_S, HEADER_TIMEOUT_S

    host, port = http.base_url.host, http.base_url.port or 80
    loris = []
    for _ in range(51):
        s = socket.create_connection((host, port))
        s.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/")
        loris.append(s)
    started = time.monotonic()
    assert http.post("/infer", json=SEED_BODY).status_code == 200
    for s in loris:
        s.settimeout(HEADER_TIMEOUT_S + 5)
        assert s.recv(100) == b"", "the bridge kept a half-sent request head open"
        s.close()
    took = time.monotonic() - started
    assert HEADER_TIMEOUT_S - 1 < took < HEADER_TIMEOUT_S + 5, took

    body = json.dumps(SEED_BODY).encode()
    s = socket.create_connection((host, port))
    s.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
    s.settimeout(BODY_TIMEOUT_S + 5)
    reply = b""
    while chunk := s.recv(4096):  # the bridge closes the connection after its answer
        reply += chunk
    s.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"body_timeout" in reply
    assert http.get("/healthz").status_code == 200


# -- robustness -------------------------------------------------------------------------------


def test_malformed_statuses_and_replies_do_not_hurt_the_bridge(
    http: httpx.Client, system: System
) -> None:
    peer = Collector(system.broker.port, topics=["nothing/here"])
    try:
        for i, junk in enumerate([b"\xff\x00junk", b'{"state": NaN}', b"[1, 2]",
                                  b'{"state": 3}', b'{"state": "online", "n": Infinity}',
                                  b"[" * 100_000, b"{}"]):
            peer.publish(f"hailo/junk{i}/status", junk)
        reply_to = f"reply/{system.bridge.client_id}/infer"
        peer.publish(reply_to, b"junk without correlation data")
        peer.publish(reply_to, b"\xc1", correlation=b"nobody-asked")
        r = http.post("/infer", json=SEED_BODY)  # the broker has acknowledged all the junk
    finally:
        peer.close()
    assert r.status_code == 200
    health = http.get("/healthz").json()
    assert [w["worker_id"] for w in health["workers"]] == [system.worker.worker_id]
    assert system.bridge.proc is not None and system.bridge.proc.poll() is None
    assert "Traceback" not in system.bridge.log()


def test_metrics_count_requests_by_route_and_status(http: httpx.Client) -> None:
    http.post("/infer", json=SEED_BODY)
    http.post("/infer", content=b"nope", headers={"content-type": "application/json"})
    http.post("/infer", content=b"nope")
    http.get("/healthz")
    http.get("/no-such-page")
    text = http.get("/metrics").text
    assert metric(text, 'hailo_bridge_requests_total{route="/infer",status="200"}') >= 1
    assert metric(text, 'hailo_bridge_requests_total{route="/infer",status="422"}') >= 1
    assert metric(text, 'hailo_bridge_requests_total{route="/infer",status="415"}') >= 1
    assert metric(text, 'hailo_bridge_requests_total{route="/healthz",status="200"}') >= 1
    assert metric(text, 'hailo_bridge_requests_total{route="other",status="404"}') == 1
    assert metric(text, "hailo_bridge_requests_in_flight") == 1  # this very request
    assert metric(text, 'hailo_bridge_request_seconds_count{route="/infer"}') >= 2
    assert metric(text, "hailo_bridge_worker_seconds_count") >= 1
    assert metric(text, "hailo_bridge_broker_connected") == 1
    assert metric(text, "hailo_bridge_workers_online") == 1
    assert 'hailo_bridge_request_seconds_bucket{le="0.01",route="/infer"}' in text


def test_openapi_describes_the_routes(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert {"/healthz", "/infer", "/metrics"} <= set(spec["paths"])
    infer = spec["paths"]["/infer"]["post"]
    schema = infer["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["x"]["minItems"] == 100
    assert schema["properties"]["x"]["items"]["maxItems"] == 9
    assert {"200", "413", "422", "502", "503", "504"} <= set(infer["responses"])
    assert "401" not in infer["responses"]  # no BRIDGE_TOKEN on this bridge
    assert http.get("/docs").status_code == 200


def test_token_guards_infer_but_not_healthz(system: System, start_bridge: StartBridge) -> None:
    b = start_bridge(system.broker.port, bridge_token="s3cret")
    with httpx.Client(base_url=b.url, timeout=10) as client:
        # No waiting: the bridge starts serving once it has every retained status.
        assert client.get("/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"},
                        {"Authorization": "Bearer s3cret2"}, {"Authorization": "Bearer"}):
            r = client.post("/infer", json=SEED_BODY, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"] == "unauthorized"
        # Unauthenticated requests learn nothing about the body either.
        assert client.post("/infer", content=b"nope").status_code == 401
        r = client.post("/infer", json=SEED_BODY, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and len(r.json()["latent"]) == 64
        assert "401" in client.get("/openapi.json").json()["paths"]["/infer"]["post"]["responses"]
    assert "s3cret" not in b.log()


# -- workers coming and going (each test has its own broker) ----------------------------------


def _health(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{url}/healthz", timeout=5)
    return r.status_code, r.json()


def wait_health(url: str, status: int, words: str = "", timeout: float = 20) -> dict[str, Any]:
    seen: list[Any] = []

    def ok() -> bool:
        code, doc = _health(url)
        seen[:] = [code, doc]
        return code == status and words in doc.get("reason", "")

    try:
        wait_until(ok, timeout, f"/healthz {status} {words!r}")
    except AssertionError:
        raise AssertionError(f"last /healthz: {seen}") from None
    return seen[1]  # type: ignore[no-any-return]


def test_healthz_and_infer_follow_the_workers_life(
    broker: Any, start_worker: StartWorker, start_bridge: StartBridge
) -> None:
    b = start_bridge(broker.port)
    code, doc = _health(b.url)
    assert code == 503 and doc["status"] == "unavailable" and "no worker" in doc["reason"]
    started = time.monotonic()
    r = httpx.post(f"{b.url}/infer", json=SEED_BODY)
    assert r.status_code == 503 and r.json()["error"] == "unavailable"
    assert time.monotonic() - started < 1  # fails fast, does not wait BRIDGE_TIMEOUT_MS

    w = start_worker(worker_id="w-life")
    doc = wait_health(b.url, 200)
    assert [x["worker_id"] for x in doc["workers"]] == ["w-life"]
    assert httpx.post(f"{b.url}/infer", json=SEED_BODY).status_code == 200

    assert w.stop() == 0
    doc = wait_health(b.url, 503, "w-life stopped")
    assert doc["workers"][0]["state"] == "stopped"
    assert httpx.post(f"{b.url}/infer", json=SEED_BODY).status_code == 503

    w = start_worker(worker_id="w-life")
    wait_health(b.url, 200)
    w.kill()
    doc = wait_health(b.url, 503, "w-life offline", timeout=60)
    assert doc["workers"] == [{"state": "offline", "worker_id": "w-life"}]
    assert b.stop() == 0  # SIGTERM: a clean exit


def _status(state: str, worker_id: str, updated: datetime) -> bytes:
    return json.dumps({"state": state, "worker_id": worker_id, "mode": "stub", "model": "m",
                       "updated_at": updated.isoformat(timespec="milliseconds")}).encode()


def test_stale_and_degraded_workers_do_not_count(
    broker: Any, collector: Collector, start_bridge: StartBridge
) -> None:
    now = datetime.now(timezone.utc)
    # Retained long ago by a worker that vanished without its will reaching anyone.
    collector.client.publish("hailo/ghost/status", _status("online", "ghost", now - timedelta(
        hours=2)), qos=1, retain=True).wait_for_publish(5)
    b = start_bridge(broker.port, status_interval_s=0.5)
    code, doc = _health(b.url)
    assert code == 503 and "ghost online but stale" in doc["reason"], doc
    assert httpx.post(f"{b.url}/infer", json=SEED_BODY).status_code == 503

    collector.publish("hailo/deg/status", _status("degraded", "deg", now))
    wait_health(b.url, 503, "deg degraded")
    # A live status is fresh for 3 x STATUS_INTERVAL_S (1.5 s here), then stale.
    collector.publish("hailo/live/status", _status("online", "live", now))
    doc = wait_health(b.url, 200, timeout=1)
    assert "live" in {w["worker_id"] for w in doc["workers"]}
    wait_health(b.url, 503, "live online but stale", timeout=5)


def test_broker_outage_answers_503_at_once_and_recovers(
    broker: Any, start_worker: StartWorker, start_bridge: StartBridge
) -> None:
    if not isinstance(broker, Broker):
        pytest.skip("needs a broker that can be stopped and started on the same port")
    start_worker(worker_id="w-out")
    b = start_bridge(broker.port)
    wait_health(b.url, 200)
    broker.stop()
    doc = wait_health(b.url, 503, "broker unreachable", timeout=5)
    assert doc["status"] == "unavailable"
    started = time.monotonic()
    r = httpx.post(f"{b.url}/infer", json=SEED_BODY)
    assert r.status_code == 503 and "broker unreachable" in r.json()["detail"]
    assert time.monotonic() - started < 1
    broker.start()  # same port; paho's backoff reconnects both clients
    wait_health(b.url, 200, timeout=30)
    assert httpx.post(f"{b.url}/infer", json=SEED_BODY).status_code == 200


# -- a scripted worker: error mapping, timeouts, what the bridge sends ------------------------


class ScriptedWorker:
    """A peer that takes the worker's side of the contract and answers as `script` says.

    `script(x)` returns (payload, delay_s) or None for no answer at all.
    """

    def __init__(self, port: int, script: Callable[[np.ndarray], tuple[bytes, float] | None]
                 ) -> None:
        self.script = script
        self.received: list[mqtt.MQTTMessage] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scripted",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("imu/+/window", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5)
        status = _status("online", "scripted", datetime.now(timezone.utc))
        self.client.publish("hailo/scripted/status", status, qos=1, retain=True).wait_for_publish(5)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received.append(msg)
        answer = self.script(wire.decode_window(msg.payload, 100, 9).x)
        if answer is None:
            return
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData
        payload, delay = answer
        threading.Timer(delay, client.publish, (msg.properties.ResponseTopic, payload, 1),
                        {"properties": props}).start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _error(code: str) -> bytes:
    return wire.encode({"sensor_id": "bridge", "error": code, "detail": f"it was {code}"},
                       "msgpack")


def _result(latent: int = 64, encoding: wire.Encoding = "msgpack") -> bytes:
    return wire.encode({"sensor_id": "bridge", "latent": [0.5] * latent,
                        "motif_scores": [0.25] * 12, "model": "scripted-v1",
                        "worker_id": "scripted", "batch_size": 1, "latency_ms": 0.1}, encoding)


SCRIPT: dict[int, tuple[bytes, float] | None] = {
    1: (_error("overloaded"), 0),
    2: (_error("inference_failed"), 0),
    3: (_error("invalid_shape"), 0),
    4: (_error("something_new"), 0),
    5: (b"\xc1 not msgpack", 0),
    6: (_result(latent=3), 0),
    7: (_result(encoding="json"), 0),
    8: None,  # never answered
    9: (_result(), 0.6),  # answered after the bridge gave up
}


def test_worker_answers_are_mapped_to_http(
    broker: Any, start_bridge: StartBridge
) -> None:
    worker = ScriptedWorker(broker.port, lambda x: SCRIPT[int(x[0, 0])])
    try:
        b = start_bridge(broker.port, bridge_timeout_ms=300, status_interval_s=30)
        wait_health(b.url, 200)

        def infer(case: int) -> httpx.Response:
            body = {"x": [[float(case)] + [0.5] * 8] + [[0.0] * 9] * 99}
            return httpx.post(f"{b.url}/infer", json=body, timeout=5)

        r = infer(1)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": "overloaded", "detail": "it was overloaded"}
        for case, status, code in ((2, 502, "inference_failed"), (3, 422, "invalid_shape"),
                                   (4, 502, "something_new"), (5, 502, "bad_reply"),
                                   (6, 502, "bad_reply")):
            r = infer(case)
            assert (r.status_code, r.json()["error"]) == (status, code), r.text
        r = infer(7)
        assert r.status_code == 200 and r.json() == {
            "latent": [0.5] * 64, "motif_scores": [0.25] * 12, "model": "scripted-v1",
            "worker_id": "scripted"}
        for case in (8, 9):
            started = time.monotonic()
            r = infer(case)
            assert r.status_code == 504 and r.json()["error"] == "timeout"
            assert 0.3 <= time.monotonic() - started < 1.5
        wait_until(lambda: metric(httpx.get(f"{b.url}/metrics").text,
                                  "hailo_bridge_late_replies_total") == 1, 5, "the late reply")
        text = httpx.get(f"{b.url}/metrics").text
        assert metric(text, "hailo_bridge_pending_replies") == 0  # the timed-out are forgotten
        assert metric(text, "hailo_bridge_timeouts_total") == 2
        assert metric(text, 'hailo_bridge_worker_errors_total{code="overloaded"}') == 1
    finally:
        worker.close()

    # What the bridge sent: the compact bin form, QoS 1, a reply topic of its own, fresh ids.
    assert len(worker.received) == 9
    correlations = set()
    for msg in worker.received:
        assert msg.topic == "imu/bridge/window" and msg.qos == 1
        assert msg.properties.ResponseTopic.startswith(f"reply/{b.client_id}/")
        assert msg.properties.ContentType == "application/msgpack"
        doc = wire.decode(msg.payload)
        assert isinstance(doc["x"], bytes) and doc["shape"] == [100, 9] and doc["dtype"] == "<f4"
        correlations.add(msg.properties.CorrelationData)
    assert len(correlations) == 9


# -- the command line -------------------------------------------------------------------------


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.bridge.cli", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
                          cwd=REPO)


def test_without_its_extra_the_bridge_says_what_to_install(tmp_path: Path) -> None:
    """`pip install .` alone leaves out uvicorn and FastAPI (the `bridge` extra)."""
    for missing in ("uvicorn", "fastapi"):
        shadow = tmp_path / missing / missing
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text(
            f"raise ModuleNotFoundError('No module named {missing}', name='{missing}')\n")
        env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
        done = subprocess.run([sys.executable, "-m", "worker.bridge.cli"], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        assert done.stderr == (f"hailo-bridge: {missing} is not installed; the bridge needs its "
                               "extra: pip install 'hailo-edge-worker[bridge]'\n")


def test_help_lists_the_settings() -> None:
    proc = _cli("--help")
    assert proc.returncode == 0
    for name in ("BRIDGE_HOST", "BRIDGE_PORT", "BRIDGE_TOKEN", "BRIDGE_TIMEOUT_MS",
                 "BRIDGE_MAX_BODY_BYTES", "MQTT_HOST", "STATUS_INTERVAL_S"):
        assert name in proc.stdout, name


def test_print_config_masks_the_token() -> None:
    proc = _cli("--print-config", BRIDGE_TOKEN="hunter2", BRIDGE_PORT="9100")
    assert proc.returncode == 0
    cfg = json.loads(proc.stdout)
    assert cfg["BRIDGE_TOKEN"] == "****" and cfg["BRIDGE_PORT"] == 9100
    assert "hunter2" not in proc.stdout


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"BRIDGE_PORT": "0"}, "BRIDGE_PORT"),
        ({"BRIDGE_TIMEOUT_MS": "soon"}, "BRIDGE_TIMEOUT_MS"),
        ({"BRIDGE_CLIENT_ID": "a/b"}, "BRIDGE_CLIENT_ID"),
        ({"MQTT_CA_FILE": "/nonexistent/ca.pem"}, "MQTT_CA_FILE"),
    ],
)
def test_bad_setting_stops_with_one_line_naming_it(env: dict[str, str], name: str) -> None:
    proc = _cli(**env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in proc.stderr, proc.stderr
