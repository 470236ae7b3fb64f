"""The local cache of Azure downloads: usage per container; clearing all, a container, old files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lungseg.core.errors import LungsegError
from lungseg.storage.blob_cache import cache_root, cache_usage, clear_cache
from trained import assert_one_line_error, lungseg

DAY = 86400.0


def _file(root: Path, account: str, container: str, name: str, size: int, age_days: float):
    path = root / account / container / name[:2] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = time.time() - age_days * DAY
    os.utime(path, (when, when))
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache with two containers of one account and one of another, of known sizes and ages."""
    monkeypatch.setenv("LUNGSEG_CACHE_DIR", str(tmp_path / "c"))
    root = cache_root()
    assert root == tmp_path / "c" / "azure"
    _file(root, "acct", "cxr", "aa11.png", 100, age_days=10)
    _file(root, "acct", "cxr", "ab22.png", 200, age_days=1)
    _file(root, "acct", "cxr", ".ab33.png.x1.part", 7, age_days=20)  # an unfinished download
    _file(root, "acct", "other", "cd44.png", 50, age_days=0)
    _file(root, "acct2", "cxr", "ef55.csv", 30, age_days=3)
    return root


def test_usage_per_account_and_container(cache: Path) -> None:
    usage = {(u.account, u.container): u for u in cache_usage()}
    assert set(usage) == {("acct", "cxr"), ("acct", "other"), ("acct2", "cxr")}
    cxr = usage["acct", "cxr"]
    assert (cxr.files, cxr.bytes, cxr.partial) == (3, 307, 1)
    assert cxr.newest == pytest.approx(time.time() - DAY, abs=60)
    assert cache_usage(cache / "nowhere") == []


def test_clear_old_files_of_one_container(cache: Path) -> None:
    assert clear_cache(container="cxr", older_than_days=2) == (3, 137)  # 100 + 7 + 30 bytes
    left = {p.name for p in cache.rglob("*") if p.is_file()}
    assert left == {"ab22.png", "cd44.png"}
    assert not (cache / "acct2").exists()  # emptied folders go too
    assert clear_cache() == (2, 250)
    assert cache_usage() == []


def test_clear_errors_name_the_problem(cache: Path) -> None:
    with pytest.raises(
        LungsegError,
        match="no cached files of container 'nope' in .*; cached containers: cxr, other",
    ):
        clear_cache(container="nope")
    with pytest.raises(LungsegError, match="0 or more days"):
        clear_cache(older_than_days=-1)


def test_cache_cli(cache: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = lungseg(["cache"], capsys)
    assert code == 0 and "acct2" in out and "other" in out and "total 387 bytes" in out
    code, out, _ = lungseg(["cache", "--clear", "--older-than", "5"], capsys)
    assert code == 0 and "removed 2 cached files (107 bytes)" in out
    assert_one_line_error(*lungseg(["cache", "--older-than", "5"], capsys)[::2], "add --clear")
    assert lungseg(["cache", "--clear"], capsys)[0] == 0
    code, out, _ = lungseg(["cache"], capsys)
    assert code == 0 and "no cached files" in out
