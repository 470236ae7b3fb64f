"""Defect 6: a damaged cache is said to be damaged in one line, and ``prepare`` rebuilds it.

``truncate -s 10000000 CACHE/images.npy`` used to make ``prepare`` and ``train --data CACHE`` end
in ``ValueError: mmap length is greater than file size``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hostile import error_line
from lungseg.data.cache import load_cache
from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _extend(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\0" * 1000)


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = b"not numpy at all"
    path.write_bytes(bytes(data))


def _delete(path: Path) -> None:
    path.unlink()


def _garble_text(path: Path) -> None:
    path.write_text("{ this is: [not yaml\n")


DAMAGE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "images truncated": ("images.npy", _truncate),
    "masks extended": ("masks.npy", _extend),
    "images header": ("images.npy", _garble_header),
    "masks missing": ("masks.npy", _delete),
    "split.csv missing": ("split.csv", _delete),
    "manifest garbled": ("prepare.yaml", _garble_text),
}


@pytest.fixture(scope="module")
def pristine(examples_dir: Path, tmp_path_factory) -> Path:
    from lungseg.data.cache import prepare
    from lungseg.data.preprocessing import PreprocessConfig
    from lungseg.data.settings import PrepareConfig

    out = tmp_path_factory.mktemp("pristine") / "cache"
    config = PrepareConfig(PreprocessConfig.from_preset("seed", 64), 0.25, 0.25, 0)
    prepare(examples_dir, out, config, workers=1, progress=False)
    return out


def _damaged(pristine: Path, tmp_path: Path, damage: str) -> Path:
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    name, act = DAMAGE[damage]
    act(cache / name)
    return cache


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_train_says_the_cache_is_damaged(pristine, tmp_path: Path, damage: str, capsys) -> None:
    cache = _damaged(pristine, tmp_path, damage)
    argv = ["train", "--model", "unet", "--data", cache, "--out", tmp_path / "run", "--epochs", 1]
    code, _, err = lungseg(argv, capsys)
    line = error_line(code, err, "train", str(cache), "lungseg prepare")
    assert "damaged" in line or "incomplete" in line or "not a prepared cache" in line, line
    if "rebuild it with" in line and damage != "manifest garbled":  # the settings it was built with
        assert line.endswith(f" --size 64 --out {cache}'"), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_prepare_rebuilds_a_damaged_cache(
    pristine, examples_dir: Path, tmp_path: Path, damage: str, capsys
) -> None:
    cache = _damaged(pristine, tmp_path, damage)
    argv = ["prepare", "--data", examples_dir, "--out", cache, "--size", 64, "--val", 0.25,
            "--test", 0.25, "--seed", 0, "--workers", 1]  # fmt: skip
    code, stdout, err = lungseg(argv, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "prepared 12 images" in stdout
    rebuilt, original = load_cache(cache), load_cache(pristine)
    np.testing.assert_array_equal(rebuilt.images, original.images)
    np.testing.assert_array_equal(rebuilt.masks, original.masks)
    assert rebuilt.rows == original.rows


def test_prepare_says_why_it_rebuilds(pristine, examples_dir: Path, tmp_path: Path, capsys):
    cache = _damaged(pristine, tmp_path, "images truncated")
    argv = ["prepare", "--data", examples_dir, "--out", cache, "--size", 64, "--val", 0.25,
            "--test", 0.25, "--seed", 0, "--workers", 1]  # fmt: skip
    code, _, err = lungseg(argv, capsys)
    assert code == 0
    assert f"{cache}: damaged cache (images.npy" in err and "rebuilding it" in err, err
