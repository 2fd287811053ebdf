"""The `hailo` backend against the HailoRT test double (tests/hailo_double), in process.

The double runs the HEF's ONNX model, so results must equal onnxruntime's; faults come from
its control file. HAILO_DOUBLE_DEVICE_LOCK is set for every test, so a backend that opens
the device twice, or forgets to release it, fails with HAILO_OUT_OF_PHYSICAL_DEVICES.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from worker.backends.base import InferenceError
from worker.settings import REFERENCE_ONNX, ConfigError, WorkerSettings

DOUBLE_DIR = Path(__file__).resolve().parent / "hailo_double"
REPO = DOUBLE_DIR.parent.parent


@dataclass
class Double:
    control: Path
    ctl: ModuleType  # hailo_platform._double
    make_hef: ModuleType
    tmp: Path

    def set(self, **fields: Any) -> None:
        self.ctl.write_control(self.control, **fields)

    def runs(self) -> list[int]:
        """Frames per run_async call, in order."""
        return [e["frames"] for e in self.ctl.events if e["event"] == "run_async"]

    def count(self, event: str) -> int:
        return sum(1 for e in self.ctl.events if e["event"] == event)

    def hef(self, name: str = "tcn_encoder-v0.1.0.hef", **kwargs: Any) -> Path:
        return Path(self.make_hef.write_hef(self.tmp / name, onnx_path(self.tmp), **kwargs))


def onnx_path(tmp: Path) -> Path:
    if REFERENCE_ONNX.is_file():
        return REFERENCE_ONNX
    tiny = tmp / "tiny.onnx"
    if not tiny.exists():
        sys.path.insert(0, str(DOUBLE_DIR))
        importlib.import_module("make_hef").write_tiny_onnx(tiny)
    return tiny


@pytest.fixture
def double(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Double]:
    monkeypatch.syspath_prepend(str(DOUBLE_DIR))
    control = tmp_path / "control.json"
    monkeypatch.setenv("HAILO_DOUBLE_CONTROL", str(control))
    monkeypatch.setenv("HAILO_DOUBLE_LATENCY_MS", "0.2")
    monkeypatch.setenv("HAILO_DOUBLE_PER_FRAME_MS", "0.02")
    monkeypatch.setenv("HAILO_DOUBLE_DEVICE_LOCK", str(tmp_path / "hailo0.lock"))
    monkeypatch.delenv("HAILO_DOUBLE_LOG", raising=False)
    ctl = importlib.import_module("hailo_platform._double")
    ctl.events.clear()
    yield Double(control, ctl, importlib.import_module("make_hef"), tmp_path)
    # Other tests must not find the double where the real wheel would be.
    for name in [m for m in sys.modules if m.split(".")[0] in ("hailo_platform", "make_hef")]:
        del sys.modules[name]


@pytest.fixture
def hef(double: Double) -> Path:
    # Motif scores listed first: the backend must map outputs by size, not by position.
    return double.hef(reverse_outputs=True)


@pytest.fixture
def make_backend(hef: Path) -> Iterator[Callable[..., Any]]:
    from worker.backends.hailo import HailoBackend

    made: list[HailoBackend] = []

    def make(**overrides: Any) -> HailoBackend:
        fields: dict[str, Any] = {"infer_mode": "hailo", "hef_path": hef, "batch_max_size": 8,
                                  "device_timeout_ms": 150, "hailo_fallback": "none"}
        fields.update(overrides)
        backend = HailoBackend(WorkerSettings(_env_file=None, **fields))  # type: ignore[call-arg]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture(scope="module")
def reference() -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    sessions: dict[Path, ort.InferenceSession] = {}

    def run(windows: np.ndarray, model: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        path = model or REFERENCE_ONNX
        if path not in sessions:
            sessions[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        latent, motifs = sessions[path].run(["latent", "motif_scores"], {"x": windows})
        return latent, motifs

    return run


def windows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 100, 9)).astype(np.float32)


def assert_matches(backend: Any, reference: Callable[..., Any], double: Double, n: int,
                   seed: int) -> None:
    w = windows(n, seed)
    latent, motifs = backend.infer(w)
    want_latent, want_motifs = reference(w, onnx_path(double.tmp))
    assert latent.shape == (n, 64) and motifs.shape == (n, 12)
    assert latent.dtype == np.float32 and motifs.dtype == np.float32
    np.testing.assert_allclose(latent, want_latent, rtol=0, atol=1e-5)
    np.testing.assert_allclose(motifs, want_motifs, rtol=0, atol=1e-5)


# -- results ------------------------------------------------------------------------------


def test_results_equal_onnxruntime_for_batch_sizes_1_to_8(make_backend: Callable[..., Any],
                                                           reference: Any, double: Double) -> None:
    backend = make_backend()
    for n in range(1, 9):
        # Fresh windows each round: a Bindings reused without re-setting its output buffers
        # would leave the previous results in place (the double reproduces HailoRT there).
        for seed in (n, 100 + n):
            assert_matches(backend, reference, double, n, seed)
    assert double.runs() == [n for n in range(1, 9) for _ in range(2)]
    assert double.count("vdevice_open") == 1 and double.count("configure") == 1


def test_results_equal_the_cpu_backend(make_backend: Callable[..., Any], double: Double) -> None:
    from worker.backends.cpu import CpuBackend

    cpu = CpuBackend(WorkerSettings(_env_file=None, infer_mode="cpu",  # type: ignore[call-arg]
                                    onnx_path=onnx_path(double.tmp)))
    hailo = make_backend()
    w = windows(8, 42)
    for got, want in zip(hailo.infer(w), cpu.infer(w), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_two_batches_on_the_chip_at_once_keep_their_own_results(
        make_backend: Callable[..., Any], reference: Any, double: Double) -> None:
    # Pipelining: the second batch is submitted while the first is still on the chip, so the
    # chip never waits for the host; each batch has its own bindings and output buffers.
    double.set(latency_ms=40)  # the second batch's wait includes the first's: within 150 ms
    backend = make_backend()
    a, b, c = windows(8, 1), windows(5, 2), windows(3, 3)
    first = backend.submit(a)
    second = backend.submit(b)
    assert double.count("run_async") == 2 and double.count("job_done") == 0
    got_a = first()
    third = backend.submit(c)  # reuses the first batch's bindings, now free again
    for got, w in ((got_a, a), (second(), b), (third(), c)):
        want = reference(w, onnx_path(double.tmp))
        for g, e in zip(got, want, strict=True):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def test_outputs_are_mapped_by_size_not_position(make_backend: Callable[..., Any]) -> None:
    info = make_backend().info()
    assert info["outputs"] == {
        "latent": {"name": "tcn_encoder/output_layer2", "shape": [64]},
        "motif_scores": {"name": "tcn_encoder/output_layer1", "shape": [12]},
    }
    assert info["input"] == {"name": "tcn_encoder/input_layer1", "shape": [1, 100, 9]}


def test_a_batch_larger_than_the_async_queue_goes_in_chunks(make_backend: Callable[..., Any],
                                                            reference: Any, double: Double) -> None:
    double.set(async_queue_size=3)
    backend = make_backend()
    assert_matches(backend, reference, double, 8, seed=7)
    assert double.runs() == [3, 3, 2]


# -- faults -------------------------------------------------------------------------------


def test_device_timeout_bounds_the_whole_batch(make_backend: Callable[..., Any],
                                              double: Double) -> None:
    """Chunked or not, one infer() is one device call for the worker's watchdog."""
    double.set(async_queue_size=2, latency_ms=60)
    backend = make_backend(device_timeout_ms=150)
    started = time.monotonic()
    with pytest.raises(InferenceError, match="DEVICE_TIMEOUT_MS=150"):
        backend.infer(windows(8, 1))  # 4 chunks of 60 ms on the chip
    assert time.monotonic() - started < 0.15 + 0.1


