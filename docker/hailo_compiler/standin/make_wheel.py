"""Package the stand-in `hailo` command as a fake Dataflow Compiler wheel, for CI only.

`python docker/hailo_compiler/standin/make_wheel.py DIR` writes
DIR/hailo_dataflow_compiler-0.0.0-py3-none-any.whl: the name the compiler image's entry point
looks for, holding hailo_standin.py and a `hailo` console script. Mounted where the real wheel
would be, it lets scripts/docker_ci.sh run the compiler image end to end (install on first use,
then parse, optimize, compile) without Hailo's licensed tools.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

NAME, VERSION = "hailo_dataflow_compiler", "0.0.0"


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(out_dir: Path) -> Path:
    info = f"{NAME}-{VERSION}.dist-info"
    files = {
        "hailo_standin.py": (Path(__file__).parent / "hailo_standin.py").read_bytes(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: make_wheel.py\n"
                         b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": b"[console_scripts]\nhailo = hailo_standin:main\n",
    }
    wheel = out_dir / f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(path, data)
        record = [_record_line(p, d) for p, d in files.items()] + [f"{info}/RECORD,,"]
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


if __name__ == "__main__":
    print(make_wheel(Path(sys.argv[1])))
