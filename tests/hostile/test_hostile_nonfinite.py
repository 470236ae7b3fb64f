"""Defect 2: NaN/inf and blank images never become silent black images or confident empty masks.

A 32-bit float TIFF with a NaN or inf patch (or all NaN) used to pass ``prepare`` as an all-zero
image, and ``segment`` wrote an empty mask with ``uncertain_fraction`` 0.0. Non-finite pixels and
blank images (one value everywhere) are now errors naming the file in every command, because
the shared decoder refuses them; an empty mask from a readable image is flagged for review.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from hostile import STEM, copy_examples, error_line, float_tiff, replace_image
from lungseg.core.errors import LungsegError
from lungseg.data.io import decode_image
from lungseg.inference.segmenter import as_decoded
from trained import lungseg, read_gray

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def xray(examples_dir: Path) -> np.ndarray:
    return read_gray(examples_dir / "COVID" / "images" / f"{STEM}.png")


def _patched(xray: np.ndarray, value: float) -> np.ndarray:
    image = xray.astype(np.float32) / 255.0
    image[50:100, 60:120] = value
    return image


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_decoder_names_the_non_finite_pixels(xray: np.ndarray, value: float) -> None:
    with pytest.raises(LungsegError) as info:
        decode_image(float_tiff(_patched(xray, value)), "scans/patch.tif")
    message = str(info.value)
    assert message.startswith("scans/patch.tif: ") and "\n" not in message
    assert "3,000 of 89,401 pixels are not finite" in message, message


def test_all_nan_image_is_an_error(xray: np.ndarray) -> None:
    with pytest.raises(LungsegError, match=r"^all.tif: .*100 of 100 pixels are not finite"):
        decode_image(float_tiff(np.full((10, 10), np.nan)), "all.tif")


def test_arrays_from_python_get_the_same_check(xray: np.ndarray) -> None:
    with pytest.raises(LungsegError, match="not finite"):
        as_decoded(_patched(xray, np.nan))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64), np.uint8),
        np.full((40, 30), 200, np.uint8),
        np.full((40, 30), 1000, np.uint16),
        np.full((40, 30), 0.25, np.float32),
        np.zeros((1, 1), np.uint8),
    ],
    ids=["black", "grey", "16-bit", "float", "1x1"],
)
def test_blank_image_is_an_error(image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".tiff", image)
    data = buf.tobytes() if ok and image.dtype != np.float32 else float_tiff(image)
    with pytest.raises(LungsegError, match=r"^blank\.tif: blank image \(every pixel is"):
        decode_image(data, "blank.tif")


def test_prepare_refuses_a_nan_image(examples_dir: Path, tmp_path: Path, capsys) -> None:
    data = copy_examples(examples_dir, tmp_path / "data")
    bad = replace_image(data, float_tiff(np.full((64, 64), np.nan)), ".tif")
    out = tmp_path / "cache"
    argv = ["prepare", "--data", data, "--out", out, "--size", 64, "--workers", 1]
    code, _, err = lungseg(argv, capsys)
    assert code == 2 and f"{bad}: " in err and "not finite" in err, err
    assert "Traceback" not in err
    assert not (out / "prepare.yaml").exists()
    code, stdout, err = lungseg([*argv, "--skip-bad"], capsys)
    assert code == 0, err
    assert "prepared 11 images" in stdout
    with open(out / "skipped.csv", newline="") as fh:
        assert [row["file"] for row in csv.DictReader(fh)] == [str(bad)]


def test_evaluate_refuses_a_nan_image(examples_dir: Path, tmp_path: Path, capsys) -> None:
    data = copy_examples(examples_dir, tmp_path / "data")
    bad = replace_image(data, float_tiff(_patched(np.zeros((64, 64)), np.nan) + 0.5), ".tif")
    argv = ["evaluate", "--model", "unet-fast", "--data", data, "--out", tmp_path / "eval"]
    code, _, err = lungseg(argv, capsys)
    assert code == 2 and f"{bad}: " in err and "not finite" in err, err
    assert "Traceback" not in err and "--skip-bad" in err
    code, stdout, err = lungseg([*argv, "--skip-bad"], capsys)
    assert code == 0, err
    assert "on 11 all images" in stdout


def test_segment_lists_nan_and_blank_images_as_errors(
    xray: np.ndarray, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), xray)
    (folder / "patch.tif").write_bytes(float_tiff(_patched(xray, np.inf)))
    (folder / "allnan.tif").write_bytes(float_tiff(np.full((50, 50), np.nan)))
    cv2.imwrite(str(folder / "black.png"), np.zeros((80, 80), np.uint8))
    out = tmp_path / "seg"
    code, stdout, err = lungseg(["segment", folder, "--out", out, "--model", "unet-fast"], capsys)
    assert code == 0, err
    assert "segmented 1 image(s)" in stdout and "3 file(s) skipped" in stdout
    with open(out / "errors.csv", newline="") as fh:
        problems = {Path(row["file"]).name: row["problem"] for row in csv.DictReader(fh)}
    assert set(problems) == {"patch.tif", "allnan.tif", "black.png"}
    assert "not finite" in problems["patch.tif"] and "not finite" in problems["allnan.tif"]
    assert "blank image" in problems["black.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["good.png.png"]


def test_segment_flags_an_empty_mask(tmp_path: Path, capsys) -> None:
    """A readable image the model finds no lung in: an empty mask, flagged, never confident."""
    dark = np.zeros((64, 64), np.uint8)
    dark[3, 3] = 255
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "dark.png"), dark)
    out = tmp_path / "seg"
    code, stdout, err = lungseg(["segment", folder, "--out", out, "--model", "unet-fast"], capsys)
    assert code == 0, err
    with open(out / "measurements.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["lung_px"] == "0"
    assert row["review"] == "no lung found"
    assert "1 mask(s) flagged for review" in stdout and "dark.png (no lung found)" in stdout


def test_error_line_of_a_nan_image_through_segment(tmp_path: Path, capsys) -> None:
    """Only unreadable files: one line, exit 2."""
    path = tmp_path / "allnan.tif"
    path.write_bytes(float_tiff(np.full((50, 50), np.nan)))
    code, _, err = lungseg(["segment", path, "--out", tmp_path / "seg"], capsys)
    error_line(code, err, "segment", "could be read")
