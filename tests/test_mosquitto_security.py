"""The production broker config in mosquitto/: users, roles, ACL, TLS, WebSocket, persistence.

Mosquitto runs with exactly the repo's files: mosquitto.conf and conf.d/tls.conf.in, started by
start.sh; passwd, roles and acl made by add-user.sh. Only ports (free loopback ones) and paths
(tmp dirs) are rewritten. Each rule is checked with paho-mqtt v5 clients over real sockets, over
plain TCP and over TLS (a throwaway CA from gen-test-certs.sh), and over WebSocket where the
rule is about listeners. The deployment and the client are in mosquitto_prod.py.

A denied publish is dropped silently for QoS 0; for QoS 1, Mosquitto 2.0.11 answers a v5 client
with PUBACK reason 0x87 (Not authorized). A SUBSCRIBE is always granted; read access is checked
for each message delivered. So "never arrives" is proven with a marker: the observer collects
messages until a permitted marker, published after the denied message was acknowledged, comes;
Mosquitto handles packets in order, so a leaked message would be there before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import queue
import secrets
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from broker_util import Broker
from mosquitto_prod import (
    ADD_USER,
    MOSQ,
    MQTT_PORT,
    NO_SUBSCRIBERS,
    NOT_AUTHORIZED,
    PASSWORDS,
    START,
    SUCCESS,
    TLS_PORT,
    WS_PORT,
    Deployment,
    Endpoint,
    Peer,
    add_user,
    make_deployment,
    marker,
    run_broker,
    wait_for,
)
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from support import REPO, BridgeProcess, WorkerProcess

from worker.wire import decode, encode_window


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return make_deployment(tmp_path_factory.mktemp("deployment"))


@pytest.fixture(scope="module")
def prod_broker(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    b = run_broker(deployment, tmp_path_factory.mktemp("broker"))
    yield b
    b.stop()


@pytest.fixture(scope="module", params=["tcp", "tls"])
def ep(request: pytest.FixtureRequest, prod_broker: Broker, deployment: Deployment) -> Endpoint:
    ca = deployment.certs / "ca.crt" if request.param == "tls" else None
    return Endpoint(request.param, 0, ca).on(prod_broker)


@pytest.fixture
def connect(ep: Endpoint) -> Iterator[Callable[..., Peer]]:
    """connect(user, **options) -> a connected Peer (closed after the test)."""
    opened: list[Peer] = []

    def make(user: str | None, *, at: Endpoint | None = None, **options: Any) -> Peer:
        peer = Peer(at or ep, user, **options)
        opened.append(peer)
        code = peer.connect()
        assert code == SUCCESS, f"{user} refused: {code:#x}"
        return peer

    yield make
    for peer in opened:
        peer.close()


# --- authentication --------------------------------------------------------------------------


def test_anonymous_and_bad_passwords_are_refused(ep: Endpoint) -> None:
    assert Peer(ep, None).connect() == NOT_AUTHORIZED
    # 2.0.11 answers a wrong password with 0x87 too, not 0x86 (bad user name or password).
    assert Peer(ep, "s1", password="not-the-password").connect() == NOT_AUTHORIZED
    assert Peer(ep, "nobody", password="x").connect() == NOT_AUTHORIZED


def test_websocket_listener_serves_dashboards(
    prod_broker: Broker, connect: Callable[..., Peer]
) -> None:
    ws = Endpoint("ws", 0).on(prod_broker)
    assert Peer(ws, None).connect() == NOT_AUTHORIZED
    dashboard = connect("dashboard", at=ws)
    dashboard.subscribe("infer/+/result")
    done = marker()
    assert connect("worker").publish("infer/s1/result", done) == SUCCESS
    assert dashboard.until(done) == [("infer/s1/result", done)]


# --- sensors ---------------------------------------------------------------------------------


def test_sensor_publishes_only_its_own_windows(connect: Callable[..., Peer]) -> None:
    worker = connect("worker")
    worker.subscribe("imu/+/window")
    s1 = connect("s1")
    assert s1.publish("imu/s2/window", b"forged") == NOT_AUTHORIZED
    assert s1.publish("imu/s2/window", b"forged-qos0", qos=0) == SUCCESS  # dropped silently
    assert s1.publish("imu/bridge/window", b"forged") == NOT_AUTHORIZED
    done = marker()
    assert s1.publish("imu/s1/window", done) == SUCCESS
    assert worker.until(done) == [("imu/s1/window", done)]


def test_sensor_cannot_forge_answers_or_statuses(connect: Callable[..., Peer]) -> None:
    dashboard = connect("dashboard")
    dashboard.subscribe("infer/+/result", "infer/+/error", "hailo/+/status")
    s1 = connect("s1")
    for topic in ("infer/s1/result", "infer/s2/error", "hailo/worker/status"):
        assert s1.publish(topic, b"forged") == NOT_AUTHORIZED, topic
    done = marker()
    connect("worker").publish("infer/s1/result", done)
    assert dashboard.until(done) == [("infer/s1/result", done)]


def test_sensor_reads_only_its_own_results_and_errors(connect: Callable[..., Peer]) -> None:
    s1 = connect("s1")
    # Mosquitto 2.0 grants every subscription; what the ACL withholds is each delivery.
    assert s1.subscribe("infer/+/result", "infer/+/error", "hailo/+/status", "imu/+/window") == [
        1, 1, 1, 1,
    ]
    worker = connect("worker")
    for topic in ("infer/s2/result", "infer/s2/error", "hailo/worker/status"):
        assert worker.publish(topic, b"not for s1") == SUCCESS
    assert connect("s2").publish("imu/s2/window", b"not for s1") == SUCCESS
    error, done = marker(), marker()
    worker.publish("infer/s1/error", error)
    worker.publish("infer/s1/result", done)
    assert s1.until(done) == [("infer/s1/error", error), ("infer/s1/result", done)]


def test_a_user_missing_from_the_roles_file_is_a_sensor(connect: Callable[..., Peer]) -> None:
    worker = connect("worker")
    worker.subscribe("imu/+/window")
    s3 = connect("s3")
    s3.subscribe("infer/+/result")
    assert s3.publish("imu/s1/window", b"forged") == NOT_AUTHORIZED
    window = marker()
    assert s3.publish("imu/s3/window", window) == SUCCESS
    assert worker.until(window) == [("imu/s3/window", window)]
    worker.publish("infer/s1/result", b"not for s3")
    done = marker()
    worker.publish("infer/s3/result", done)
    assert s3.until(done) == [("infer/s3/result", done)]


# --- dashboard -------------------------------------------------------------------------------


def test_dashboard_reads_results_errors_and_statuses_only(connect: Callable[..., Peer]) -> None:
    dashboard = connect("dashboard")
    dashboard.subscribe(
        "infer/+/result", "infer/+/error", "hailo/+/status", "imu/+/window", "reply/#"
    )
    assert connect("s1").publish("imu/s1/window", b"window") == SUCCESS
    worker = connect("worker")
    worker.publish(f"reply/{dashboard.client_id}/1", b"reply")
    status, error, done = marker(), marker(), marker()
    worker_id = "worker"  # a worker writes only its own status
    worker.publish(f"hailo/{worker_id}/status", status, retain=True)
    worker.publish("infer/s2/error", error)
    worker.publish("infer/s1/result", done)
    assert dashboard.until(done) == [
        (f"hailo/{worker_id}/status", status),
        ("infer/s2/error", error),
        ("infer/s1/result", done),
    ]
    worker.publish(f"hailo/{worker_id}/status", b"", retain=True)  # clear the retained status


def test_dashboard_cannot_publish(connect: Callable[..., Peer]) -> None:
    worker = connect("worker")
    worker.subscribe("imu/+/window")
    dashboard = connect("dashboard")
    for topic in (
        "imu/dashboard/window", "imu/s1/window", "infer/s1/result", "infer/s1/error",
        "hailo/worker/status", "reply/x/1",
    ):
        assert dashboard.publish(topic, b"forged") == NOT_AUTHORIZED, topic
    done = marker()
    connect("s1").publish("imu/s1/window", done)
    assert worker.until(done) == [("imu/s1/window", done)]


# --- worker ----------------------------------------------------------------------------------


def test_worker_reads_windows_shared_and_plain(connect: Callable[..., Peer]) -> None:
    shared = connect("worker")
    assert shared.subscribe("$share/g/imu/+/window") == [1]
    plain = connect("worker-pi1")
    assert plain.subscribe("imu/+/window") == [1]
    window = marker()
    assert connect("s2").publish("imu/s2/window", window) == SUCCESS
    assert shared.until(window) == [("imu/s2/window", window)]
    assert plain.until(window) == [("imu/s2/window", window)]


def test_worker_publishes_results_errors_statuses_and_replies(
    connect: Callable[..., Peer],
) -> None:
    s1 = connect("s1")
    s1.subscribe("infer/s1/result", "infer/s1/error")
    dashboard = connect("dashboard")
    dashboard.subscribe("hailo/+/status")
    bridge = connect("bridge")
    bridge.subscribe("reply/bridge/#")
    result, error, status, reply = marker(), marker(), marker(), marker()
    for name in ("worker", "worker-pi1"):
        worker = connect(name)
        assert worker.publish("infer/s1/error", error) == SUCCESS
        assert worker.publish("infer/s1/result", result) == SUCCESS
        assert worker.publish(f"hailo/{name}/status", status) == SUCCESS
        assert worker.publish("reply/bridge/req-1", reply) == SUCCESS
        assert s1.until(result) == [("infer/s1/error", error), ("infer/s1/result", result)]
        assert dashboard.until(status) == [(f"hailo/{name}/status", status)]
        assert bridge.until(reply) == [("reply/bridge/req-1", reply)]


def test_the_real_worker_serves_through_this_broker(
    ep: Endpoint, connect: Callable[..., Peer], tmp_path: Path
) -> None:
    """`hailo-worker` logged in with its role, over plain TCP and over TLS with the
    deployment's CA: its link reads many packets per recv() and sends many per send(), which
    TLS must carry as well (records, partial writes). It serves a shared group whose name
    (the containment of a sensor joining the group, mosquitto/README.md) appears in nothing a
    dashboard, let alone a sensor, can read."""
    group = f"g-{secrets.token_hex(8)}"
    settings: dict[str, Any] = {"mqtt_username": "worker-pi1",
                                "mqtt_password": PASSWORDS["worker-pi1"], "session_expiry_s": 0,
                                "shared_group": group}
    if ep.ca is not None:
        settings.update(mqtt_tls="true", mqtt_ca_file=ep.ca)
    # WORKER_ID is the user name: the broker makes it the client id, the ACL the status topic.
    w = WorkerProcess(ep.port, worker_id="worker-pi1", log_dir=tmp_path, **settings).start()
    try:
        dashboard = connect("dashboard")
        dashboard.subscribe("#")
        wait_for(lambda: any(t == f"hailo/{w.worker_id}/status" and b'"online"' in p
                             for t, p in list(dashboard.inbox.queue)),
                 f"the worker online over {ep.kind}:\n{w.log()}", timeout=20)
        s1 = connect("s1")
        s1.subscribe("infer/s1/result", "infer/s1/error")
        windows = 300
        for seq in range(windows):
            s1.client.publish("imu/s1/window", encode_window(
                np.full((100, 9), seq, np.float32), seq=seq), qos=1)
        wait_for(lambda: s1.inbox.qsize() >= windows, f"{windows} answers", timeout=30)
        answers = [s1.inbox.get() for _ in range(windows)]
        assert {t for t, _ in answers} == {"infer/s1/result"}
        assert sorted(decode(p)["seq"] for _, p in answers) == list(range(windows))
        seen = list(dashboard.inbox.queue)
        assert {t for t, _ in seen} >= {f"hailo/{w.worker_id}/status", "infer/s1/result"}
        assert not [t for t, p in seen if group.encode() in p or group in t]
    finally:
        w.stop()
        # Its retained status and summary would reach the other tests' subscribers here.
        cleaner = connect("worker-pi1")
        cleaner.publish(f"hailo/{w.worker_id}/status", b"", retain=True)
        cleaner.publish("infer/s1/summary", b"", retain=True)


def test_smoke_script_passes_against_the_production_broker(
    prod_broker: Broker, deployment: Deployment, tmp_path: Path
) -> None:
    """scripts/smoke.sh as docker_ci.sh runs it: every client logged in as its own user, the
    sensor's subscription and publication on its one client id (a mosquitto_sub beside a
    mosquitto_pub as the same user took each other's session and never saw an answer)."""
    ep = Endpoint("tcp", 0, None).on(prod_broker)
    w = WorkerProcess(ep.port, worker_id="worker-pi1", log_dir=tmp_path,
                      mqtt_username="worker-pi1", mqtt_password=PASSWORDS["worker-pi1"]).start()
    bridge = BridgeProcess(ep.port, log_dir=tmp_path, bridge_client_id="bridge-2",
                           mqtt_username="bridge-2", mqtt_password=PASSWORDS["bridge-2"])
    try:
        bridge.start()
        env = {**os.environ, "BRIDGE_URL": bridge.url, "MQTT_HOST": "127.0.0.1",
               "MQTT_PORT": str(ep.port), "MQTT_USERNAME": "s2",
               "MQTT_PASSWORD": PASSWORDS["s2"], "SMOKE_SENSOR": "s2",
               "PYTHON": sys.executable}
        wait_for(lambda: subprocess.run(["curl", "-sf", f"{bridge.url}/healthz"],
                                        capture_output=True).returncode == 0,
                 f"the bridge healthy:\n{bridge.log()}\n{w.log()}", timeout=20)
        proc = subprocess.run(["bash", str(REPO / "scripts" / "smoke.sh")], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.rstrip().endswith("OK")
        assert "result from worker-pi1" in proc.stdout
    finally:
        bridge.stop()
        w.stop()
        cleaner = Peer(ep, "worker-pi1")
        assert cleaner.connect() == SUCCESS
        cleaner.publish("hailo/worker-pi1/status", b"", retain=True)
        cleaner.publish("infer/s2/summary", b"", retain=True)
        cleaner.close()


def test_home_assistant_discovery_through_the_production_broker(
    prod_broker: Broker, tmp_path: Path
) -> None:
    """The real worker, logged in as its user, announces itself and a sensor under the prefix;
    Home Assistant, logged in as a dashboard, reads them and its birth message has them sent
    again; `--ha-forget` finds them (the worker role reads the prefix) and clears them; a sensor
    reads none of it."""
    ep = Endpoint("tcp", 0, None).on(prod_broker)
    ha, s1, s2, watch = (Peer(ep, name) for name in ("dashboard", "s1", "s2", "bridge"))
    for peer in (ha, s1, s2, watch):
        assert peer.connect() == SUCCESS
    ha.subscribe("homeassistant/#")
    s1.subscribe("homeassistant/#")
    watch.subscribe("hailo/worker-pi1/status")
    creds = {"mqtt_username": "worker-pi1", "mqtt_password": PASSWORDS["worker-pi1"]}
    w = WorkerProcess(ep.port, worker_id="worker-pi1", log_dir=tmp_path, ha_discovery="true",
                      summary_interval_s="0.2", **creds).start()

    def configs(n: int) -> dict[str, bytes]:
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                topic, payload = ha.inbox.get(timeout=0.2)
                if topic.endswith("/config"):
                    got[topic] = payload
        return got

    try:
        # `online` comes once the worker has subscribed (an earlier test's is cleared).
        wait_for(lambda: any(b'"online"' in p for _, p in list(watch.inbox.queue)),
                 "the worker online", 20)
        assert s2.publish("imu/s2/window", encode_window(
            np.zeros((100, 9), np.float32), seq=1)) == SUCCESS
        first = configs(10)
        assert len(first) == 10, sorted(first)
        assert sum("/hailo_sensor_s2/" in t for t in first) == 3
        assert ha.publish("homeassistant/status", b"online", qos=0) == SUCCESS
        assert configs(10) == first
    finally:
        w.stop()
        _clear_retained(ep, "worker-pi1", "hailo/worker-pi1/status", "infer/s2/summary")
    forget = subprocess.run([sys.executable, "-m", "worker", "--ha-forget"], env=w.env,
                            capture_output=True, text=True, timeout=60)
    assert forget.returncode == 0, forget.stderr
    assert forget.stdout.startswith("removed 10 ")
    done = marker()
    assert ha.publish("homeassistant/status", done, qos=0) == SUCCESS
    cleared = {t for t, p in ha.until(done) if p == b"" and t.endswith("/config")}
    assert cleared == set(first)
    assert s1.inbox.empty()  # thirty configs and removals went by: a sensor got none
    for peer in (ha, s1, s2, watch):
        peer.close()


def _clear_retained(ep: Endpoint, user: str, *topics: str) -> None:
    """Leave the module's broker as the next test expects it."""
    cleaner = Peer(ep, user)
    assert cleaner.connect() == SUCCESS
    for topic in topics:
        cleaner.publish(topic, b"", retain=True)
    cleaner.close()


def test_worker_cannot_publish_windows(connect: Callable[..., Peer]) -> None:
    observer = connect("observer")
    observer.subscribe("imu/+/window")
    for name in ("worker", "worker-pi1"):
        worker = connect(name)
        assert worker.publish(f"imu/{name}/window", b"forged") == NOT_AUTHORIZED
        assert worker.publish("imu/s1/window", b"forged") == NOT_AUTHORIZED
    done = marker()
    connect("s1").publish("imu/s1/window", done)
    assert observer.until(done) == [("imu/s1/window", done)]


# --- bridge ----------------------------------------------------------------------------------


def test_bridge_publishes_as_bridge_and_reads_only_its_own_replies(
    connect: Callable[..., Peer],
) -> None:
    worker = connect("worker")
    worker.subscribe("imu/+/window")
    bridge = connect("bridge")
    other_id = "bridge-2"  # another bridge process: its own user, so its own client id
    bridge.subscribe(
        "reply/bridge/#", f"reply/{other_id}/#", "infer/+/result",
        "infer/+/error", "hailo/+/status",
    )
    assert bridge.publish("imu/s1/window", b"forged") == NOT_AUTHORIZED
    assert bridge.publish("infer/s1/result", b"forged") == NOT_AUTHORIZED
    window = marker()
    assert bridge.publish("imu/bridge/window", window) == SUCCESS
    assert worker.until(window) == [("imu/bridge/window", window)]

    worker.publish(f"reply/{other_id}/req-1", b"another bridge's answer")
    reply, result, error, status = marker(), marker(), marker(), marker()
    worker.publish("reply/bridge/req-1", reply)
    worker.publish("infer/bridge/result", result)
    worker.publish("infer/s2/error", error)
    worker.publish("hailo/worker/status", status)
    assert bridge.until(status) == [
        ("reply/bridge/req-1", reply),
        ("infer/bridge/result", result),
        ("infer/s2/error", error),
        ("hailo/worker/status", status),
    ]


# --- client ids and sessions (issue 16 item 4) ----------------------------------------------


@pytest.fixture(params=["tcp", "tls", "ws"])
def any_listener(
    request: pytest.FixtureRequest, prod_broker: Broker, deployment: Deployment
) -> Endpoint:
    ca = deployment.certs / "ca.crt" if request.param == "tls" else None
    return Endpoint(request.param, 0, ca).on(prod_broker)


def test_a_client_id_cannot_take_over_another_users_session(
    any_listener: Endpoint, connect: Callable[..., Peer]
) -> None:
    """A sensor that connects with the worker's (or a bridge's) client id gets its own session:
    the broker replaces the id with the user name, on every listener."""
    worker = connect("worker", at=any_listener)
    worker.subscribe("imu/+/window")
    bridge = connect("bridge", at=any_listener)
    bridge.subscribe("reply/bridge/#")
    for victim in ("worker", "bridge"):
        intruder = connect("s1", at=any_listener, client_id=victim)
        assert intruder.subscribe(f"reply/{victim}/#") == [1]
        window, reply = marker(), marker()
        assert connect("s2", at=any_listener).publish("imu/s2/window", window) == SUCCESS
        assert worker.until(window) == [("imu/s2/window", window)]
        assert connect("observer", at=any_listener).publish("reply/bridge/1", reply) == SUCCESS
        assert bridge.until(reply) == [("reply/bridge/1", reply)]
        intruder.close()
        for peer in (intruder, worker, bridge):  # reply/%c/# is reply/s1/# for the intruder
            assert peer.inbox.empty(), peer.client_id
    assert worker.disconnects.empty() and bridge.disconnects.empty()


def test_a_session_belongs_to_the_user_whatever_client_id_it_sends(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A worker's persistent session is found by its user name (so by WORKER_ID); a second
    login of the same user takes that session over, which is why each worker and each bridge
    process has its own user."""
    own = run_broker(deployment, tmp_path)
    try:
        at = Endpoint("tcp", own.port_for(MQTT_PORT))
        first = Peer(at, "worker", client_id="anything", session_expiry=600, clean_start=False)
        assert first.connect() == SUCCESS
        first.subscribe("imu/+/window")
        second = Peer(at, "worker", client_id="else", session_expiry=600, clean_start=False)
        assert second.connect() == SUCCESS
        assert second.session_present  # the first one's session, subscription included
        first.disconnects.get(timeout=5)  # the first connection is closed
        first.close()
        second.close()
        window = marker()
        sensor = Peer(at, "s1")
        assert sensor.connect() == SUCCESS
        assert sensor.publish("imu/s1/window", window) == SUCCESS  # queued for the session
        sensor.close()
        back = Peer(at, "worker", client_id="a-third-id", session_expiry=600, clean_start=False)
        assert back.connect() == SUCCESS
        assert back.session_present
        assert back.until(window) == [("imu/s1/window", window)]
        back.close()
    finally:
        own.stop()


# --- a worker's own status (issue 16 item 13) -----------------------------------------------


def test_a_worker_writes_only_its_own_status_and_will(
    connect: Callable[..., Peer], ep: Endpoint
) -> None:
    dashboard = connect("dashboard")
    dashboard.subscribe("hailo/+/status")
    other = connect("worker-pi1")
    # A fake `online` for another worker would turn the bridge's /healthz 200.
    assert other.publish("hailo/worker/status", b'{"state": "online"}', retain=True) == (
        NOT_AUTHORIZED
    )
    for topic in ("hailo/worker/status", "hailo/worker-pi1/status"):
        dying = Peer(ep, "worker-pi1")
        dying.client.will_set(topic, topic.encode(), qos=1)
        assert dying.connect() == SUCCESS
        # DISCONNECT with reason 0x04 asks the broker to publish the will, as a cut cable does.
        dying.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        dying.client.loop_stop()
    done = marker()
    assert connect("worker").publish("hailo/worker/status", done) == SUCCESS
    assert dashboard.until(done) == [
        ("hailo/worker-pi1/status", b"hailo/worker-pi1/status"),  # the forged will never came
        ("hailo/worker/status", done),
    ]


# --- summaries and Home Assistant -----------------------------------------------------------


def test_summaries_and_home_assistant_discovery(connect: Callable[..., Peer]) -> None:
    """Workers write summaries and discovery configs and read HA's birth message; dashboards
    and bridges read the summaries; a sensor does neither."""
    readers = [connect(name) for name in ("dashboard", "bridge")]
    for reader in readers:
        reader.subscribe("infer/+/summary")
    s1 = connect("s1")
    s1.subscribe("infer/+/summary", "homeassistant/#", "infer/s1/result")
    worker = connect("worker")
    worker.subscribe("homeassistant/status")
    assert s1.publish("infer/s1/summary", b"forged") == NOT_AUTHORIZED
    assert s1.publish("homeassistant/sensor/x/config", b"forged") == NOT_AUTHORIZED
    summary = marker()
    assert worker.publish("infer/s2/summary", summary, qos=0) == SUCCESS
    for reader in readers:
        assert reader.until(summary) == [("infer/s2/summary", summary)]
    config = "homeassistant/sensor/worker_state/config"
    assert worker.publish(config, b"{}", retain=True) == SUCCESS  # retained for HA
    worker.publish(config, b"", retain=True)
    # HA's birth message, here from another worker (any user with write on it would do).
    birth = marker()
    assert connect("worker-pi1").publish("homeassistant/status", birth) == SUCCESS
    assert worker.until(birth) == [("homeassistant/status", birth)]
    done = marker()
    worker.publish("infer/s1/result", done)
    assert s1.until(done) == [("infer/s1/result", done)]  # no summary, no config before it


# --- shared groups (issue 16 item 3) --------------------------------------------------------


def test_no_user_but_a_worker_may_join_a_shared_group(
    any_listener: Endpoint, connect: Callable[..., Peer]
) -> None:
    """The dynamic-security plugin (loaded by start.sh from add-user.sh's file) refuses the
    SUBSCRIBE: SUBACK 0x87 to v5 clients, 0x80 to v3.1.1. The acl file could not (a granted
    member black-holed its round-robin share: 10 of 20 windows answered on main)."""
    worker = connect("worker", at=any_listener)
    assert worker.subscribe("$share/workers/imu/+/window") == [1]
    for name in ("s2", "bridge", "dashboard"):
        intruder = connect(name, at=any_listener)
        assert intruder.subscribe("$share/workers/imu/+/window", "$share/x/#") == [
            NOT_AUTHORIZED, NOT_AUTHORIZED,
        ], name
        assert intruder.subscribe("imu/+/window") == [1]  # plain ones are granted as ever
    old = Peer(any_listener, "s1", protocol=MQTTProtocolVersion.MQTTv311)
    assert old.connect() == SUCCESS
    assert old.subscribe("$share/workers/imu/+/window") == [0x80]
    old.close()
    s1 = connect("s1", at=any_listener)
    windows = [marker() for _ in range(20)]
    for w in windows:
        assert s1.publish("imu/s1/window", w) == SUCCESS
    assert [p for _, p in worker.until(windows[-1])] == windows


def test_a_user_missing_from_the_roles_file_black_holes_its_share(
    connect: Callable[..., Peer],
) -> None:
    """What remains (mosquitto/README.md, "Threat model"): a user the plugin does not list (one
    added to passwd by hand, here s3) is granted the SUBSCRIBE, is picked round robin before
    its read access is checked, and its share vanishes with a success PUBACK to the sender.
    Hence users are made with add-user.sh, and SHARED_GROUP is a secret too."""
    worker = connect("worker")
    worker.subscribe("$share/known/imu/+/window")
    assert connect("s3").subscribe("$share/known/imu/+/window") == [1]
    s1 = connect("s1")
    windows = [marker() for _ in range(20)]
    assert [s1.publish("imu/s1/window", w) for w in windows] == [SUCCESS] * 20
    # Two members: strict round robin, so the worker gets every other window.
    wait_for(lambda: worker.inbox.qsize() >= 10, "the worker's share")
    time.sleep(0.3)
    assert [worker.inbox.get()[1] for _ in range(worker.inbox.qsize())] == windows[::2]


def test_a_new_user_is_refused_shared_subscriptions_after_a_restart(
    deployment: Deployment, tmp_path: Path
) -> None:
    """passwd and acl are reread on SIGHUP; the plugin's file only at start."""
    dep = Deployment(tmp_path / "dep")
    shutil.copytree(deployment.root, dep.root)
    own = run_broker(dep, tmp_path / "broker")
    try:
        at = Endpoint("tcp", own.port_for(MQTT_PORT))
        password = secrets.token_urlsafe(12)
        add_user(dep.env(), "s4", "sensor", password)
        own.reload()
        s4 = connect_when_ready(at, "s4", password)
        assert s4.subscribe("$share/g/imu/+/window") == [1]  # until the restart
        s4.close()
        own.restart()
        s4 = connect_when_ready(at, "s4", password)
        assert s4.subscribe("$share/g/imu/+/window") == [NOT_AUTHORIZED]
        s4.close()
    finally:
        own.stop()


# --- listeners (issue 16 item 14) ----------------------------------------------------------


def test_every_listener_listens_where_the_config_says(prod_broker: Broker) -> None:
    """No listener beyond the config's (use_username_as_clientid above the first listener would
    open a default one on 1883, every interface), and none on every interface in tests: the
    WebSocket one is bound by interface name (broker_util), as `ss -ltnp` shows."""
    assert prod_broker.listening() == {
        f"127.0.0.1:{prod_broker.port_for(MQTT_PORT)}",
        f"127.0.0.1:{prod_broker.port_for(TLS_PORT)}",
        f"[::ffff:127.0.0.1]:{prod_broker.port_for(WS_PORT)}",
    }


# --- limits ----------------------------------------------------------------------------------


def test_a_full_size_window_passes_and_an_oversized_packet_does_not(
    connect: Callable[..., Peer], ep: Endpoint
) -> None:
    worker = connect("worker")
    worker.subscribe("imu/+/window")
    s1 = connect("s1")
    # Twice MAX_PAYLOAD_BYTES: a window the worker answers `too_large` still reaches it.
    assert s1.connack_props.MaximumPacketSize == 131072
    window = os.urandom(65536)
    assert s1.publish("imu/s1/window", window) == SUCCESS
    assert worker.until(window) == [("imu/s1/window", window)]
    # An MQTT 3.1.1 client is not told the limit; the broker disconnects it instead.
    old = Peer(ep, "s2", protocol=MQTTProtocolVersion.MQTTv311)
    assert old.connect() == SUCCESS
    old.client.publish("imu/s2/window", b"\0" * 131072, qos=1)
    old.disconnects.get(timeout=5)
    old.close()
    done = marker()
    connect("s2").publish("imu/s2/window", done)
    assert worker.until(done) == [("imu/s2/window", done)]


# --- persistence and reload ------------------------------------------------------------------


def test_retained_status_and_queued_windows_survive_a_restart(
    deployment: Deployment, ep: Endpoint, tmp_path: Path
) -> None:
    own = run_broker(deployment, tmp_path)
    try:
        at = ep.on(own)
        worker_id = "worker"  # the user name: the client id and the status topic
        # clean_start=False from the very first CONNECT: Mosquitto 2.0 writes to disk only the
        # sessions of clients whose last CONNECT had it; one that began with clean_start=True
        # (paho's default for the first connect) lives in memory only and is lost on a restart.
        worker = Peer(at, "worker", client_id=worker_id, session_expiry=3600, clean_start=False)
        assert worker.connect() == SUCCESS
        worker.subscribe("imu/+/window")
        status = marker()
        # Accepted and retained; v5 PUBACK says nobody subscribes to it yet.
        assert worker.publish(f"hailo/{worker_id}/status", status, retain=True) == NO_SUBSCRIBERS
        worker.close()
        s1 = Peer(at, "s1")
        assert s1.connect() == SUCCESS
        window = marker()
        assert s1.publish("imu/s1/window", window) == SUCCESS  # queued for the absent worker
        s1.close()

        own.restart()
        assert (tmp_path / "data" / "mosquitto.db").is_file()

        back = Peer(at, "worker", client_id=worker_id, session_expiry=3600, clean_start=False)
        assert back.connect() == SUCCESS
        assert back.session_present
        assert back.until(window) == [("imu/s1/window", window)]
        back.close()
        dashboard = Peer(at, "dashboard")
        assert dashboard.connect() == SUCCESS
        dashboard.subscribe(f"hailo/{worker_id}/status")
        assert dashboard.until(status) == [(f"hailo/{worker_id}/status", status)]
        dashboard.close()
    finally:
        own.stop()


def connect_when_ready(ep: Endpoint, user: str, password: str, timeout: float = 5.0) -> Peer:
    deadline = time.monotonic() + timeout
    while True:
        peer = Peer(ep, user, password=password)
        if peer.connect() == SUCCESS:
            return peer
        if time.monotonic() > deadline:
            raise AssertionError(f"{user} still refused after the reload")
        time.sleep(0.05)


def test_add_user_takes_effect_on_sighup(deployment: Deployment, tmp_path: Path) -> None:
    dep = Deployment(tmp_path / "dep")
    shutil.copytree(deployment.root, dep.root)
    own = run_broker(dep, tmp_path / "broker")
    try:
        at = Endpoint("tcp", own.port_for(MQTT_PORT))
        password = secrets.token_urlsafe(12)
        add_user(dep.env(), "s4", "sensor", password)
        assert Peer(at, "s4", password=password).connect() == NOT_AUTHORIZED  # not reloaded yet
        own.reload()
        s4 = connect_when_ready(at, "s4", password)
        assert s4.publish("imu/s4/window", b"w") == NO_SUBSCRIBERS  # accepted: nobody listens
        s4.close()

        add_user(dep.env(), "s4", "dashboard", password)  # the same user, a new role
        own.reload()
        deadline = time.monotonic() + 5
        while True:
            s4 = connect_when_ready(at, "s4", password)
            code = s4.publish("imu/s4/window", b"w")
            s4.close()
            if code == NOT_AUTHORIZED:
                break
            assert time.monotonic() < deadline, "the dashboard role never applied"
            time.sleep(0.05)
    finally:
        own.stop()


# --- the scripts -----------------------------------------------------------------------------


def test_add_user_refuses_bad_input_and_a_password_argument(tmp_path: Path) -> None:
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(tmp_path / "passwd")}
    for args, stdin in (
        (["s1", "sensor", "hunter2"], "hunter2\n"),  # a password as an argument
        (["s1"], "pw\n"),
        (["s1", "admin"], "pw\n"),
        (["s/1", "sensor"], "pw\n"),
        (["+", "sensor"], "pw\n"),
        (["s1", "sensor"], ""),  # no password
    ):
        done = subprocess.run(
            [str(ADD_USER), *args], input=stdin, env=env, capture_output=True, text=True
        )
        assert done.returncode == 2, (args, done.stderr)
    assert list(tmp_path.iterdir()) == []


def test_add_user_files(tmp_path: Path) -> None:
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(tmp_path / "passwd")}
    add_user(env, "s1", "sensor", "first-secret")
    add_user(env, "pi", "worker", "second-secret")
    add_user(env, "s1", "dashboard", "third-secret")  # same user: new password and role
    passwd = (tmp_path / "passwd").read_text()
    assert [line.split(":")[0] for line in passwd.splitlines()] == ["s1", "pi"]
    assert (tmp_path / "passwd").stat().st_mode & 0o777 == 0o640
    roles = (tmp_path / "roles").read_text().split("\n")
    assert roles == ["pi worker", "s1 dashboard", ""]
    acl = (tmp_path / "acl").read_text()
    assert "user pi\ntopic deny imu/pi/window\ntopic read imu/+/window\n" in acl
    dynsec = json.loads((tmp_path / "dynamic-security.json").read_text())
    assert [c["username"] for c in dynsec["clients"]] == ["s1"]  # every user but the worker
    assert dynsec["roles"][0]["acls"] == [
        {"acltype": "subscribePattern", "topic": "$share/#", "priority": 0, "allow": False}
    ]
    block = acl.split("user pi\n")[1].split("\n\n")[0]
    assert "topic write hailo/pi/status" in block.split("\n")  # its own status, no other
    assert "user s1\ntopic deny imu/s1/window\ntopic deny reply/#\n" in acl
    for text in (passwd, "\n".join(roles), acl):
        for password in ("first-secret", "second-secret", "third-secret"):
            assert password not in text


def test_add_user_keeps_the_home_assistant_prefix_it_was_given(tmp_path: Path) -> None:
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(tmp_path / "passwd")}
    env.pop("HA_DISCOVERY_PREFIX", None)
    add_user(env, "pi", "worker", "pw")
    acl = (tmp_path / "acl").read_text()
    assert "topic readwrite homeassistant/#\n" in acl
    subprocess.run([str(ADD_USER), "--sync"], env={**env, "HA_DISCOVERY_PREFIX": "site/ha"},
                   check=True, capture_output=True)
    add_user(env, "s1", "sensor", "pw")  # no variable now: the recorded prefix stays
    acl = (tmp_path / "acl").read_text()
    assert "topic readwrite site/ha/#\n" in acl
    assert "homeassistant" not in acl
    for bad in ("ha/#", "+", "/ha", "ha//x", "$SYS"):
        done = subprocess.run([str(ADD_USER), "--sync"], env={**env, "HA_DISCOVERY_PREFIX": bad},
                              capture_output=True, text=True)
        assert done.returncode == 2 and "HA_DISCOVERY_PREFIX" in done.stderr, bad
    assert "topic readwrite site/ha/#\n" in (tmp_path / "acl").read_text()


