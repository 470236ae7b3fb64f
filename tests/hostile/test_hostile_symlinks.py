"""Defect 5: a symlink loop (or a dangling link) in a dataset is one bad file like any other.

``ln -s b.png images/a.png; ln -s a.png images/b.png`` with masks ``a.png`` and ``b.png`` used to
end ``prepare`` and ``evaluate`` with a traceback (``Too many levels of symbolic links``), even
with ``--skip-bad``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from hostile import STEM, copy_examples
from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def looped(examples_dir: Path, tmp_path: Path) -> Path:
    root = copy_examples(examples_dir, tmp_path / "data")
    images, masks = root / "COVID" / "images", root / "COVID" / "masks"
    os.symlink("b.png", images / "a.png")
    os.symlink("a.png", images / "b.png")
    os.symlink("missing.png", images / "c.png")  # dangling
    for stem in "abc":
        (masks / f"{stem}.png").write_bytes((masks / f"{STEM}.png").read_bytes())
    return root


def _bad_keys(root: Path) -> set[str]:
    return {str(root / "COVID" / "images" / f"{stem}.png") for stem in "abc"}


def _listed(err: str) -> set[str]:
    return {line.strip().split(": ")[0] for line in err.splitlines() if line.startswith("  ")}


def test_prepare(looped: Path, tmp_path: Path, capsys) -> None:
    argv = ["prepare", "--data", looped, "--out", tmp_path / "cache", "--size", 64, "--workers", 1]
    code, _, err = lungseg(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert _listed(err) == _bad_keys(looped)
    assert "Too many levels of symbolic links" in err and "No such file" in err
    code, stdout, err = lungseg([*argv, "--skip-bad"], capsys)
    assert code == 0, err
    assert "prepared 12 images" in stdout
    with open(tmp_path / "cache" / "skipped.csv", newline="") as fh:
        assert {row["file"] for row in csv.DictReader(fh)} == _bad_keys(looped)


def test_evaluate(looped: Path, tmp_path: Path, capsys) -> None:
    argv = ["evaluate", "--model", "unet-fast", "--data", looped, "--out", tmp_path / "eval"]
    code, _, err = lungseg(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert _listed(err) == _bad_keys(looped)
    code, stdout, err = lungseg([*argv, "--skip-bad"], capsys)
    assert code == 0, err
    assert "on 12 all images" in stdout