def test_timeout_is_an_error_then_reopen_recovers(make_backend: Callable[..., Any],
                                                  reference: Any, double: Double) -> None:
    backend = make_backend(device_timeout_ms=120)
    double.set(timeouts_next_n=1)
    started = time.monotonic()
    with pytest.raises(InferenceError, match="DEVICE_TIMEOUT_MS=120") as err:
        backend.infer(windows(4, 1))
    assert err.value.device_lost
    assert time.monotonic() - started >= 0.1  # waited for the job, not a made-up answer
    # Unavailable until reopen: no further batch reaches the device.
    with pytest.raises(InferenceError) as again:
        backend.infer(windows(1, 2))
    assert again.value.device_lost and double.runs() == [4]
    # reopen releases the old VDevice first (the device lock would refuse a second owner).
    backend.reopen()
    assert backend.available
    assert_matches(backend, reference, double, 5, seed=3)
    assert double.count("vdevice_open") == 2


def test_job_failing_on_the_device_is_an_error(make_backend: Callable[..., Any],
                                               reference: Any, double: Double) -> None:
    """HailoRT reports a failed job only to the run_async callback; job.wait() returns."""
    backend = make_backend()
    double.set(fail_next_n=1)
    with pytest.raises(InferenceError, match="HailoRTDriverOperationFailedException") as err:
        backend.infer(windows(3, 1))
    assert err.value.device_lost
    backend.reopen()
    assert_matches(backend, reference, double, 3, seed=2)


