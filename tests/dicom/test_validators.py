"""Every SEG and SR over a set of realistic films, checked by readers nobody on the project wrote:
``dciodvfy`` (dicom3tools) reports no error, highdicom reads each SEG's segments back, and dcmqi's
``segimage2itkimage`` (what 3D Slicer's SEG import runs) converts each SEG into one image per
lung. pydicom-seg 0.4.1 cannot be installed beside our pins (it needs numpy < 2)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import dicom_bytes
from lungseg.data.io import decode_image
from lungseg.dicom.seg import segmentation, to_bytes
from lungseg.dicom.sr import report
from lungseg.models.identity import ModelIdentity
from lungseg.segment.measure import measure

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

IDENTITY = ModelIdentity("unet", "unet", "5" * 64, "anatomical", tta=True)

#: ``name: (photometric, bits stored, spacing attributes, (rows, columns))``: DX and CR as
#: detectors store them.
FILMS = {
    "dx-mono2-12bit-pixelspacing": ("MONOCHROME2", 12, {"PixelSpacing": [0.15, 0.15]}, (300, 248)),
    "dx-mono1-16bit-imager": (
        "MONOCHROME1", 16,
        {"ImagerPixelSpacing": [0.16, 0.16], "EstimatedRadiographicMagnificationFactor": 1.09},
        (300, 256),
    ),
    "cr-mono2-16bit-imager-only": (
        "MONOCHROME2", 16, {"ImagerPixelSpacing": [0.1, 0.1]}, (280, 333)
    ),
    "cr-mono1-12bit-calibrated": (
        "MONOCHROME1", 12,
        {"PixelSpacing": [0.139, 0.139], "ImagerPixelSpacing": [0.15, 0.15],
         "PixelSpacingCalibrationType": "GEOMETRY"},
        (257, 301),
    ),
}  # fmt: skip


def _film(examples_dir: Path, name: str) -> bytes:
    from pydicom.uid import generate_uid

    photometric, bits, spacing, (rows, cols) = FILMS[name]
    image = cv2.imread(str(examples_dir / "COVID" / "images" / "1d435a4b.png"), 0)
    grey = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.int64)
    raw = grey * (2**bits - 1) // 255
    if photometric == "MONOCHROME1":
        raw = (2**bits - 1) - raw
    raw = raw.astype(np.uint16)
    modality = name[:2].upper()
    header = {
        "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
        "PatientID": "P-17", "PatientName": "Doe^John", "PatientBirthDate": "19600101",
        "PatientSex": "M", "StudyID": "S1", "AccessionNumber": "A17", "StudyDate": "20240305",
        "StudyTime": "083000", "ContentDate": "20240305", "ContentTime": "083112",
        "Modality": modality, "SeriesNumber": 1, "InstanceNumber": 1,
        "PatientOrientation": ["L", "F"], "BodyPartExamined": "CHEST", "ViewPosition": "PA",
        "BitsStored": bits, "HighBit": bits - 1, **spacing,
    }  # fmt: skip
    if modality == "CR":
        header["SOPClassUID"] = "1.2.840.10008.5.1.4.1.1.1"
    return dicom_bytes(raw, photometric, header=header)


def _lungs(shape: tuple[int, int]) -> np.ndarray:
    """Two lung-shaped ellipses, the right one (image's left) larger."""
    mask = np.zeros(shape, np.uint8)
    h, w = shape
    cv2.ellipse(mask, (w * 3 // 10, h // 2), (w // 7, h // 3), 0, 0, 360, 1, -1)
    cv2.ellipse(mask, (w * 7 // 10, h // 2), (w // 8, h // 3), 0, 0, 360, 1, -1)
    return mask.astype(bool)


@pytest.fixture(scope="module")
def outputs(examples_dir, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """``{film: {"source", "seg", "sr": path}}`` for every film of :data:`FILMS`."""
    folder = tmp_path_factory.mktemp("validators")
    made = {}
    for name in FILMS:
        data = _film(examples_dir, name)
        decoded = decode_image(data, name)
        mask = _lungs(decoded.pixels.shape)
        row = measure(
            name, name, mask, decoded.spacing,
            spacing_source=decoded.spacing_source, orientation=decoded.orientation,
        )  # fmt: skip
        seg = segmentation(data, mask, IDENTITY, name=name)
        paths = {"source": folder / f"{name}.dcm", "seg": folder / f"{name}.seg.dcm",
                 "sr": folder / f"{name}.sr.dcm"}  # fmt: skip
        paths["source"].write_bytes(data)
        paths["seg"].write_bytes(to_bytes(seg))
        paths["sr"].write_bytes(to_bytes(report(data, seg, row, IDENTITY, name=name)))
        made[name] = paths | {"row": row}
    return made


def _dciodvfy(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
@pytest.mark.parametrize("film", FILMS)
@pytest.mark.parametrize("kind", ["seg", "sr"])
def test_dciodvfy_finds_no_error(outputs, film, kind):
    """Not even the errors of the source (these minimal films lack DX attributes such as
    DetectorType): a SEG and an SR copy only what they must be valid with."""
    lines = _dciodvfy(outputs[film][kind])
    assert lines, "dciodvfy printed nothing"
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)


@pytest.mark.parametrize("film", FILMS)
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


@pytest.mark.skipif(shutil.which("segimage2itkimage") is None, reason="dcmqi missing")
@pytest.mark.parametrize("film", FILMS)
def test_dcmqi_converts_each_seg(outputs, film, tmp_path):
    done = subprocess.run(
        ["segimage2itkimage", "--inputDICOM", str(outputs[film]["seg"]),
         "--outputDirectory", str(tmp_path), "--outputType", "nrrd"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    meta = json.loads((tmp_path / "meta.json").read_text())
    labels = [s["SegmentLabel"] for group in meta["segmentAttributes"] for s in group]
    assert labels == ["Right lung", "Left lung"]
    assert sorted(p.name for p in tmp_path.glob("*.nrrd")) == ["1.nrrd", "2.nrrd"]


def test_seg_and_sr_are_the_same_bytes_twice(outputs, examples_dir):
    name = "cr-mono2-16bit-imager-only"
    data = outputs[name]["source"].read_bytes()
    mask = _lungs(decode_image(data, name).pixels.shape)
    seg = segmentation(data, mask, IDENTITY, name=name)
    assert to_bytes(seg) == outputs[name]["seg"].read_bytes()
    again = to_bytes(report(data, seg, outputs[name]["row"], IDENTITY, name=name))
    assert again == outputs[name]["sr"].read_bytes()
    assert pydicom.dcmread(io.BytesIO(again)).Modality == "SR"
