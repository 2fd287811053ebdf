"""A stand-in for Hailo's `hailo` command (the Dataflow Compiler's CLI), for tests only.

The DFC is licensed and cannot be installed on the machines that test this project. This
double answers the three calls `scripts/compile_hef.sh` makes, with the real names and options,
and writes the file each real step writes, so that the script and the compiler image are tested
for real short of the compilation itself:

    hailo parser onnx MODEL --net-name N --hw-arch A --har-path X.har [-y] [--end-node-names ...]
    hailo optimize X.har --hw-arch A --calib-set-path CALIB --output-har-path Y.har [...]
    hailo compiler Y.har --hw-arch A --output-dir DIR          -> DIR/<N>.hef

Each "HAR" is JSON carrying the hashes of its inputs, and the "HEF" is that JSON behind a
marker, so a test can tell which ONNX and calibration set went into it. Inputs that do not
exist fail as they would with the DFC. Environment: HAILO_STANDIN_LOG (a file to which every
call is appended as a JSON line: argv and cwd), HAILO_STANDIN_FAIL (a step that fails).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    log = os.environ.get("HAILO_STANDIN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"argv": args, "cwd": os.getcwd()}) + "\n")

    def opt(name: str) -> str:
        return args[args.index(name) + 1]

    step = args[0] if args else ""
    Path("hailo_sdk.client.log").write_text(step + "\n")  # the DFC logs to its cwd
    if os.environ.get("HAILO_STANDIN_FAIL") == step:
        print(f"[error] {step} failed", file=sys.stderr)
        return 1
    if step == "parser" and args[1] == "onnx":
        har = {"net": opt("--net-name"), "onnx": _digest(args[2]), "arch": opt("--hw-arch")}
        Path(opt("--har-path")).write_text(json.dumps(har))
    elif step == "optimize":
        har = json.loads(Path(args[1]).read_text())
        har["calib"] = _digest(opt("--calib-set-path"))
        Path(opt("--output-har-path")).write_text(json.dumps(har))
    elif step == "compiler":
        har = json.loads(Path(args[1]).read_text())
        if "calib" not in har:
            print("[error] compiler given an unoptimized HAR", file=sys.stderr)
            return 1
        hef = Path(opt("--output-dir")) / (har["net"] + ".hef")
        hef.write_bytes(b"HEF\0" + json.dumps(har, sort_keys=True).encode())
    else:
        print(f"hailo (stand-in): unknown command {' '.join(args)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
