"""``lungseg segment --dicom-sr`` and ``?format=dicom-sr``: a TID 1500 measurement report of the
lung areas beside each SEG, read back with highdicom; and ``serve`` answers the very bytes
``segment`` writes, SEG and SR, for the same file and model."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from dicom_files import dicom_bytes
from serve.server import start
from trained import lungseg, read_gray

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _film(examples_dir, header: dict) -> bytes:
    image = read_gray(examples_dir / "COVID" / "images" / "1d435a4b.png")
    raw = cv2.resize(image, (283, 300), interpolation=cv2.INTER_AREA).astype(np.uint16) * 16
    return dicom_bytes(raw, "MONOCHROME2", header=header)


def _header(**more) -> dict:
    from pydicom.uid import generate_uid

    return {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "PatientID": "P-9", "StudyDate": "20240131", "StudyTime": "090000", **more}  # fmt: skip


def _areas(sr) -> dict[str, tuple[float, str, str]]:
    """``{finding site: (area, unit, method)}`` of every area in a TID 1500 report."""
    found = {}
    content = sr.content
    groups = content.get_image_measurement_groups() + content.get_planar_roi_measurement_groups()
    for group in groups:
        for m in group.get_measurements():
            site = m.finding_sites[0].value.meaning
            method = m.method.meaning if m.method is not None else ""
            found[site] = (m.value, m.unit.value, method)
    return found


def test_dicom_sr_reports_the_areas_of_measurements_csv(tiny_run, examples_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    header = _header(ImagerPixelSpacing=[0.16, 0.16], EstimatedRadiographicMagnificationFactor=1.09)
    (folder / "chest.dcm").write_bytes(_film(examples_dir, header))
    (folder / "nospacing.dcm").write_bytes(_film(examples_dir, _header()))
    out = tmp_path / "out"
    argv = ["segment", folder, "--out", out, "--weights", tiny_run.run, "--dicom-seg",
            "--dicom-sr"]  # fmt: skip
    code, _, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    with open(out / "measurements.csv", newline="") as fh:
        rows = {r["key"]: r for r in csv.DictReader(fh)}

    row = rows["chest.dcm"]
    assert row["dicom_sr"] == "dicom-sr/chest.dcm.dcm"
    sr = hd.sr.srread(out / row["dicom_sr"])
    assert sr.StudyInstanceUID == header["StudyInstanceUID"]
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    areas = _areas(sr)
    method = "Pixel spacing: ImagerPixelSpacing / magnification 1.09"
    assert areas == {
        "Right lung": (float(row["right_lung_cm2"]), "cm2", method),
        "Left lung": (float(row["left_lung_cm2"]), "cm2", method),
        "Lung": (float(row["lung_cm2"]), "cm2", method),
    }
    # It points at the SEG's two segments (by number) and at the X-ray.
    seg = pydicom.dcmread(out / row["dicom_seg"])
    source = pydicom.dcmread(folder / "chest.dcm")
    content = pydicom.Dataset()
    content.ContentSequence = sr.ContentSequence  # the report, not its evidence list
    references = {
        (ref.ReferencedSOPInstanceUID, ref.get("ReferencedSegmentNumber"))
        for element in content.iterall()
        if element.keyword == "ReferencedSOPSequence"
        for ref in element.value
    }
    assert references == {
        (seg.SOPInstanceUID, 1),
        (seg.SOPInstanceUID, 2),
        (source.SOPInstanceUID, None),
    }
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [g.finding_type.meaning for g in groups] == ["Right lung", "Left lung"]

    # Without a spacing: pixels, and the report says so.
    bare = _areas(hd.sr.srread(out / rows["nospacing.dcm"]["dicom_sr"]))
    assert bare["Lung"] == (
        float(rows["nospacing.dcm"]["lung_px"]),
        "{pixels}",
        "Pixel spacing: no pixel spacing",
    )


def test_serve_answers_the_bytes_segment_writes(tiny_run, examples_dir, tmp_path, capsys):
    """The same file and model through ``segment`` and ``serve``: the same SEG and SR bytes,
    and the same measurements, orientation and spacing source in the CSV and the JSON."""
    folder = tmp_path / "in"
    folder.mkdir()
    data = _film(examples_dir, _header(PatientOrientation=["R", "F"], PixelSpacing=[0.2, 0.2]))
    (folder / "mirrored.dcm").write_bytes(data)
    out = tmp_path / "out"
    argv = ["segment", folder, "--out", out, "--weights", tiny_run.run, "--device", "cpu",
            "--dicom-seg", "--dicom-sr"]  # fmt: skip
    code, _, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    with open(out / "measurements.csv", newline="") as fh:
        (row,) = csv.DictReader(fh)
    args = ["--model", str(tiny_run.run), "--backend", "torch", "--device", "cpu"]
    with start(args, tmp_path) as server:
        for kind in ("seg", "sr"):
            status, _, body = server.request("POST", f"/v1/segment?format=dicom-{kind}", data)
            assert status == 200, body[:300]
            assert body == (out / row[f"dicom_{kind}"]).read_bytes(), kind
        status, _, body = server.request("POST", "/v1/segment", data)
    answer = json.loads(body)["measurements"]
    assert answer["orientation"] == row["orientation"] == "dicom"
    assert answer["spacing_source"] == row["spacing_source"] == "PixelSpacing"
    for key in ("right_lung_px", "left_lung_px", "right_lung_cm2", "left_lung_cm2"):
        assert str(answer[key]) == row[key], key
