"""What bounds the production broker's memory, and what it does at each bound (mosquitto/README.md,
"What bounds a backlog"): issue 16 item 5 and the broker facts issue 12 relies on.

Each test runs its own broker on mosquitto.conf (start.sh, users by add-user.sh), since the
state it measures (queues, resident memory) must not be shared. Memory is the broker's VmRSS.
Figures in the README were measured by these tests on a 2-core machine shared with other test
runs; the assertions leave wide margins.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker_util import Broker
from mosquitto_prod import (
    MQTT_PORT,
    NO_SUBSCRIBERS,
    PASSWORDS,
    SUCCESS,
    Deployment,
    Endpoint,
    Peer,
    make_deployment,
    run_broker,
    wait_for,
)
from paho.mqtt.enums import CallbackAPIVersion

MIB = 1024 * 1024
MAX_PACKET = 131072  # mosquitto.conf max_packet_size
MAX_QUEUED_MESSAGES, MAX_QUEUED_BYTES = 10000, 64 * MIB
MEMORY_LIMIT = 192 * MIB
# The largest payload that fits in one packet on imu/s1/window (fixed header, topic, mid and
# an empty property length take the rest).
LARGEST = MAX_PACKET - 40


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return make_deployment(tmp_path_factory.mktemp("deployment"))


@pytest.fixture
def broker(deployment: Deployment, tmp_path: Path) -> Iterator[Broker]:
    b = run_broker(deployment, tmp_path)
    yield b
    b.stop()


def tcp(broker: Broker) -> Endpoint:
    return Endpoint("tcp", broker.port_for(MQTT_PORT))


def window(seq: int, size: int) -> bytes:
    """A payload that carries its sequence number in its first 8 bytes."""
    return struct.pack("<q", seq) + bytes(size - 8)


def seq_of(payload: bytes) -> int:
    return int(struct.unpack_from("<q", payload)[0])


def absent_worker(broker: Broker) -> None:
    """The worker's persistent session, subscribed to every window, with the worker away."""
    w = Peer(tcp(broker), "worker", session_expiry=3600, clean_start=False)
    assert w.connect() == SUCCESS
    w.subscribe("imu/+/window")
    w.close()


def flood(broker: Broker, count: int, size: int) -> tuple[dict[int, int], int]:
    """s1 publishes ``count`` QoS 1 windows of ``size`` bytes as fast as the broker acknowledges
    them; returns {PUBACK reason: count} and the broker's peak RSS meanwhile. Stops at the first
    disconnection."""
    s1 = Peer(tcp(broker), "s1")
    assert s1.connect() == SUCCESS
    peak = broker.rss_bytes()
    for seq in range(count):
        if not s1.disconnects.empty():
            break
        info = s1.client.publish("imu/s1/window", window(seq, size), qos=1)
        if seq % 25 == 0 or seq == count - 1:
            deadline = time.monotonic() + 10
            while not info.is_published() and s1.disconnects.empty():
                assert time.monotonic() < deadline, "no PUBACK and no disconnection"
                time.sleep(0.005)
            peak = max(peak, broker.rss_bytes())
    time.sleep(0.2)
    peak = max(peak, broker.rss_bytes())
    s1.close()
    codes: dict[int, int] = {}
    for rc in s1.pubacks.values():
        codes[rc] = codes.get(rc, 0) + 1
    return codes, peak


def drain(peer: Peer, quiet: float = 1.0) -> list[bytes]:
    """Every message the peer gets until none came for ``quiet`` seconds."""
    got: list[bytes] = []
    while True:
        try:
            got.append(peer.inbox.get(timeout=quiet)[1])
        except Exception:
            return got


def test_a_window_of_a_mib_disconnects_its_sender_and_costs_nothing(broker: Broker) -> None:
    """Issue 16 item 5: on main, 300 such windows for an absent worker took the broker from 11
    to 327 MB. Over max_packet_size, the first one disconnects its sender."""
    absent_worker(broker)
    before = broker.rss_bytes()
    codes, peak = flood(broker, 300, 1048000)
    assert codes == {}  # not one was acknowledged
    assert peak - before < 10 * MIB, (before, peak)


