"""The worker's own cost per window, in one process, with no broker and no network.

    python bench/bench_worker_cost.py [--form bin|lists] [--repeats N] [--worker DIR]

Feeds prepared MQTT messages to a real `Worker` (stub backend, default batching) exactly as
its network thread would (`_on_message` for each window, then the tick that batches, runs
and answers them), with the MQTT client's publish and acknowledge replaced by counters. What
is left is what the worker adds to every window beyond paho and the broker: decoding,
queueing, batching, the backend, building and packing the answer, metrics. The pipeline
benchmark cannot show a change of a microsecond or two through its noise; this can.

`--worker DIR` measures the `worker` package in DIR instead (e.g. an old commit's, from
`git archive COMMIT worker | tar -x -C DIR`); run both alternately to compare. Prints the
fastest and the median of --repeats timings, in microseconds per window.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BATCH = 8
WINDOWS = 64


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--form", choices=["bin", "lists"], default="bin")
    p.add_argument("--repeats", type=int, default=9, help="timings; min and median (9)")
    p.add_argument("--rounds", type=int, default=300, help="rounds of 64 windows per timing")
    p.add_argument("--worker", metavar="DIR", help="import the worker package from DIR")
    return p


def messages(form: str) -> list[mqtt.MQTTMessage]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(WINDOWS):
        x = rng.normal(size=(100, 9)).astype(np.float32)
        doc: dict[str, Any] = {"seq": i, "ts": 1.5}
        if form == "bin":
            doc.update(x=x.tobytes(), shape=[100, 9], dtype="<f4")
        else:
            doc["x"] = x.tolist()
        msg = mqtt.MQTTMessage(mid=i + 1, topic=f"imu/load-{i % 8}/window".encode())
        msg.payload = msgpack.packb(doc)
        msg.qos = 1
        msg.properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        out.append(msg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        sys.path.insert(0, args.worker)
    from worker import backends
    from worker.service import Worker
    from worker.settings import WorkerSettings

    settings = WorkerSettings(_env_file=None, worker_id="bench",  # type: ignore[call-arg]
                              metrics_port=0, batch_max_size=BATCH)
    worker = Worker(settings, backends.create("stub", settings))
    answered = [0]

    def publish(topic: str, payload: bytes, **kw: Any) -> bool:
        answered[0] += topic.endswith(("/result", "/error"))  # not the summaries
        if kw.get("on_acked") is not None:
            kw["on_acked"]()  # as if the broker had acknowledged it at once
        return True

    worker.link.publish = publish  # type: ignore[method-assign]
    worker.link.client.ack = lambda mid, qos: None  # type: ignore[method-assign]
    worker._serving = True
    if hasattr(worker, "intake"):
        worker.intake.accepting = True
    else:  # a copy of the package from before the intake had a module of its own
        worker._accepting.set()
    msgs = messages(args.form)

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for start in range(0, WINDOWS, BATCH):
                for msg in msgs[start:start + BATCH]:
                    worker._on_message(worker.link.client, None, msg)
                worker._tick()

    run(50)
    gc.collect()
    gc.freeze()
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        run(args.rounds)
        timings.append((time.perf_counter() - started) / (args.rounds * WINDOWS) * 1e6)
    expected = (50 + args.repeats * args.rounds) * WINDOWS
    if answered[0] != expected:
        raise SystemExit(f"{answered[0]} answers for {expected} windows: the worker misbehaved")
    print(f"worker's own cost, {args.form}: {min(timings):.2f} us/window fastest, "
          f"{statistics.median(timings):.2f} median of {args.repeats} "
          f"(the package in {Path(str(sys.modules['worker'].__file__)).parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
