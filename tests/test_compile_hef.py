"""scripts/compile_hef.sh against a stand-in for Hailo's Dataflow Compiler.

The DFC is licensed and x86-64 only, so it cannot be installed here. The stand-in `hailo`
(docker/hailo_compiler/standin/hailo_standin.py) put first on PATH records every call (argv and
cwd) and writes the file each real step writes (`parser onnx --har-path`, `optimize
--output-har-path`, `compiler --output-dir` -> <net>.hef), refusing inputs that do not exist, so
the script's plumbing, naming, checksums and rollback rules are tested for real; what the real
DFC does inside each step is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import REPO

SCRIPT = REPO / "scripts" / "compile_hef.sh"
REFERENCE_ONNX = REPO / "artifacts" / "tcn_encoder-v0.1.0.onnx"

STAND_IN = REPO / "docker" / "hailo_compiler" / "standin" / "hailo_standin.py"


class Dfc:
    """A scratch project: the stand-in on PATH, an ONNX model, calibration sets, artifacts/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        bin_dir = root / "bin"
        bin_dir.mkdir()
        hailo = bin_dir / "hailo"
        hailo.write_text(f"#!{sys.executable}\nimport runpy\n"
                         f"runpy.run_path({str(STAND_IN)!r}, run_name='__main__')\n")
        hailo.chmod(0o755)
        self.log = root / "hailo-calls.jsonl"
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.out = root / "artifacts"
        self.out.mkdir()
        shutil.copy(REFERENCE_ONNX, self.out / REFERENCE_ONNX.name)
        # This interpreter's directory next, so the script's python3 (its calibration check)
        # is a real one with numpy, not a slow version-manager shim.
        path = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]])
        self.env = {**os.environ, "PATH": path,
                    "HAILO_STANDIN_LOG": str(self.log), "TMPDIR": str(self.tmp)}

    def calib(self, name: str, seed: int, dtype: Any = np.float32) -> Path:
        path = self.root / name
        np.save(path, np.random.default_rng(seed).standard_normal((8, 100, 9)).astype(dtype))
        return path

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], cwd=self.root,
                              env={**self.env, **env}, capture_output=True, text=True,
                              timeout=60)

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def sums(self) -> dict[str, str]:
        lines = (self.out / "hef_sha256sum.txt").read_text().splitlines()
        return {name: digest for digest, name in (line.split("  ") for line in lines)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def dfc(tmp_path: Path) -> Dfc:
    return Dfc(tmp_path)


def test_parse_optimize_compile_then_versioned_hef_and_checksum(dfc: Dfc) -> None:
    calib = dfc.calib("calib.npy", 1)
    script = dfc.root / "model.alls"
    script.write_text("normalization1 = normalization([0.0], [1.0])\n")
    done = dfc.run("--calib", "calib.npy", "--onnx", "artifacts/tcn_encoder-v0.1.0.onnx",
                   "--model-script", "model.alls", "--end-node-names", "latent_head motif_head")
    assert done.returncode == 0, done.stderr

    hef = dfc.out / "tcn_encoder-v0.1.0.hef"  # the version comes from the ONNX file's name
    assert sorted(p.name for p in dfc.out.iterdir()) == [
        "hef_sha256sum.txt", "tcn_encoder-v0.1.0.hef", "tcn_encoder-v0.1.0.onnx"]
    assert (dfc.out / "hef_sha256sum.txt").read_text() == f"{sha256(hef)}  {hef.name}\n"
    check = subprocess.run(["sha256sum", "-c", "hef_sha256sum.txt"], cwd=dfc.out,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    parse, optimize, compile_ = dfc.calls()
    onnx = str((dfc.out / "tcn_encoder-v0.1.0.onnx").resolve())
    har = parse["argv"][parse["argv"].index("--har-path") + 1]
    assert parse["argv"] == ["parser", "onnx", onnx, "--net-name", "tcn_encoder",
                             "--hw-arch", "hailo8", "--har-path", har, "-y",
                             "--end-node-names", "latent_head", "motif_head"]
    optimized = optimize["argv"][optimize["argv"].index("--output-har-path") + 1]
    assert optimize["argv"] == ["optimize", har, "--hw-arch", "hailo8", "--calib-set-path",
                                str(calib.resolve()), "--output-har-path", optimized,
                                "--model-script", str(script.resolve())]
    assert compile_["argv"][:4] == ["compiler", optimized, "--hw-arch", "hailo8"]
    assert compile_["argv"][4] == "--output-dir"
    # Every step ran in one scratch directory (where the DFC leaves its logs), now removed.
    assert parse["cwd"] == optimize["cwd"] == compile_["cwd"]
    assert Path(parse["cwd"]).parent == dfc.tmp and not any(dfc.tmp.iterdir())
    assert json.loads(hef.read_bytes()[4:]) == {
        "net": "tcn_encoder", "arch": "hailo8", "onnx": sha256(REFERENCE_ONNX),
        "calib": sha256(calib)}
    assert "HEF_PATH=/models/tcn_encoder-v0.1.0.hef" in done.stderr


def test_new_versions_keep_the_earlier_ones_and_their_lines(dfc: Dfc) -> None:
    dfc.calib("calib.npy", 1)
    dfc.calib("calib2.npy", 2)
    assert dfc.run("--calib", "calib.npy").returncode == 0
    v1 = dfc.out / "tcn_encoder-v0.1.0.hef"
    v1_bytes, v1_sum = v1.read_bytes(), sha256(v1)

    second = dfc.run("--calib", "calib2.npy", "--version", "0.2.0", "--hw-arch", "hailo8l")
    assert second.returncode == 0, second.stderr
    v2 = dfc.out / "tcn_encoder-v0.2.0.hef"
    assert v1.read_bytes() == v1_bytes and v2.read_bytes() != v1_bytes
    assert dfc.sums() == {v1.name: v1_sum, v2.name: sha256(v2)}
    assert (dfc.out / "hef_sha256sum.txt").read_text().splitlines()[0].endswith(v1.name)

    # The same version again is refused, and nothing changes.
    before = {p.name: p.read_bytes() for p in dfc.out.iterdir()}
    again = dfc.run("--calib", "calib2.npy", "--version", "0.1.0")
    assert again.returncode == 2
    assert "tcn_encoder-v0.1.0.hef exists" in again.stderr and "rollback" in again.stderr
    assert {p.name: p.read_bytes() for p in dfc.out.iterdir()} == before

    # --force replaces it and its line only.
    forced = dfc.run("--calib", "calib2.npy", "--version", "0.1.0", "--force")
    assert forced.returncode == 0, forced.stderr
    assert v1.read_bytes() != v1_bytes
    assert dfc.sums() == {v1.name: sha256(v1), v2.name: sha256(v2)}


def test_an_older_line_is_never_rehashed(dfc: Dfc) -> None:
    dfc.calib("calib.npy", 1)
    assert dfc.run("--calib", "calib.npy").returncode == 0
    v1 = dfc.out / "tcn_encoder-v0.1.0.hef"
    listed = dfc.sums()[v1.name]
    v1.write_bytes(b"tampered")
    assert dfc.run("--calib", "calib.npy", "--version", "0.2.0").returncode == 0
    assert dfc.sums()[v1.name] == listed != sha256(v1)  # the worker will refuse the changed one


def test_a_failed_step_publishes_nothing_and_keeps_the_logs(dfc: Dfc) -> None:
    dfc.calib("calib.npy", 1)
    assert dfc.run("--calib", "calib.npy").returncode == 0
    sums_before = (dfc.out / "hef_sha256sum.txt").read_text()
    failed = dfc.run("--calib", "calib.npy", "--version", "0.2.0", HAILO_STANDIN_FAIL="optimize")
    assert failed.returncode == 1
    assert "optimize failed" in failed.stderr
    assert [c["argv"][0] for c in dfc.calls()][-2:] == ["parser", "optimize"]
    assert not (dfc.out / "tcn_encoder-v0.2.0.hef").exists()
    assert (dfc.out / "hef_sha256sum.txt").read_text() == sums_before
    kept = [p for p in dfc.tmp.iterdir()]
    assert len(kept) == 1 and (kept[0] / "hailo_sdk.client.log").read_text() == "optimize\n"
    assert f"work directory with the DFC's logs kept: {kept[0]}" in failed.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--calib", "missing.npy"], {}, "--calib: no such file: missing.npy"),
        (["--calib", "calib64.npy"], {}, "need float32 [N, ...] windows, got float64"),
        (["--calib", "calib.npy"], {"HAILO": "no-such-hailo"},
         "('no-such-hailo') is not on PATH"),
        (["--calib", "calib.npy", "--onnx", "model.onnx"], {},
         "--version: not given, and model.onnx has no -v<version>"),
        (["--calib", "calib.npy", "--version", "1.0/../x"], {}, "--version: not a version"),
        (["--calib", "calib.npy", "--bogus"], {}, "unknown argument: --bogus"),
    ],
)
def test_bad_inputs_stop_before_the_dfc(dfc: Dfc, args: list[str], env: dict[str, str],
                                        message: str) -> None:
    dfc.calib("calib.npy", 1)
    dfc.calib("calib64.npy", 1, dtype=np.float64)
    shutil.copy(REFERENCE_ONNX, dfc.root / "model.onnx")
    done = dfc.run(*args, **env)
    assert done.returncode == 2
    assert message in done.stderr
    assert dfc.calls() == [] and not (dfc.out / "hef_sha256sum.txt").exists()
