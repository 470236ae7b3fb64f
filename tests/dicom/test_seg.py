"""``lungseg segment --dicom-seg``: a DICOM SEG per DICOM X-ray, read back with highdicom and
pydicom: geometry, references to the source, segment codes, what readers other than highdicom
need (pixel measures, plane orientation, PatientOrientation, creator, colours), the model's
identity, and the same bytes from a rerun and from ``lungseg serve``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import dicom_bytes
from lungseg.dicom.seg import dicom_seg_bytes
from lungseg.inference.segmenter import load_model
from lungseg.models.identity import ModelIdentity
from trained import assert_one_line_error, lungseg, read_gray

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _xray(examples_dir: Path, folder: Path) -> dict[str, str]:
    """A DX file as an archive holds it (patient, study, series), a minimal one without study
    UIDs, and a PNG. Returns the DX file's header."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    image = read_gray(examples_dir / "COVID" / "images" / "1d435a4b.png")
    raw = cv2.resize(image, (280, 300), interpolation=cv2.INTER_AREA).astype(np.uint16) * 16
    header = {
        "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
        "PatientID": "P-0042", "PatientName": "Doe^Jane", "StudyDate": "20240131",
        "StudyTime": "101500", "AccessionNumber": "ACC42", "SeriesNumber": 3,
        "PatientOrientation": ["L", "F"], "BodyPartExamined": "CHEST",
    }  # fmt: skip
    (folder / "chest.dcm").write_bytes(dicom_bytes(raw, "MONOCHROME2", (0.15, 0.2), header=header))
    (folder / "minimal.dcm").write_bytes(dicom_bytes(raw, "MONOCHROME2"))
    cv2.imwrite(str(folder / "plain.png"), image)
    return header


def test_dicom_seg_references_the_xray_and_holds_its_mask(tiny_run, examples_dir, tmp_path, capsys):
    header = _xray(examples_dir, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", tmp_path / "in", "--out", out, "--weights", tiny_run.run, "--device", "cpu",
            "--dicom-seg"]  # fmt: skip
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    with open(out / "measurements.csv", newline="") as fh:
        rows = {r["key"]: r for r in csv.DictReader(fh)}
    assert rows["plain.png"]["dicom_seg"] == ""  # only DICOM inputs get a SEG
    with open(out / "errors.csv", newline="") as fh:
        (error,) = csv.DictReader(fh)
    assert error["key"] == "minimal.dcm" and "cannot reference it" in error["problem"]
    row = rows["chest.dcm"]
    assert row["dicom_seg"] == "dicom-seg/chest.dcm.dcm"

    source = pydicom.dcmread(tmp_path / "in" / "chest.dcm")
    seg = hd.seg.segread(out / row["dicom_seg"])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns) == (300, 280)
    # Patient and study kept; the series and instance are its own.
    assert (seg.PatientID, str(seg.PatientName), seg.StudyInstanceUID, seg.AccessionNumber) == (
        "P-0042",
        "Doe^Jane",
        header["StudyInstanceUID"],
        "ACC42",
    )
    assert seg.SeriesInstanceUID not in (source.SeriesInstanceUID, source.StudyInstanceUID)
    assert seg.SOPInstanceUID != source.SOPInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    (instance,) = series.ReferencedInstanceSequence
    assert instance.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == source.SOPClassUID
    described = [
        (s.SegmentNumber, s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
         s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
         s.SegmentedPropertyCategoryCodeSequence[0].CodeValue, s.SegmentAlgorithmType)
        for s in seg.SegmentSequence
    ]  # fmt: skip
    assert described == [
        (1, "Right lung", "3341006", "SCT", "91723000", "AUTOMATIC"),
        (2, "Left lung", "44029006", "SCT", "91723000", "AUTOMATIC"),
    ]

    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1, 2]
    )[0]
    assert pixels.shape == (300, 280, 2)
    png = read_gray(out / row["mask"]) > 127
    np.testing.assert_array_equal(pixels.any(axis=-1), png)
    assert not (pixels[..., 0] & pixels[..., 1]).any()
    right, left = int(pixels[..., 0].sum()), int(pixels[..., 1].sum())
    assert (right, left) == (int(row["right_lung_px"]), int(row["left_lung_px"]))
    assert pixels[:, :100, 0].sum() > pixels[:, :100, 1].sum()  # right lung: the image's left

    # What readers other than highdicom need (OHIF, dcmqi, pydicom-seg, dciodvfy).
    groups = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in groups.PixelMeasuresSequence[0].PixelSpacing] == [0.15, 0.2]
    assert [float(v) for v in groups.PlaneOrientationSequence[0].ImageOrientationPatient] == [
        1,
        0,
        0,
        0,
        1,
        0,
    ]
    assert list(seg.PatientOrientation) == ["L", "F"] and seg.BodyPartExamined == "CHEST"
    assert str(seg.ContentCreatorName) == "lungseg^automatic"
    assert all(len(s.RecommendedDisplayCIELabValue) == 3 for s in seg.SegmentSequence)
    identity = load_model(tiny_run.run).identity
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == f"sha256:{identity.short_digest}"
    assert f"weights_sha256={identity.digest}" in algorithm.AlgorithmParameters
    assert "tta=no" in algorithm.AlgorithmParameters
    assert identity.short_digest in seg.ManufacturerModelName
    # Dates from the source, not the clock.
    assert (seg.ContentDate, seg.SeriesDate, seg.InstanceCreationDate) == ("20240131",) * 3

    # The library function a web service calls: a DICOM file's bytes and a mask in, a SEG out.
    some_model = ModelIdentity("unet", "unet", "0" * 64)
    chest = (tmp_path / "in" / "chest.dcm").read_bytes()
    direct = hd.seg.segread(io.BytesIO(dicom_seg_bytes(chest, png, some_model)))
    np.testing.assert_array_equal(
        direct.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1, 2]
        )[0],
        pixels,
    )

    # Segmenting again gives the same bytes: a PACS replaces the object, it does not pile up.
    first = (out / row["dicom_seg"]).read_bytes()
    code, _, stderr = lungseg([*argv, "--overwrite"], capsys)
    assert code == 0, stderr
    assert (out / row["dicom_seg"]).read_bytes() == first


def test_dicom_seg_needs_its_setting_to_resume(tiny_run, examples_dir, tmp_path, capsys):
    _xray(examples_dir, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", tmp_path / "in", "--out", out, "--weights", tiny_run.run]
    code, _, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    code, _, stderr = lungseg([*argv, "--dicom-seg"], capsys)
    assert_one_line_error(code, stderr, "other settings", "dicom_seg: False -> True")
