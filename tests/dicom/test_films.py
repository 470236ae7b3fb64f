"""The realistic films themselves: dciodvfy (dicom3tools) finds nothing to report, and pydicom
reads back the pixels and geometry each film claims."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from films import FILMS, films

pydicom = pytest.importorskip("pydicom")


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not found (apt-get install dicom3tools)"
)
def test_dciodvfy_reports_no_error_or_warning_on_any_film(film_catalogue, tmp_path):
    for name, film in film_catalogue.items():
        path = film.write(tmp_path)
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        problems = [
            line for line in (report.stdout + report.stderr).splitlines()
            if line.startswith(("Error", "Warning"))
        ]  # fmt: skip
        assert problems == [], f"{name}: {problems}"


def test_films_cover_what_hospitals_send(film_catalogue):
    import io

    read = {name: pydicom.dcmread(io.BytesIO(f.data)) for name, f in film_catalogue.items()}
    kinds = {(ds.SOPClassUID, ds.PhotometricInterpretation, ds.BitsStored) for ds in read.values()}
    assert {k[0] for k in kinds} == {"1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1"}
    assert {k[1] for k in kinds} == {"MONOCHROME1", "MONOCHROME2"}
    assert {k[2] for k in kinds} == {12, 16}
    assert any(ds.Columns % 8 for ds in read.values())
    keys = ("PixelSpacing", "ImagerPixelSpacing", "EstimatedRadiographicMagnificationFactor")
    spacing = {tuple(k in ds for k in keys) for ds in read.values()}
    assert {(True, False, False), (False, True, False), (False, True, True)} <= spacing
    assert {ds.ViewPosition for ds in read.values()} == {"PA", "AP"}
    assert {tuple(ds.PatientOrientation) for ds in read.values()} == {("L", "F"), ("R", "F")}
    for name, ds in read.items():
        assert ds.BodyPartExamined == "CHEST" and ds.PatientID and ds.AccessionNumber, name
        assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}) == 3, name


@pytest.mark.parametrize("name", sorted(FILMS))
def test_stored_pixels_show_the_xray_as_the_header_says(film_catalogue, name):
    import io

    film = film_catalogue[name]
    ds = pydicom.dcmread(io.BytesIO(film.data))
    stored = ds.pixel_array.astype(np.float64)
    assert stored.shape == film.image.shape == film.mask.shape
    assert stored.max() < 2**ds.BitsStored and stored.max() > 2 ** (ds.BitsStored - 1)
    shown = stored.max() - stored if ds.PhotometricInterpretation == "MONOCHROME1" else stored
    if tuple(ds.PatientOrientation) == ("R", "F"):
        shown = shown[:, ::-1]
    # As a person sees it, the stored film is the X-ray (the noise is a few levels).
    assert np.corrcoef(shown.ravel(), film.image.ravel())[0, 1] > 0.99
    assert np.count_nonzero(ds.pixel_array & 0xF) > ds.pixel_array.size // 2  # low bits used
    assert film.mask.mean() > 0.1


def test_same_film_same_bytes():
    name = "dx-pa-mono2-12bit-mirrored"
    assert films([name])[name].data == films([name])[name].data