@pytest.mark.parametrize(("kind", "error"), [("closed", "HailoCommunicationClosedException"),
                                             (True, "HailoRTDriverOperationFailedException")])
def test_device_lost_until_cleared(make_backend: Callable[..., Any], reference: Any,
                                   double: Double, kind: Any, error: str) -> None:
    backend = make_backend()
    double.set(device_lost=kind)
    with pytest.raises(InferenceError, match=error) as err:
        backend.infer(windows(2, 1))
    assert err.value.device_lost
    with pytest.raises(InferenceError, match="HAILO_OUT_OF_PHYSICAL_DEVICES") as still:
        backend.reopen()
    assert still.value.device_lost and not backend.available
    info = backend.info()
    assert info["available"] is False and info["temperature_c"] is None
    double.set()
    backend.reopen()
    assert_matches(backend, reference, double, 2, seed=2)


def test_device_missing_at_start_then_reopen(make_backend: Callable[..., Any], reference: Any,
                                             double: Double) -> None:
    double.set(open_fails=True)
    backend = make_backend()  # constructed: the worker must start and serve per HAILO_FALLBACK
    assert not backend.available
    assert "HAILO_OUT_OF_PHYSICAL_DEVICES" in (backend.unavailable_reason or "")
    info = backend.info()
    assert info["available"] is False and info["device"] is None
    assert info["temperature_c"] is None and info["hef_sha256"] == backend.hef_sha256
    with pytest.raises(InferenceError) as err:
        backend.infer(windows(1, 1))
    assert err.value.device_lost and double.runs() == []
    with pytest.raises(InferenceError, match="still unavailable"):
        backend.reopen()
    double.set(open_fails=False)
    backend.reopen()
    assert backend.available
    assert_matches(backend, reference, double, 6, seed=4)


def test_one_owner_at_a_time(make_backend: Callable[..., Any], reference: Any,
                             double: Double) -> None:
    first = make_backend()
    second = make_backend()
    assert first.available and not second.available
    first.close()
    second.reopen()
    assert_matches(second, reference, double, 2, seed=5)


def test_close_is_safe_twice_and_frees_the_device(make_backend: Callable[..., Any],
                                                  double: Double) -> None:
    backend = make_backend()
    backend.close()
    backend.close()
    assert double.count("chip_closed") == 1
    with pytest.raises(InferenceError):
        backend.infer(windows(1, 1))
    assert make_backend().available


