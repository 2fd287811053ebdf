"""HEF_PATH's checksum against HEF_SHA256_FILE (worker/hef.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.hef import listed_sha256, sha256_file, verify_hef
from worker.settings import ConfigError

OTHER = "0" * 64


@pytest.fixture
def hef(tmp_path: Path) -> Path:
    path = tmp_path / "tcn_encoder-v0.1.0.hef"
    path.write_bytes(b"compiled model bytes\x00\x01" * 1000)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_file_matches_hashlib(hef: Path) -> None:
    assert sha256_file(hef) == digest(hef)


@pytest.mark.parametrize("line", ["{d}  {n}", "{d} *{n}", "{D}  {n}", "{d}  artifacts/{n}"],
                         ids=["text-mode", "binary-mode", "upper-case", "with-directory"])
def test_listed_and_equal_is_accepted(hef: Path, tmp_path: Path, line: str) -> None:
    d = digest(hef)
    sums = tmp_path / "hef_sha256sum.txt"
    sums.write_text(f"{OTHER}  other.hef\n" + line.format(d=d, D=d.upper(), n=hef.name) + "\n")
    assert verify_hef(hef, sums) == d


def test_listed_and_different_is_refused_naming_both_hashes(hef: Path, tmp_path: Path) -> None:
    sums = tmp_path / "hef_sha256sum.txt"
    sums.write_text(f"{OTHER}  {hef.name}\n")
    with pytest.raises(ConfigError) as err:
        verify_hef(hef, sums)
    assert str(err.value) == (
        f"HEF_PATH: sha256 {digest(hef)} differs from {OTHER} listed in {sums}")


def test_not_listed_is_accepted(hef: Path, tmp_path: Path) -> None:
    sums = tmp_path / "hef_sha256sum.txt"
    sums.write_text(f"{OTHER}  tcn_encoder-v0.0.9.hef\n{OTHER} *something-else.hef\n")
    assert listed_sha256(sums, hef.name) is None
    assert verify_hef(hef, sums) == digest(hef)


def test_no_sums_file_is_accepted(hef: Path, tmp_path: Path) -> None:
    assert verify_hef(hef, tmp_path / "missing.txt") == digest(hef)
    assert verify_hef(hef, None) == digest(hef)


def test_data_given_is_what_gets_hashed(hef: Path, tmp_path: Path) -> None:
    """The backend hashes the bytes it loads; a file changed since then does not matter."""
    data = hef.read_bytes()
    sums = tmp_path / "hef_sha256sum.txt"
    sums.write_text(f"{digest(hef)}  {hef.name}\n")
    hef.write_bytes(b"replaced after reading")
    assert verify_hef(hef, sums, data=data) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ConfigError, match=r"^HEF_PATH: sha256"):
        verify_hef(hef, sums)