def test_add_user_prompts_without_echo_on_a_terminal(tmp_path: Path) -> None:
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(tmp_path / "passwd")}
    password = "typed-" + secrets.token_hex(6)
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        try:
            os.execve(str(ADD_USER), [str(ADD_USER), "s9", "sensor"], env)
        finally:
            os._exit(127)
    screen = b""

    def read_until(text: bytes) -> None:
        nonlocal screen
        deadline = time.monotonic() + 5
        while text not in screen:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: {screen!r}"
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    screen += os.read(fd, 1024)
                except OSError:  # EIO: the script has exited and closed the terminal
                    break

    read_until(b"Password for s9: ")
    os.write(fd, password.encode() + b"\n")
    read_until(b"Password again: ")
    os.write(fd, password.encode() + b"\n")
    read_until(b"SIGHUP")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, screen
    assert password.encode() not in screen
    assert (tmp_path / "passwd").read_text().startswith("s9:$7$")


def test_add_user_refuses_a_broken_roles_file(tmp_path: Path) -> None:
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(tmp_path / "passwd")}
    (tmp_path / "roles").write_text("s1 sensor\ns2 superuser\n")
    done = subprocess.run(
        [str(ADD_USER), "s3", "sensor"], input="pw\n", env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "superuser" in done.stderr
    assert not (tmp_path / "passwd").exists()


def test_committed_acl_is_generated_from_committed_roles(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MOSQUITTO_PASSWD_FILE": str(tmp_path / "passwd"),
        "MOSQUITTO_ROLES_FILE": str(MOSQ / "roles"),
        "MOSQUITTO_ACL_FILE": str(tmp_path / "acl"),
        "MOSQUITTO_DYNSEC_FILE": str(tmp_path / "dynamic-security.json"),
    }
    subprocess.run([str(ADD_USER), "--sync"], env=env, check=True, capture_output=True)
    assert (tmp_path / "acl").read_text() == (MOSQ / "acl").read_text()
    generated = (tmp_path / "dynamic-security.json").read_text()
    assert generated == (MOSQ / "dynamic-security.json").read_text()


def test_start_sh_turns_tls_on_only_with_a_certificate_and_key(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    shutil.copy(MOSQ / "conf.d" / "tls.conf.in", tmp_path / "conf.d")
    (tmp_path / "conf.d" / "site.conf").write_text("max_keepalive 120\n")
    run_dir = tmp_path / "run"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener 1883\ninclude_dir {run_dir}\n")
    certs = tmp_path / "certs"
    certs.mkdir()
    env = {
        **os.environ, "MOSQUITTO_CONF": str(conf), "MOSQUITTO_CERT_DIR": str(certs),
        "MOSQUITTO_BIN": "true",
    }

    def start() -> list[str]:
        subprocess.run(["sh", str(START)], env=env, check=True, capture_output=True)
        return sorted(p.name for p in run_dir.iterdir())

    assert start() == ["site.conf"]
    (certs / "server.crt").write_text("x")
    assert start() == ["site.conf"]  # a certificate without its key is not enough
    (certs / "server.key").write_text("x")
    assert start() == ["site.conf", "tls.conf"]
    tls = (run_dir / "tls.conf").read_text()
    assert f"certfile {certs}/server.crt\n" in tls and f"keyfile {certs}/server.key\n" in tls
    assert "listener 8883\n" in tls
    (certs / "server.key").unlink()
    assert start() == ["site.conf"]  # a stale tls.conf goes


def test_no_private_key_is_kept_in_the_repo() -> None:
    for path in MOSQ.rglob("*"):
        if path.is_file():
            assert "PRIVATE KEY" not in path.read_text(errors="replace"), path


def test_a_restarted_workers_backlog_is_answered_as_it_drains_not_at_its_end(
    prod_broker: Broker, tmp_path: Path
) -> None:
    """Flow control against the production config: a worker killed while 3000 windows queue
    for it gets them all answered, in order, after its restart, with results (none shed), and
    its answers flow while the backlog drains rather than at its end."""
    from reliability.double import make_hef

    ep = Endpoint("tcp", 0).on(prod_broker)
    # The HailoRT double at 5 ms a batch of 8 (about 1600 windows/s): slow enough to see when
    # each answer leaves.
    settings: dict[str, Any] = {"mqtt_username": "worker-pi1",
                                "mqtt_password": PASSWORDS["worker-pi1"],
                                "session_expiry_s": 600, "queue_max": 64, "infer_mode": "hailo",
                                "hef_path": make_hef(tmp_path / "m.hef"),
                                "hailo_double_latency_ms": 5, "hailo_double_compute": 0}
    peers = [Peer(ep, "s1"), Peer(ep, "dashboard")]
    s1, dashboard = peers
    for peer in peers:
        assert peer.connect() == 0
    dashboard.subscribe("hailo/worker-pi1/status")
    s1.subscribe("infer/s1/result", "infer/s1/error")

    def online() -> bool:
        return any(b'"online"' in p for _, p in list(dashboard.inbox.queue))

    w = WorkerProcess(ep.port, worker_id="worker-pi1", log_dir=tmp_path, **settings).start()
    try:
        wait_for(online, "the worker online", timeout=20)
        w.kill()  # its session stays, for 600 s: the broker queues for it
        windows = 3000
        for seq in range(windows):
            s1.client.publish("imu/s1/window", encode_window(
                np.full((100, 9), seq, np.float32), seq=seq), qos=1)
        time.sleep(1.0)
        restarted = time.monotonic()
        w = WorkerProcess(ep.port, worker_id="worker-pi1", log_dir=tmp_path, **settings).start()
        wait_for(lambda: s1.inbox.qsize() >= 1, "a first answer", timeout=30)
        first = time.monotonic() - restarted
        wait_for(lambda: s1.inbox.qsize() >= windows // 2, "half the answers", timeout=120)
        half = time.monotonic() - restarted
        wait_for(lambda: s1.inbox.qsize() >= windows, f"{windows} answers", timeout=120)
        drained = time.monotonic() - restarted
        answers = [s1.inbox.get() for _ in range(windows)]
        print(f"\nbacklog of {windows}: first answer {first:.2f} s, half {half:.2f} s, all "
              f"{drained:.2f} s after the restart")
        assert {t for t, _ in answers} == {"infer/s1/result"}
        assert [decode(p)["seq"] for _, p in answers] == list(range(windows))
        assert half < 0.8 * drained  # answers flow while the backlog drains, not at its end
    finally:
        w.kill()
        cleaner = Peer(ep, "worker-pi1")
        cleaner.connect()
        cleaner.publish("hailo/worker-pi1/status", b"", retain=True)
        cleaner.publish("infer/s1/summary", b"", retain=True)
        for peer in (*peers, cleaner):
            peer.close()
