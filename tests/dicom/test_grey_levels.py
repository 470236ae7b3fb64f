"""DICOM grey levels against dcmtk's renderer (``dcm2pnm``, from Debian's dcmtk): the window, VOI
function, rescale, signed pixels and MONOCHROME1 give the picture a DICOM viewer shows, within
one grey level."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import dicom_dataset
from lungseg.data.io import decode_image

pytestmark = pytest.mark.skipif(
    shutil.which("dcm2pnm") is None, reason="dcm2pnm not found (apt-get install dcmtk)"
)


def _raw(examples_dir: Path) -> np.ndarray:
    image = cv2.imread(str(examples_dir / "COVID" / "images" / "1d435a4b.png"), 0)
    return image.astype(np.uint16) * 16  # 12-bit values


def _signed(ds, raw: np.ndarray) -> None:
    ds.PixelRepresentation = 1
    ds.PixelData = (raw.astype(np.int16) - 2048).astype("<i2").tobytes()


def _sigmoid(ds, raw: np.ndarray) -> None:
    ds.VOILUTFunction = "SIGMOID"


FIRST_WINDOW = ["+Wi", "1"]  # dcm2pnm: the file's first window

#: name -> (dicom_dataset arguments, a change to the dataset, dcm2pnm's VOI option)
FILMS = {
    "window": ({"window": (2048, 3000)}, None, FIRST_WINDOW),
    "monochrome1": ({"photometric": "MONOCHROME1", "window": (2048, 3000)}, None, FIRST_WINDOW),
    "rescale": ({"rescale": (2.0, -1000.0), "window": (3096, 6000)}, None, FIRST_WINDOW),
    "sigmoid": ({"window": (2048, 3000)}, _sigmoid, FIRST_WINDOW),
    "first of two windows": ({"window": ([2048, 1000], [4096, 1500])}, None, FIRST_WINDOW),
    "signed, no window": ({}, _signed, ["+Wm"]),  # no convention: both stretch min to max
}


@pytest.mark.parametrize("name", FILMS)
def test_grey_levels_match_dcmtk(examples_dir: Path, tmp_path: Path, name: str) -> None:
    settings, change, voi = FILMS[name]
    raw = _raw(examples_dir)
    if settings.get("photometric") == "MONOCHROME1":
        raw = 4095 - raw
    ds = dicom_dataset(raw, **settings)
    if change is not None:
        change(ds, raw)
    film, rendered = tmp_path / "film.dcm", tmp_path / "film.png"
    ds.save_as(film, enforce_file_format=True)
    subprocess.run(["dcm2pnm", *voi, "--write-png", str(film), str(rendered)], check=True)
    theirs = cv2.imread(str(rendered), cv2.IMREAD_GRAYSCALE).astype(int)
    ours = decode_image(film.read_bytes(), name).pixels.astype(int)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1, name
