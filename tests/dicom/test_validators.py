"""Every SEG and SR over a set of realistic films, checked by readers nobody on the project wrote:
``dciodvfy`` (dicom3tools) reports no error, highdicom reads each SEG's segments back, and dcmqi's
``segimage2itkimage`` (what 3D Slicer's SEG import runs) converts each SEG into one image per
lung. pydicom-seg 0.4.1 cannot be installed beside our pins (it needs numpy < 2)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from films import FILMS

from lungseg.data.io import decode_image
from lungseg.dicom.seg import segmentation, to_bytes
from lungseg.dicom.sr import report
from lungseg.models.identity import ModelIdentity
from lungseg.segment.measure import measure

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

IDENTITY = ModelIdentity("unet", "unet", "5" * 64, "anatomical", tta=True)


@pytest.fixture(scope="module")
def outputs(film_catalogue, tmp_path_factory) -> dict[str, dict]:
    """``{film: {"source", "seg", "sr": path, "row": measurements}}`` for every realistic film
    (``films.FILMS``: DX and CR, MONOCHROME1 and 2, 12 and 16 bits, each kind of spacing, a
    width of 509, a mirrored film), its SEG and SR made from the lungs drawn by hand."""
    folder = tmp_path_factory.mktemp("validators")
    made = {}
    for name, film in film_catalogue.items():
        decoded = decode_image(film.data, name)
        mask = film.mask_stored
        row = measure(
            name, name, mask, decoded.spacing,
            spacing_source=decoded.spacing_source, orientation=decoded.orientation,
        )  # fmt: skip
        seg = segmentation(film.data, mask, IDENTITY, name=name)
        paths = {"source": film.write(folder), "seg": folder / f"{name}.seg.dcm",
                 "sr": folder / f"{name}.sr.dcm"}  # fmt: skip
        paths["seg"].write_bytes(to_bytes(seg))
        paths["sr"].write_bytes(to_bytes(report(film.data, seg, row, IDENTITY, name=name)))
        made[name] = paths | {"row": row}
    return made


#: dcmqi's converter: installed by pip beside this Python (its venv's bin, which may not be on
#: PATH when the tests run as ``.venv/bin/pytest``).
SEGIMAGE2ITKIMAGE = shutil.which(
    "segimage2itkimage",
    path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
)


def _dciodvfy(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
@pytest.mark.parametrize("film", sorted(FILMS))
@pytest.mark.parametrize("kind", ["seg", "sr"])
def test_dciodvfy_finds_no_error(outputs, film, kind):
    """The films themselves are clean (tests/dicom/test_films.py): what is reported here is
    lungseg's."""
    lines = _dciodvfy(outputs[film][kind])
    assert lines, "dciodvfy printed nothing"
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)


@pytest.mark.parametrize("film", sorted(FILMS))
def test_highdicom_reads_each_seg_back(outputs, film):
    seg = hd.seg.segread(outputs[film]["seg"])
    source = pydicom.dcmread(outputs[film]["source"])
    labels = [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence]
    assert labels == [(1, "Right lung"), (2, "Left lung")]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1, 2]
    )[0]
    row = outputs[film]["row"]
    assert pixels.shape == (source.Rows, source.Columns, 2)
    assert (int(pixels[..., 0].sum()), int(pixels[..., 1].sum())) == (
        row["right_lung_px"], row["left_lung_px"]
    )  # fmt: skip
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    np.testing.assert_allclose([float(v) for v in spacing], decode_image(
        outputs[film]["source"].read_bytes(), film).spacing, rtol=1e-5)  # fmt: skip


@pytest.mark.skipif(SEGIMAGE2ITKIMAGE is None, reason="dcmqi missing (pip install dcmqi)")
@pytest.mark.parametrize("film", sorted(FILMS))
def test_dcmqi_converts_each_seg(outputs, film, tmp_path):
    done = subprocess.run(
        [SEGIMAGE2ITKIMAGE, "--inputDICOM", str(outputs[film]["seg"]),
         "--outputDirectory", str(tmp_path), "--outputType", "nrrd"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    meta = json.loads((tmp_path / "meta.json").read_text())
    labels = [s["SegmentLabel"] for group in meta["segmentAttributes"] for s in group]
    assert labels == ["Right lung", "Left lung"]
    assert sorted(p.name for p in tmp_path.glob("*.nrrd")) == ["1.nrrd", "2.nrrd"]


def test_seg_and_sr_are_the_same_bytes_twice(outputs, film_catalogue):
    name = "cr-pa-mono2-16bit-width509"
    film = film_catalogue[name]
    seg = segmentation(film.data, film.mask_stored, IDENTITY, name=name)
    assert to_bytes(seg) == outputs[name]["seg"].read_bytes()
    again = to_bytes(report(film.data, seg, outputs[name]["row"], IDENTITY, name=name))
    assert again == outputs[name]["sr"].read_bytes()
    assert pydicom.dcmread(io.BytesIO(again)).Modality == "SR"


def test_the_mirrored_film_has_the_patients_right_lung_as_segment_1(outputs, film_catalogue):
    """The hand-drawn mask seen as displayed: its right lung (the image's left) is segment 1 of
    the SEG, on the stored (mirrored) grid."""
    from lungseg.segment.measure import RIGHT, lung_sides

    name = "dx-pa-mono2-12bit-mirrored"
    film = film_catalogue[name]
    seg = hd.seg.segread(outputs[name]["seg"])
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[film.header["SOPInstanceUID"]], segment_numbers=[1, 2]
    )[0]
    right_as_displayed = lung_sides(film.mask) == RIGHT
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), right_as_displayed[:, ::-1])
    assert outputs[name]["row"]["orientation"] == "dicom"
