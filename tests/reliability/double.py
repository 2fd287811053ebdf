"""Driving the HailoRT test double (tests/hailo_double) from outside the worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import HAILO_DOUBLE


def make_hef(path: Path) -> Path:
    """A HEF the double accepts, for the reference model (in a child: the double stays out of
    this process's imports)."""
    subprocess.run([sys.executable, str(HAILO_DOUBLE / "make_hef.py"), str(path)], check=True,
                   capture_output=True, timeout=60)
    return path


def write_control(path: Path, **fields: Any) -> None:
    """Replace the double's control file atomically; the worker's double re-reads it on every
    device call (fields: tests/hailo_double/README.md)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, path)