def test_an_absent_workers_backlog_stops_at_max_queued_bytes(broker: Broker) -> None:
    """2000 of the largest windows (262 MB) for an absent worker: the broker keeps the oldest
    up to max_queued_bytes and drops each newer one, while the sender is told success (the
    window reached the broker; v5 has no reason code for a subscriber's full queue)."""
    absent_worker(broker)
    codes, peak = flood(broker, 2000, LARGEST)
    assert codes == {SUCCESS: 2000}
    assert peak < 140 * MIB, peak  # 79 MB measured; main's 512 MiB bound reached 274 MB
    back = Peer(tcp(broker), "worker", session_expiry=3600, clean_start=False)
    assert back.connect() == SUCCESS and back.session_present
    got = [seq_of(p) for p in drain(back)]
    back.close()
    # Queued while the bytes already queued were under the bound: the 513th crosses it.
    kept = -(-MAX_QUEUED_BYTES // LARGEST)
    assert got == list(range(kept)), (len(got), got[:3], got[-3:])
    broker.stop()  # Mosquitto's log reaches its file at exit
    assert "Outgoing messages are being dropped for client worker" in broker.log()


def test_an_absent_workers_backlog_stops_at_max_queued_messages(broker: Broker) -> None:
    absent_worker(broker)
    codes, _ = flood(broker, MAX_QUEUED_MESSAGES + 100, 64)
    assert codes == {SUCCESS: MAX_QUEUED_MESSAGES + 100}
    back = Peer(tcp(broker), "worker", session_expiry=3600, clean_start=False)
    assert back.connect() == SUCCESS
    got = [seq_of(p) for p in drain(back)]
    back.close()
    assert got == list(range(MAX_QUEUED_MESSAGES))  # the newest 100 were dropped


def test_a_backlog_survives_a_broker_restart(broker: Broker) -> None:
    """Issue 12 (d): with persistence, the queued windows of a session that connected with
    clean_start=False are written on a clean stop and read back at start, in order."""
    absent_worker(broker)
    codes, _ = flood(broker, 500, 3630)
    assert codes == {SUCCESS: 500}
    broker.restart()
    back = Peer(tcp(broker), "worker", session_expiry=3600, clean_start=False)
    assert back.connect() == SUCCESS and back.session_present
    assert [seq_of(p) for p in drain(back)] == list(range(500))
    back.close()


class SilentWorker:
    """The worker's v5 login whose messages are never acknowledged (paho's manual ack, never
    given), counting what the broker hands it."""

    def __init__(self, broker: Broker, receive_maximum: int) -> None:
        self.peer = Peer(tcp(broker), "worker", session_expiry=3600, clean_start=False,
                         receive_maximum=receive_maximum)
        self.peer.client.manual_ack_set(True)

    def connect(self) -> Peer:
        assert self.peer.connect() == SUCCESS
        return self.peer


def test_receive_maximum_caps_unacknowledged_windows(broker: Broker) -> None:
    """Issue 12 (a): a v5 client with Receive Maximum 50 that never acknowledges gets 50
    QoS 1 windows while connected, and 50 again (the same, redelivered) when its session
    resumes with the rest queued; nothing is dropped below the queue bounds."""
    silent = SilentWorker(broker, 50)
    peer = silent.connect()
    peer.subscribe("imu/+/window")
    codes, _ = flood(broker, 500, 3630)
    assert codes == {SUCCESS: 500}
    assert [seq_of(p) for p in drain(peer)] == list(range(50))
    peer.close()
    again = SilentWorker(broker, 50).connect()
    assert again.session_present
    assert [seq_of(p) for p in drain(again)] == list(range(50))
    again.close()
    # Acknowledging everything drains the session: the other 450 were kept.
    reader = Peer(tcp(broker), "worker", session_expiry=0, clean_start=False)
    assert reader.connect() == SUCCESS
    assert sorted(set(seq_of(p) for p in drain(reader))) == list(range(500))
    reader.close()


def stalled_worker(broker: Broker) -> mqtt.Client:
    """The worker logged in, subscribed at QoS 0, and then never reading its socket again."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="worker", protocol=mqtt.MQTTv5)
    client.username_pw_set("worker", PASSWORDS["worker"])
    subscribed: list[int] = []
    client.on_subscribe = lambda *a: subscribed.append(1)
    client.connect("127.0.0.1", broker.port_for(MQTT_PORT), keepalive=600)
    client.subscribe("imu/+/window", 0)
    deadline = time.monotonic() + 5
    while not subscribed:  # paho's loop runs only here: afterwards nothing reads the socket
        assert time.monotonic() < deadline, "no SUBACK"
        client.loop(0.1)
    return client


def close_socket(client: mqtt.Client) -> None:
    """Close the socket itself: at memory_limit the broker cannot even allocate a DISCONNECT it
    reads, while an end of file needs nothing."""
    sock = client.socket()
    if sock is not None:
        sock.close()


def test_qos0_to_a_reader_that_stalls_stops_at_max_queued_messages(broker: Broker) -> None:
    """Issue 12 (b): QoS 0 windows for a connected client that stops reading are written to its
    outgoing packet queue until it holds max_queued_messages packets; past that each new one is
    dropped, silently (the sender's PUBACK says success). Nothing disconnects the reader."""
    client = stalled_worker(broker)
    try:
        before = broker.rss_bytes()
        codes, peak = flood(broker, 12000, 3630)  # compact windows
        assert codes == {SUCCESS: 12000}
        assert peak - before < 80 * MIB, (before, peak)  # 10000 x 3.6 KB plus socket buffers
        counted: list[int] = []
        client.on_message = lambda c, u, m: counted.append(1)
        last, quiet_since = 0, time.monotonic()
        while time.monotonic() - quiet_since < 1.0:  # it reads again, until 1 s brings nothing
            client.loop(0.05)
            if len(counted) != last:
                last, quiet_since = len(counted), time.monotonic()
        # The bound, plus what the kernel's socket buffers held before it applied.
        assert MAX_QUEUED_MESSAGES <= len(counted) < 12000, len(counted)
    finally:
        close_socket(client)


def test_qos0_of_the_largest_windows_to_a_stalled_reader_stops_at_memory_limit(
    broker: Broker,
) -> None:
    """The count bound is no byte bound: 10000 of the largest windows would be 1.3 GB. It is
    memory_limit that stops the growth; the broker then refuses what it cannot allocate,
    disconnecting the sender ("out of memory") instead of being OOM-killed."""
    client = stalled_worker(broker)
    try:
        codes, peak = flood(broker, 3000, LARGEST)
        assert SUCCESS in codes and sum(codes.values()) < 3000  # cut off before the end
        assert broker.running
        assert peak < MEMORY_LIMIT + 40 * MIB, peak  # the Pi gives the broker 256 MiB
    finally:
        close_socket(client)
    # Once the stalled client is gone its queue is freed and the broker serves again (nobody
    # subscribes now: PUBACK "no matching subscribers").
    wait_for(lambda: flood(broker, 1, 3630)[0] == {NO_SUBSCRIBERS: 1},
             "the broker serving again", timeout=10)
    assert broker.rss_bytes() < 40 * MIB
    broker.stop()  # Mosquitto's log reaches its file at exit
    assert "disconnected due to out of memory" in broker.log()
