"""The real worker process against a real Mosquitto, in stub mode (CONTRACT.md, the worker)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from broker_util import free_port
from schema_util import validate
from support import REPO, Collector, WorkerProcess, wait_until

from worker.backends.stub import StubBackend
from worker.settings import WorkerSettings
from worker.wire import encode_window

StartWorker = Callable[..., WorkerProcess]
RNG = np.random.default_rng(7)


def window(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((100, 9)).astype(np.float32)


def stub_answer(x: np.ndarray) -> tuple[list[float], list[float]]:
    latent, motifs = StubBackend(WorkerSettings()).infer(x[None])
    return latent[0].tolist(), motifs[0].tolist()


def test_every_form_is_answered_with_the_stub_result(
    start_worker: StartWorker, collector: Collector
) -> None:
    w = start_worker()
    x = window(1)
    collector.publish("imu/s-bin/window", encode_window(x, seq=1, ts=100.5))
    collector.publish("imu/s-list/window", encode_window(x, seq=2, ts=100.5, compact=False))
    collector.publish("imu/s-json/window", json.dumps({"x": x.tolist(), "seq": 3}).encode())
    answers = collector.wait_answers(3)
    latent, motifs = stub_answer(x)
    by_sensor = {m.topic: m for m in answers}
    assert set(by_sensor) == {f"infer/s-{k}/result" for k in ("bin", "list", "json")}
    for topic, msg in by_sensor.items():
        doc = msg.doc()
        validate("result", doc)
        assert msg.properties.ContentType == "application/msgpack"
        assert doc["sensor_id"] == topic.split("/")[1]
        assert doc["latent"] == pytest.approx(latent, abs=0) and len(doc["latent"]) == 64
        assert doc["motif_scores"] == pytest.approx(motifs, abs=0) and len(motifs) == 12
        assert doc["model"] == "stub-v2" and doc["worker_id"] == w.worker_id
        assert doc["latency_ms"] >= 0 and doc["batch_size"] >= 1
    assert by_sensor["infer/s-bin/result"].doc()["ts"] == 100.5
    assert [by_sensor[f"infer/s-{k}/result"].doc()["seq"] for k in ("bin", "list", "json")] == [
        1, 2, 3]
    assert "ts" not in by_sensor["infer/s-json/result"].doc()


def test_json_result_encoding(start_worker: StartWorker, collector: Collector) -> None:
    start_worker(result_encoding="json")
    collector.publish("imu/s1/window", encode_window(window(2), seq=11))
    (msg,) = collector.wait_answers(1)
    assert msg.properties.ContentType == "application/json"
    doc = json.loads(msg.payload)
    validate("result", doc)
    assert doc["seq"] == 11


BAD: list[tuple[bytes, str, int | None]] = [
    (b"\x00\xffgarbage", "decode_error", None),
    (encode_window(window(3), seq=40)[:100], "decode_error", None),
    (msgpack.packb({"x": [[0.0] * 9] * 50, "seq": 41}), "invalid_shape", 41),
    (msgpack.packb({"x": window(3).astype("<f8").tobytes(), "shape": [100, 9], "dtype": "<f8",
                    "seq": 42}), "invalid_dtype", 42),
    (msgpack.packb({"x": [["a"] * 9] * 100, "seq": 43}), "invalid_dtype", 43),
    (msgpack.packb({"seq": 44}), "decode_error", 44),
    (encode_window(np.full((100, 9), np.nan, np.float32), seq=45), "non_finite", 45),
    (b"\x80" + b"\x00" * 70000, "too_large", None),
    # Out of what an answer can carry: once a 29-byte window that stalled the worker for good.
    (b'{"seq": 18446744073709551616, "x": []}', "decode_error", None),
    (b'{"seq": -9223372036854775809, "x": []}', "decode_error", None),
    (b'{"seq": 1180591620717411303424, "x": []}', "decode_error", None),
    (msgpack.packb({"seq": 2**63, "x": []}), "decode_error", None),
    (b'{"seq": 46, "ts": 1' + b"0" * 400 + b', "x": []}', "decode_error", 46),
    (b'{"seq": 1' + b"0" * 5000 + b', "x": []}', "decode_error", None),
    (msgpack.packb({"x": b"\0" * 3600, "shape": [100, 9], "dtype": "d" * 60000, "seq": 47}),
     "invalid_dtype", 47),
]


def test_bad_windows_get_errors_and_good_ones_keep_flowing(
    start_worker: StartWorker, collector: Collector
) -> None:
    start_worker()
    for i, (payload, _, _) in enumerate(BAD):
        collector.publish(f"imu/bad{i}/window", payload)
        collector.publish(f"imu/good{i}/window", encode_window(window(i), seq=i))
    answers = collector.wait_answers(2 * len(BAD))
    assert len(answers) == 2 * len(BAD)
    for i, (_, code, seq) in enumerate(BAD):
        (err,) = [m for m in answers if m.topic == f"infer/bad{i}/error"]
        doc = err.doc()
        validate("error", doc)
        assert doc["error"] == code, doc
        assert doc["detail"] and len(doc["detail"]) < 200, doc  # never the sender's text whole
        assert "int_max_str_digits" not in doc["detail"]
        assert doc.get("seq") == seq
        (good,) = [m for m in answers if m.topic == f"infer/good{i}/result"]
        assert good.doc()["seq"] == i


def test_a_non_finite_window_in_a_batch_is_answered_alone(
    start_worker: StartWorker, collector: Collector
) -> None:
    """The finiteness check is made once per batch: the bad window gets its error, and the
    windows it came with still get their own results, together in one batch."""
    start_worker(batch_max_size=8, batch_max_wait_ms=300)
    inf = window(1)
    inf[50, 3] = np.inf
    for seq, x in enumerate([window(0), inf, window(2)]):
        collector.publish("imu/mix/window", encode_window(x, seq=seq))
    answers = {m.doc()["seq"]: m for m in collector.wait_answers(3)}
    assert answers[1].topic == "infer/mix/error" and answers[1].doc()["error"] == "non_finite"
    for seq in (0, 2):
        doc = answers[seq].doc()
        assert answers[seq].topic == "infer/mix/result" and doc["batch_size"] == 2
        assert doc["latent"] == pytest.approx(stub_answer(window(seq))[0], abs=0)


def test_response_topic_and_correlation_data(
    start_worker: StartWorker, collector: Collector
) -> None:
    start_worker()
    collector.publish("imu/rr/window", encode_window(window(5), seq=1),
                      response_topic="reply/me/x", correlation=b"abc-1")
    collector.publish("imu/rr/window", b"junk", response_topic="reply/me/x", correlation=b"abc-2")
    collector.publish("imu/rr/window", encode_window(window(6), seq=3),
                      response_topic="elsewhere/evil", correlation=b"abc-3")
    wait_until(lambda: len(collector.answers()) == 3 and len(collector.on("reply/")) == 2, 10,
               "answers and replies")
    replies = {m.properties.CorrelationData: m for m in collector.on("reply/me/x")}
    assert set(replies) == {b"abc-1", b"abc-2"}
    assert replies[b"abc-1"].doc()["seq"] == 1 and "latent" in replies[b"abc-1"].doc()
    assert replies[b"abc-2"].doc()["error"] == "decode_error"
    assert all(m.properties.ContentType == "application/msgpack" for m in replies.values())
    time.sleep(0.3)
    assert not collector.on("elsewhere/")
    assert [m.doc()["seq"] for m in collector.on("infer/rr/result")] == [1, 3]


def test_retained_status_through_start_stop_and_kill(
    start_worker: StartWorker, collector: Collector, broker: object
) -> None:
    w = start_worker(worker_id="w-life")
    online = collector.wait_state("w-life", "online")
    validate("status", online)
    assert online["mode"] == "stub" and online["queue_depth"] == 0
    assert w.stop() == 0
    stopped = collector.wait_state("w-life", "stopped", timeout=5)
    validate("status", stopped)
    # A newcomer reads the retained status: stopped, not offline (the will was not sent).
    late = Collector(collector.port, topics=["hailo/+/status"])
    wait_until(lambda: bool(late.on("hailo/w-life/status")), 5, "retained status")
    assert json.loads(late.on("hailo/w-life/status")[-1].payload)["state"] == "stopped"
    assert late.on("hailo/w-life/status")[-1].retain
    late.close()

    w2 = start_worker(worker_id="w-life")
    w2.kill()
    offline = collector.wait_state("w-life", "offline", timeout=60)
    validate("status", offline)
    assert offline == {"state": "offline", "worker_id": "w-life"}
    # The will sets ContentType like every other publish (issue 16, item 15).
    assert collector.on("hailo/w-life/status")[-1].properties.ContentType == "application/json"
    assert online["backpressure"] is False


def test_windows_sent_while_the_worker_is_down_are_answered_after_restart(
    start_worker: StartWorker, collector: Collector
) -> None:
    w = start_worker(worker_id="w-away")
    assert w.stop() == 0
    for i in range(20):
        collector.publish(f"imu/s{i % 3}/window", encode_window(window(i), seq=i))
    start_worker(worker_id="w-away")
    answers = collector.wait_answers(20)
    assert sorted(m.doc()["seq"] for m in answers) == list(range(20))


def test_batches_form_under_load(start_worker: StartWorker, collector: Collector) -> None:
    start_worker(batch_max_size=8, batch_max_wait_ms=50)
    payloads = [encode_window(window(i), seq=i) for i in range(64)]
    for p in payloads:
        collector.client.publish("imu/load/window", p, qos=1)
    answers = collector.wait_answers(64)
    sizes = [m.doc()["batch_size"] for m in answers]
    assert max(sizes) > 1 and max(sizes) <= 8
    assert sorted(m.doc()["seq"] for m in answers) == list(range(64))


def test_a_qos0_flood_far_past_queue_max_is_answered_in_full_with_results(
    start_worker: StartWorker, collector: Collector
) -> None:
    # QoS 0 is outside the broker's Receive Maximum: only the worker reading no more while it
    # holds QUEUE_MAX keeps it from shedding (it answered most of these `overloaded` before).
    start_worker(queue_max=4, batch_max_size=1)
    n = 400
    payload = [encode_window(window(i), seq=i) for i in range(n)]
    for p in payload:
        collector.client.publish("imu/flood/window", p, qos=0)
    answers = collector.wait_answers(n, timeout=30)
    assert [m.topic for m in answers] == ["infer/flood/result"] * n
    assert [m.doc()["seq"] for m in answers] == list(range(n))  # in order, too


def test_sigterm_answers_what_is_queued_and_exits_0(
    start_worker: StartWorker, collector: Collector
) -> None:
    w = start_worker(worker_id="w-term", batch_max_size=1, batch_max_wait_ms=0)
    for i in range(200):
        collector.client.publish("imu/t/window", encode_window(window(i), seq=i), qos=1)
    collector.wait_answers(1)
    started = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    assert time.monotonic() - started < 10
    collector.wait_state("w-term", "stopped", timeout=5)
    before = {m.doc()["seq"] for m in collector.answers()}
    # Whatever was not answered before the stop is redelivered to the next start.
    start_worker(worker_id="w-term")
    wait_until(lambda: {m.doc()["seq"] for m in collector.answers()} >= set(range(200)), 20,
               "all 200 answered across the restart")
    assert before  # some were answered by the first run


def test_metrics_endpoint(start_worker: StartWorker, collector: Collector) -> None:
    import httpx

    port = free_port()
    start_worker(metrics_port=port)
    collector.publish("imu/m/window", encode_window(window(1)))
    collector.publish("imu/m/window", b"nope")
    collector.wait_answers(2)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for name in ("hailo_worker_windows_received_total 2.0",
                 "hailo_worker_results_published_total 1.0",
                 'hailo_worker_errors_total{code="decode_error"} 1.0',
                 "hailo_worker_queue_depth", "hailo_worker_device_up 1.0",
                 "hailo_worker_batch_size_bucket", "hailo_worker_inference_seconds_bucket",
                 "hailo_worker_latency_seconds_bucket"):
        assert name in text, name


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"INFER_MODE": "tpu"}, "INFER_MODE"),
        ({"BATCH_MAX_SIZE": "0"}, "BATCH_MAX_SIZE"),
        ({"BATCH_MAX_SIZE": "257"}, "BATCH_MAX_SIZE"),
        ({"MQTT_PORT": "http"}, "MQTT_PORT"),
        ({"INFER_MODE": "hailo", "HEF_PATH": "/nonexistent/model.hef"}, "HEF_PATH"),
        ({"INFER_MODE": "cpu", "ONNX_PATH": "/nonexistent/model.onnx"}, "ONNX_PATH"),
        ({"RESULT_ENCODING": "xml"}, "RESULT_ENCODING"),
        ({"MQTT_CA_FILE": "/nonexistent/ca.pem"}, "MQTT_CA_FILE"),
    ],
)
def test_bad_setting_stops_with_one_line_naming_it(env: dict[str, str], name: str) -> None:
    import os

    proc = subprocess.run([sys.executable, "-m", "worker"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_a_busy_metrics_port_stops_with_one_line_naming_it(broker: object) -> None:
    import os
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "METRICS_PORT": str(port), "MQTT_PORT": str(broker.port),  # type: ignore[attr-defined]
               "MQTT_HOST": "127.0.0.1"}
        proc = subprocess.run([sys.executable, "-m", "worker"], env=env, capture_output=True,
                              text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "bad setting: METRICS_PORT" in line and str(port) in line


def test_print_config_masks_secrets() -> None:
    import os

    proc = subprocess.run([sys.executable, "-m", "worker", "--print-config"],
                          env={**os.environ, "MQTT_PASSWORD": "hunter2", "SHARED_GROUP": "g"},
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 0
    assert "hunter2" not in proc.stdout
    cfg = json.loads(proc.stdout)
    assert cfg["MQTT_PASSWORD"] == "****" and cfg["SESSION_EXPIRY_S"] == 0


def test_shared_group_splits_windows_between_workers(
    start_worker: StartWorker, collector: Collector
) -> None:
    a = start_worker(shared_group="g1")
    b = start_worker(shared_group="g1")
    for i in range(40):
        collector.publish("imu/sh/window", encode_window(window(i), seq=i))
    answers = collector.wait_answers(40)
    time.sleep(0.3)
    assert len(collector.answers()) == 40  # each window answered once, not once per worker
    workers = {m.doc()["worker_id"] for m in answers}
    assert workers == {a.worker_id, b.worker_id}


def test_summaries_are_retained_json_per_sensor_and_follow_the_schema(
    start_worker: StartWorker, collector: Collector
) -> None:
    w = start_worker(summary_interval_s=0.2)
    x = window(5)
    for seq in range(5):
        collector.publish("imu/s-sum/window", encode_window(x, seq=seq))
    collector.publish("imu/s-sum/window", b"\x00garbage")
    collector.publish("imu/s-bad/window", b"\x00garbage")

    def summaries(sensor: str) -> list[dict[str, object]]:
        return [json.loads(m.payload) for m in collector.on(f"infer/{sensor}/summary")]

    wait_until(lambda: sum(d["errors"].get("decode_error", 0) for d in summaries("s-sum")) == 1
               and any(d.get("seq") == 4 for d in summaries("s-sum")), 10, "the summaries")
    (msg, *_) = collector.on("infer/s-sum/summary")
    assert msg.properties.ContentType == "application/json"
    for doc in summaries("s-sum") + summaries("s-bad"):
        validate("summary", doc)
    latest = summaries("s-sum")[-1]
    _, motifs = stub_answer(x)
    assert latest["worker_id"] == w.worker_id and latest["sensor_id"] == "s-sum"
    assert latest["motif_scores"] == motifs and latest["top_motif"] == int(np.argmax(motifs))
    # A sensor with no result yet has counts only.
    assert "top_motif" not in summaries("s-bad")[-1]
    # Retained: a dashboard that subscribes later sees every sensor at once.
    late = Collector(collector.port, topics=("infer/+/summary",))
    try:
        wait_until(lambda: {m.topic for m in late.on("infer/")} == {
            "infer/s-sum/summary", "infer/s-bad/summary"}, 5, "the retained summaries")
        assert all(m.retain for m in late.on("infer/"))
    finally:
        late.close()