def test_another_process_cannot_take_the_device(make_backend: Callable[..., Any],
                                                double: Double, hef: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The control interface works across processes: lock, log and control file."""
    log = double.tmp / "double.log"
    owner = make_backend()
    assert owner.available
    monkeypatch.setenv("HAILO_DOUBLE_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", str(DOUBLE_DIR))
    code = textwrap.dedent(f"""
        from worker.backends.hailo import HailoBackend
        from worker.settings import WorkerSettings
        b = HailoBackend(WorkerSettings(_env_file=None, infer_mode="hailo", hef_path={str(hef)!r}))
        print(b.available, b.unavailable_reason)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False") and "HAILO_OUT_OF_PHYSICAL_DEVICES" in out.stdout
    assert [e["event"] for e in double.ctl.read_log(log)] == ["vdevice_open_failed"]


# -- start-up refusals (ConfigError, exit 2) ----------------------------------------------


def test_hef_with_another_listed_hash_is_refused(make_backend: Callable[..., Any], hef: Path,
                                                double: Double) -> None:
    other = "ab" * 32
    (hef.parent / "hef_sha256sum.txt").write_text(f"{other}  {hef.name}\n")
    with pytest.raises(ConfigError, match=f"^HEF_PATH: sha256 [0-9a-f]{{64}} differs from {other}"):
        make_backend()
    assert double.count("vdevice_open") == 0


def test_hef_with_the_listed_hash_is_accepted(make_backend: Callable[..., Any], hef: Path,
                                              double: Double) -> None:
    sums = double.make_hef.write_sums(hef)
    backend = make_backend()
    assert sums.read_text().split()[0] == backend.hef_sha256 == backend.info()["hef_sha256"]


@pytest.mark.parametrize(("overrides", "setting"), [
    ({"num_motifs": 13}, "NUM_MOTIFS"),
    ({"latent_dim": 65}, "LATENT_DIM"),
    ({"window_length": 50}, "WINDOW_LENGTH/CHANNELS"),
    ({"channels": 6}, "WINDOW_LENGTH/CHANNELS"),
])
def test_shape_mismatch_is_refused_naming_the_setting(make_backend: Callable[..., Any],
                                                      double: Double, overrides: dict[str, int],
                                                      setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_backend(**overrides)
    assert str(err.value).startswith(f"{setting}: ")
    assert double.count("vdevice_open") == 0


def test_hef_for_another_architecture_is_refused(make_backend: Callable[..., Any],
                                                 double: Double) -> None:
    double.set(arch="HAILO8L")
    with pytest.raises(ConfigError, match=r"^HEF_PATH: .* another Hailo architecture"):
        make_backend()
    # ... and nothing is left holding the device.
    double.set(arch="HAILO8L")
    assert make_backend(hef_path=double.hef("for-8l.hef", hw_arch="hailo8l")).available


def test_not_a_hef_is_refused(make_backend: Callable[..., Any], double: Double) -> None:
    bogus = double.tmp / "bogus.hef"
    bogus.write_bytes(b"\x01HEF not really")
    with pytest.raises(ConfigError, match=r"^HEF_PATH: HailoRT cannot read .*InvalidHEF"):
        make_backend(hef_path=bogus)


def test_missing_wheel_says_what_to_install(make_backend: Callable[..., Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hailo_platform", None)
    with pytest.raises(ConfigError, match=r"^INFER_MODE: hailo needs HailoRT's Python wheel") as e:
        make_backend()
    assert "sudo apt install hailo-all" in str(e.value)


# -- info ---------------------------------------------------------------------------------


def test_info_reports_identity_and_temperature(make_backend: Callable[..., Any],
                                               double: Double) -> None:
    double.set(temperature_c=61.3)
    backend = make_backend()
    info = backend.info()
    assert info["backend"] == "hailo" and info["model"] == "tcn_encoder-v0.1.0"
    assert info["available"] is True and info["temperature_c"] == 61.3
    assert info["device"]["architecture"] == "HAILO8"
    assert info["device"]["serial_number"] == "HAILO-DOUBLE-0001"
    assert info["batch_size"] == 8 and info["async_queue_size"] == 16
    json.dumps(info)  # the status and --check publish it as JSON
    double.set(device_lost=True)
    assert backend.info()["temperature_c"] is None


# -- output mapping -----------------------------------------------------------------------


def test_map_outputs_by_configured_name() -> None:
    from worker.backends.hailo import map_outputs

    outputs = {"net/a": (12,), "net/b": (12,)}
    with pytest.raises(ConfigError, match=r"^LATENT_DIM: 2 HEF outputs .* set HAILO_LATENT_OUTPUT"):
        map_outputs(outputs, 12, 12)
    assert map_outputs(outputs, 12, 12, latent_name="net/b") == ("net/b", "net/a")
    with pytest.raises(ConfigError, match=r"^HAILO_MOTIF_OUTPUT: the HEF has no output 'net/c'"):
        map_outputs(outputs, 12, 12, "net/a", "net/c")
    with pytest.raises(ConfigError, match=r"^NUM_MOTIFS: NUM_MOTIFS=10 but output 'net/a' has 12"):
        map_outputs(outputs, 12, 10, "net/b", "net/a")


# -- the double keeps HailoRT's sharp edges (so the backend is tested against them) -------


def open_model(hef: Path) -> tuple[Any, Any, Any]:
    hp = importlib.import_module("hailo_platform")
    params = hp.VDevice.create_params()
    params.scheduling_algorithm = hp.HailoSchedulingAlgorithm.ROUND_ROBIN
    vdevice = hp.VDevice(params)
    return hp, vdevice, vdevice.create_infer_model(str(hef))


def open_float32_model(hef: Path) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """The model with FLOAT32 streams, and a zeroed host buffer for each output."""
    hp, vdevice, model = open_model(hef)
    model.input().set_format_type(hp.FormatType.FLOAT32)
    for name in model.output_names:
        model.output(name).set_format_type(hp.FormatType.FLOAT32)
    outs = {n: np.zeros(model.output(n).shape, np.float32) for n in model.output_names}
    return vdevice, model, outs


def test_double_refuses_what_hailort_refuses(double: Double, hef: Path) -> None:
    rt = importlib.import_module("hailo_platform.pyhailort.pyhailort")
    hp, vdevice, model = open_model(hef)
    with pytest.raises(ValueError):
        hp.HEF(hef)  # a Path, not str or bytes
    with pytest.raises(rt.HailoRTInvalidOperationException):
        model.output()  # several outputs and no name
    with pytest.raises(rt.HailoRTNotFoundException):
        model.output("latent")  # names carry the network prefix
    with model.configure() as configured:  # formats left at the HEF's UINT8
        bindings = configured.create_bindings(output_buffers={
            n: np.empty(model.output(n).shape, np.float32) for n in model.output_names})
        with pytest.raises(rt.HailoRTException, match="C_CONTIGUOUS"):
            bindings.input().set_buffer(np.zeros((1, 9, 100), np.float32).transpose(0, 2, 1))
        bindings.input().set_buffer(np.zeros((1, 100, 9), np.float32))
        with pytest.raises(rt.HailoRTInvalidOperationException):
            configured.run_async([bindings])  # 3600 bytes given, 900 expected (UINT8)
        with pytest.raises(rt.HailoRTStreamAborted):
            configured.run_async([bindings])  # a refused run_async shut the pipeline down
    vdevice.release()


def test_double_reports_job_failure_only_to_the_callback(double: Double, hef: Path) -> None:
    vdevice, model, outs = open_float32_model(hef)
    with model.configure() as configured:
        bindings = configured.create_bindings(output_buffers=outs)
        bindings.input().set_buffer(windows(1, 0).reshape(1, 100, 9))
        double.set(fail_next_n=1)
        seen: list[Any] = []
        configured.run_async([bindings], lambda completion_info: seen.append(
            completion_info.exception)).wait(1000)
        assert [type(e).__name__ for e in seen] == ["HailoRTDriverOperationFailedException"]
    vdevice.release()


def test_double_leaves_a_reused_bindings_pointing_at_the_freed_buffer(double: Double,
                                                                      hef: Path) -> None:
    vdevice, model, outs = open_float32_model(hef)
    with model.configure() as configured:
        bindings = configured.create_bindings(output_buffers=outs)
        bindings.input().set_buffer(windows(1, 1).reshape(1, 100, 9))
        configured.run_async([bindings]).wait(1000)
        first = {n: a.copy() for n, a in outs.items()}
        assert all(a.any() for a in first.values())
        bindings.input().set_buffer(windows(1, 2).reshape(1, 100, 9))
        configured.run_async([bindings]).wait(1000)  # outputs not set again
        assert all(np.array_equal(outs[n], first[n]) for n in outs)
    vdevice.release()


def test_double_chip_runs_queued_jobs_back_to_back_on_its_own_clock(double: Double,
                                                                    hef: Path) -> None:
    """A job queued behind another starts when that one ends, not when the double's thread
    gets round to it (a real chip needs no host, nor Python's GIL, between jobs): here the
    first job's callback holds the chip thread for 30 ms."""
    double.set(latency_ms=50, per_frame_ms=0)
    vdevice, model, outs = open_float32_model(hef)
    with model.configure() as configured:
        done: list[float] = []

        def slow_callback(completion_info: Any) -> None:
            done.append(time.monotonic())
            if len(done) == 1:
                time.sleep(0.03)

        jobs = []
        start = time.monotonic()
        for seed in (1, 2):
            bindings = configured.create_bindings(output_buffers={
                n: np.zeros_like(a) for n, a in outs.items()})
            bindings.input().set_buffer(windows(1, seed).reshape(1, 100, 9))
            jobs.append(configured.run_async([bindings], slow_callback))
        for job in jobs:
            job.wait(1000)
        first, second = (t - start for t in done)
        assert 0.05 <= first < 0.075
        assert 0.1 <= second < 0.125  # 0.13 if the callback's 30 ms had delayed the chip
    vdevice.release()
