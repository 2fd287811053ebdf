"""The JSON Schemas, the AsyncAPI document and the example payloads in schemas/ agree with each
other, with worker.wire, and with what a broker will carry."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import msgpack
import numpy as np
import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError
from schema_util import KINDS, SCHEMA_DIR, validate

from worker.wire import ErrorCode, decode, decode_window, encode, error_doc

ROOT = SCHEMA_DIR.parent
EXAMPLES = SCHEMA_DIR / "examples"
LENGTH, CHANNELS = 100, 9
EXAMPLE_KINDS = {
    "window.json": "window",
    "window.msgpack": "window",
    "window-lists.msgpack": "window",
    "window-seed-zeros.json": "window",
    "result.json": "result",
    "error.json": "error",
    "status.json": "status",
    "status-offline.json": "status",
}
WINDOWS = [name for name, kind in EXAMPLE_KINDS.items() if kind == "window"]


def load_example(name: str) -> dict[str, Any]:
    data = (EXAMPLES / name).read_bytes()
    doc = msgpack.unpackb(data, raw=False) if name.endswith(".msgpack") else json.loads(data)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_valid_draft_2020_12(kind: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", sorted(EXAMPLE_KINDS))
def test_example_validates(name: str) -> None:
    validate(EXAMPLE_KINDS[name], load_example(name))


@pytest.mark.parametrize("name", WINDOWS)
def test_window_example_decodes(name: str) -> None:
    window = decode_window((EXAMPLES / name).read_bytes(), LENGTH, CHANNELS)
    assert window.x.shape == (LENGTH, CHANNELS)
    assert window.x.dtype == np.float32


def test_window_forms_decode_to_the_same_window() -> None:
    decoded = [
        decode_window((EXAMPLES / name).read_bytes(), LENGTH, CHANNELS)
        for name in ("window.msgpack", "window-lists.msgpack", "window.json")
    ]
    for other in decoded[1:]:
        np.testing.assert_array_equal(other.x, decoded[0].x)
        assert (other.seq, other.ts) == (decoded[0].seq, decoded[0].ts) == (42, 1767225600.25)
    # A signal, not a constant: every channel moves.
    assert (decoded[0].x.std(axis=0) > 0).all()


def test_compact_window_is_the_bin_form() -> None:
    doc = load_example("window.msgpack")
    assert isinstance(doc["x"], bytes) and len(doc["x"]) == LENGTH * CHANNELS * 4
    assert (doc["shape"], doc["dtype"]) == ([LENGTH, CHANNELS], "<f4")
    assert isinstance(load_example("window-lists.msgpack")["x"], list)


def test_seed_body_is_the_seeds_zeros() -> None:
    assert load_example("window-seed-zeros.json") == {"x": [[0.0] * 9 for _ in range(100)]}


def test_committed_examples_are_what_the_script_makes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_examples.py"), "--out", str(tmp_path)],
        check=True, capture_output=True, timeout=60,
    )
    made = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in EXAMPLES.iterdir()}
    assert sorted(made) == sorted(committed) == sorted(EXAMPLE_KINDS)
    stale = [name for name in made if made[name] != committed[name]]
    assert not stale, f"run `python scripts/make_examples.py`: {stale} differ"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        doc[path] = value
    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        del doc[key]
    return mutate


NEGATIVE: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("result.json", "63 latents", lambda d: d["latent"].pop()),
    ("result.json", "13 motif scores", lambda d: d["motif_scores"].append(0.0)),
    ("result.json", "a latent that is a string", lambda d: d["latent"].__setitem__(0, "0.1")),
    ("result.json", "an unknown key", _set("extra", 1)),
    ("result.json", "batch_size 0", _set("batch_size", 0)),
    ("result.json", "negative latency", _set("latency_ms", -1.0)),
    ("result.json", "no worker_id", _drop("worker_id")),
    ("result.json", "a sensor_id with a slash", _set("sensor_id", "a/b")),
    ("error.json", "an unknown code", _set("error", "timeout")),
    ("error.json", "no detail", _drop("detail")),
    ("error.json", "a float seq", _set("seq", 1.5)),
    ("status.json", "an unknown state", _set("state", "busy")),
    ("status.json", "an unknown mode", _set("mode", "gpu")),
    ("status.json", "a local time", _set("updated_at", "2026-01-01T01:00:00")),
    ("status.json", "a negative queue depth", _set("queue_depth", -1)),
    ("status.json", "a short hef hash", _set("hef_sha256", "abc123")),
    ("status.json", "no version", _drop("version")),
    ("status-offline.json", "the will's two keys under state online", _set("state", "online")),
    ("status-offline.json", "no worker_id", _drop("worker_id")),
    ("window.json", "99 rows", lambda d: d["x"].pop()),
    ("window.json", "a row of 8", lambda d: d["x"][5].pop()),
    ("window.json", "a string number", lambda d: d["x"][0].__setitem__(0, "1.0")),
    ("window.json", "no x", _drop("x")),
    ("window.json", "a string ts", _set("ts", "now")),
    ("window.msgpack", "bin without dtype", _drop("dtype")),
    ("window.msgpack", "bin with dtype <f8", _set("dtype", "<f8")),
    ("window.msgpack", "bin of shape [99, 9]", _set("shape", [99, 9])),
    ("window.msgpack", "bin of 3596 bytes", lambda d: d.__setitem__("x", d["x"][:-4])),
]


@pytest.mark.parametrize(("name", "why", "mutate"), NEGATIVE, ids=[n[1] for n in NEGATIVE])
def test_schema_refuses(name: str, why: str, mutate: Callable[[dict[str, Any]], None]) -> None:
    doc = copy.deepcopy(load_example(name))
    mutate(doc)
    with pytest.raises(ValidationError):
        validate(EXAMPLE_KINDS[name], doc)


def test_status_allows_fields_of_the_workers_own() -> None:
    validate("status", {**load_example("status.json"), "temperature_c": 51.5, "connected": True})
    validate("status", {**load_example("status-offline.json"), "connected": False})
    validate("status", {**load_example("status.json"), "state": "offline"})


def test_error_codes_match_the_wire_module() -> None:
    schema = json.loads((SCHEMA_DIR / "error.schema.json").read_text())
    assert set(schema["properties"]["error"]["enum"]) == set(get_args(ErrorCode))
    for code in get_args(ErrorCode):
        validate("error", error_doc("demo", code, "Something went wrong.", None))


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_encoded_result_and_error_still_validate(encoding: Any) -> None:
    for name in ("result.json", "error.json"):
        validate(EXAMPLE_KINDS[name], decode(encode(load_example(name), encoding)))


def test_validate_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown schema kind"):
        validate("bogus", {})


# --- AsyncAPI -------------------------------------------------------------------------------

ASYNCAPI = SCHEMA_DIR / "asyncapi.yaml"


def resolve(ref: str, base: Path, root: Any) -> Any:
    """Follow a $ref (local pointer or file relative to `base`); KeyError/OSError if it dangles."""
    target, _, pointer = ref.partition("#")
    node = root
    if target:
        text = (base / target).read_text()
        node = json.loads(text) if target.endswith(".json") else yaml.safe_load(text)
    for part in filter(None, pointer.split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    doc = yaml.safe_load(ASYNCAPI.read_text())
    assert isinstance(doc, dict)
    return doc


def test_asyncapi_is_3_0_with_the_contracts_channels(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    addresses = {ch["address"] for ch in asyncapi["channels"].values()}
    assert addresses == {
        "imu/{sensor_id}/window",
        "infer/{sensor_id}/result",
        "infer/{sensor_id}/error",
        "hailo/{worker_id}/status",
        "infer/{sensor_id}/summary",
        None,  # the reply channel: whatever ResponseTopic the window names
    }


def test_asyncapi_refs_resolve(asyncapi: dict[str, Any]) -> None:
    found = list(refs(asyncapi))
    assert len(found) > 20
    for ref in found:
        resolve(ref, SCHEMA_DIR, asyncapi)


def test_asyncapi_ref_check_catches_a_dangling_ref(asyncapi: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        resolve("#/components/messages/nope", SCHEMA_DIR, asyncapi)
    with pytest.raises(OSError):
        resolve("./nope.schema.json", SCHEMA_DIR, asyncapi)


def test_every_message_payload_is_a_schema_file(asyncapi: dict[str, Any]) -> None:
    seen = set()
    for channel in asyncapi["channels"].values():
        for ref in channel["messages"].values():
            payload = resolve(ref["$ref"], SCHEMA_DIR, asyncapi)["payload"]
            file_ref = payload["schema"]["$ref"]
            Draft202012Validator.check_schema(resolve(file_ref, SCHEMA_DIR, asyncapi))
            seen.add(Path(file_ref).name)
    assert seen == {f"{kind}.schema.json" for kind in KINDS}


def test_asyncapi_operations_from_the_workers_side(asyncapi: dict[str, Any]) -> None:
    ops = asyncapi["operations"]
    actions = {
        resolve(op["channel"]["$ref"], SCHEMA_DIR, asyncapi)["address"]: op["action"]
        for op in ops.values()
    }
    assert actions == {
        "imu/{sensor_id}/window": "receive",
        "infer/{sensor_id}/result": "send",
        "infer/{sensor_id}/error": "send",
        "hailo/{worker_id}/status": "send",
        "infer/{sensor_id}/summary": "send",
    }
    retained = {"#/channels/status", "#/channels/summary"}
    for op in ops.values():
        channel_ref = op["channel"]["$ref"]
        # An operation may only name messages of its own channel.
        assert all(m["$ref"].startswith(channel_ref + "/messages/") for m in op["messages"])
        binding = op["bindings"]
        binding = resolve(binding["$ref"], SCHEMA_DIR, asyncapi) if "$ref" in binding else binding
        assert binding["mqtt"]["qos"] == (0 if channel_ref == "#/channels/summary" else 1)
        assert binding["mqtt"].get("retain", False) is (channel_ref in retained)
    assert ops["receiveWindow"]["reply"]["channel"]["$ref"] == "#/channels/reply"


# --- mosquitto_pub can send the examples ----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = _free_port()
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(("name", "flag"), [("window.msgpack", "-f"), ("window.json", "-m")])
def test_mosquitto_pub_sends_the_example(broker_port: int, name: str, flag: str) -> None:
    path = EXAMPLES / name
    # `-m "$(cat file)"` as the README says: the shell drops the trailing newline.
    value = str(path) if flag == "-f" else path.read_text().rstrip("\n")
    topic = f"imu/demo-{name.replace('.', '-')}/window"
    # Retained, so the subscriber started after it still gets it: no race to set up.
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker_port), "-t", topic, "-q", "1",
         "-r", flag, value],
        check=True, timeout=10,
    )
    got = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker_port), "-t", topic,
         "-C", "1", "-N", "-W", "5"],
        check=True, capture_output=True, timeout=10,
    ).stdout
    expected = path.read_bytes() if flag == "-f" else value.encode()
    assert got == expected
    assert decode_window(got, LENGTH, CHANNELS).seq == 42
