"""``lungseg segment --dicom-seg``: a DICOM SEG per DICOM X-ray, read back with highdicom and
pydicom: geometry, references to the source, segment codes, and the mask of the PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import dicom_bytes
from lungseg.segment import dicom_seg_bytes
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

    # The library function a web service calls: a DICOM file's bytes and a mask in, a SEG out.
    direct = hd.seg.segread(io.BytesIO(dicom_seg_bytes((tmp_path / "in" / "chest.dcm")
                                                       .read_bytes(), png)))  # fmt: skip
    np.testing.assert_array_equal(
        direct.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1, 2]
        )[0],
        pixels,
    )

    # Segmenting again gives the same UIDs: a PACS replaces the object, it does not pile up.
    code, _, stderr = lungseg([*argv, "--overwrite"], capsys)
    assert code == 0, stderr
    again = pydicom.dcmread(out / row["dicom_seg"])
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (
        seg.SOPInstanceUID,
        seg.SeriesInstanceUID,
    )


def test_dicom_seg_needs_its_setting_to_resume(tiny_run, examples_dir, tmp_path, capsys):
    _xray(examples_dir, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", tmp_path / "in", "--out", out, "--weights", tiny_run.run]
    code, _, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    code, _, stderr = lungseg([*argv, "--dicom-seg"], capsys)
    assert_one_line_error(code, stderr, "other settings", "dicom_seg: False -> True")
