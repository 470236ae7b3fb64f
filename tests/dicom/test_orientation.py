"""Right and left from the header: a film stored mirrored (``R\\F``) or rotated gets the
patient's right and left right in the measurements and the SEG; a file that does not say is
measured in the assumed display, and the outputs say so."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from dicom_files import dicom_bytes
from lungseg.data.io import decode_image
from lungseg.dicom.header import ASSUMED, FROM_HEADER, Orientation, orientation
from lungseg.dicom.seg import dicom_seg_bytes
from lungseg.models.identity import ModelIdentity
from lungseg.segment.measure import LEFT, RIGHT, lung_areas, lung_sides
from trained import lungseg

pydicom = pytest.importorskip("pydicom")


def _display_mask() -> np.ndarray:
    """Lungs as a frontal film is displayed: the patient's right lung (on the image's left) is
    the larger one, 60x30 against 60x20 pixels."""
    mask = np.zeros((100, 120), bool)
    mask[20:80, 15:45] = True  # patient's right
    mask[20:80, 75:95] = True  # patient's left
    return mask


#: Stored pixels of the displayed film, and the PatientOrientation that says so.
STORED = {
    "as displayed": (lambda a: a, ["L", "F"]),
    "mirrored": (lambda a: a[:, ::-1], ["R", "F"]),
    "upside down": (lambda a: a[::-1], ["L", "H"]),
    "rotated 90 left": (np.rot90, ["F", "R"]),
    "rotated 90 right": (lambda a: np.rot90(a, -1), ["H", "L"]),
    "rotated 180": (lambda a: np.rot90(a, 2), ["R", "H"]),
}


@pytest.mark.parametrize("how", STORED)
def test_each_stored_orientation_measures_the_patients_sides(how):
    store, patient_orientation = STORED[how]
    ds = pydicom.Dataset()
    ds.PatientOrientation = patient_orientation
    found = orientation(ds)
    assert found.source == FROM_HEADER
    mask = np.ascontiguousarray(store(_display_mask()))
    assert lung_areas(mask, found) == (1800, 1200)
    np.testing.assert_array_equal(
        lung_sides(mask, found), np.ascontiguousarray(store(lung_sides(_display_mask())))
    )


def test_the_mirrored_film_read_as_displayed_swaps_the_sides():
    """What lungseg did before reading the header: the mirrored film's sides swapped."""
    mirrored = _display_mask()[:, ::-1]
    assert lung_areas(mirrored) == (1200, 1800)
    assert lung_areas(mirrored, Orientation(flip_columns=True)) == (1800, 1200)


@pytest.mark.parametrize("value", [None, ["A", "F"], ["P", "H"], ["", ""], "LF", "LL"])
def test_no_usable_patient_orientation_is_assumed(value):
    """Missing, a lateral view (an anterior-posterior axis, or ViewPosition LL) or malformed:
    the display assumed."""
    ds = pydicom.Dataset()
    if value == "LL":
        ds.ViewPosition, ds.PatientOrientation = "LL", ["R", "F"]
    elif value is not None:
        ds.PatientOrientation = value
    assert orientation(ds) == Orientation() and orientation(ds).source == ASSUMED


def test_a_png_says_its_sides_are_assumed():
    import cv2

    png = cv2.imencode(".png", (_display_mask() * 200).astype(np.uint8) + 20)[1].tobytes()
    assert decode_image(png, "x.png").orientation.source == ASSUMED


def _film(pixels: np.ndarray, patient_orientation) -> bytes:
    from pydicom.uid import generate_uid

    header = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
              "PatientID": "P-1"}  # fmt: skip
    if patient_orientation is not None:
        header["PatientOrientation"] = patient_orientation
    return dicom_bytes(pixels, "MONOCHROME2", (0.2, 0.2), header=header)


def test_a_mirrored_film_gets_its_right_lung_in_the_seg():
    """The SEG's "Right lung" segment is where the patient's right lung is stored: on the
    image's right in a mirrored film."""
    hd = pytest.importorskip("highdicom")
    mirrored = _display_mask()[:, ::-1]
    identity = ModelIdentity("unet", "unet", "0" * 64)
    film = _film(mirrored.astype(np.uint16) * 3000 + 100, ["R", "F"])
    seg = hd.seg.segread(io.BytesIO(dicom_seg_bytes(film, mirrored, identity)))
    described = {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence}
    assert described == {RIGHT: "Right lung", LEFT: "Left lung"}
    right, left = seg.pixel_array.reshape(2, *mirrored.shape)
    assert right.sum() == 1800 and not right[:, :60].any()  # on the image's right
    assert left.sum() == 1200 and not left[:, 60:].any()


def test_measurements_csv_says_where_right_and_left_come_from(
    tiny_run, examples_dir, tmp_path, capsys
):
    """A film stored as displayed and mirrored (with its PatientOrientation): each row's right
    and left are its mask's, seen as the header says the film is displayed; a film without the
    attribute says the display was assumed."""
    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    film = cv2.imread(str(examples_dir / "COVID" / "images" / "1d435a4b.png"), 0)
    raw = cv2.resize(film, (256, 256), interpolation=cv2.INTER_AREA).astype(np.uint16) * 16
    (folder / "displayed.dcm").write_bytes(_film(raw, ["L", "F"]))
    (folder / "mirrored.dcm").write_bytes(_film(np.ascontiguousarray(raw[:, ::-1]), ["R", "F"]))
    (folder / "unknown.dcm").write_bytes(_film(raw, None))
    out = tmp_path / "out"
    code, _, stderr = lungseg(["segment", folder, "--out", out, "--weights", tiny_run.run], capsys)
    assert code == 0, stderr
    with open(out / "measurements.csv", newline="") as fh:
        rows = {r["key"]: r for r in csv.DictReader(fh)}
    assert [rows[k]["orientation"] for k in ("displayed.dcm", "mirrored.dcm", "unknown.dcm")] == [
        "dicom", "dicom", "assumed PA display"
    ]  # fmt: skip
    masks = {k: cv2.imread(str(out / rows[k]["mask"]), 0) > 0 for k in rows}
    for key, flip in (("displayed.dcm", False), ("mirrored.dcm", True)):
        shown = masks[key][:, ::-1] if flip else masks[key]
        right, left = lung_areas(shown)
        assert (int(rows[key]["right_lung_px"]), int(rows[key]["left_lung_px"])) == (right, left)
