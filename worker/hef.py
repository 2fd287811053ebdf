"""The compiled model's checksum: hash HEF_PATH and compare it with HEF_SHA256_FILE.

The sums file is `sha256sum` output (`<hex>  <name>`, or `<hex> *<name>` in binary mode),
as the compile step writes it. A HEF whose name is listed with another hash is refused; a
HEF that is not listed, or no sums file at all, is accepted (the hash is still reported).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from worker.settings import ConfigError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def listed_sha256(sums_file: Path, name: str) -> str | None:
    """The hash `sums_file` lists for the file called `name` (last entry wins), if any."""
    listed: str | None = None
    for line in sums_file.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or parts[0].startswith("#"):
            continue
        digest, entry = parts
        entry = entry.lstrip("*").strip()
        # A list made elsewhere may name the file with a directory ("artifacts/x.hef").
        if entry == name or Path(entry).name == name:
            listed = digest.lower()
    return listed


def verify_hef(hef_path: Path, sums_file: Path | None, *, data: bytes | None = None) -> str:
    """Return HEF_PATH's sha256, or raise ConfigError if the sums file lists another one.

    `data`, when given, is the HEF's content already read (hashed instead of re-reading, so
    the bytes checked are the bytes loaded).
    """
    actual = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(hef_path)
    if sums_file is None or not sums_file.is_file():
        return actual
    listed = listed_sha256(sums_file, hef_path.name)
    if listed is not None and listed != actual:
        raise ConfigError(f"HEF_PATH: sha256 {actual} differs from {listed} listed in {sums_file}")
    return actual
