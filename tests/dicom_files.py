"""Writing real DICOM files in tests (pydicom), as a digital radiography system stores them.

Plain pydicom, no pytest: ``benchmarks/node_bench.py`` builds its films with it too."""

from __future__ import annotations

import io

import numpy as np


def dicom_bytes(raw: np.ndarray, *args: object, **settings: object) -> bytes:
    """:func:`dicom_dataset` as the bytes of a DICOM file (same arguments)."""
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, dicom_dataset(raw, *args, **settings), enforce_file_format=True)
    return buf.getvalue()


def dicom_dataset(
    raw: np.ndarray,
    photometric: str = "MONOCHROME2",
    spacing: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    rows_cols: tuple[int, int] | None = None,
    header: dict[str, object] | None = None,
):
    """A minimal valid DX file with 16-bit (12 stored) pixel data ``raw``.

    Args:
        raw: ``uint16[H, W]`` stored values (0..4095).
        photometric: ``MONOCHROME2`` (0 is black) or ``MONOCHROME1`` (0 is white).
        spacing: PixelSpacing ``(row, col)`` in mm, or None to leave it out.
        rescale: ``(slope, intercept)`` of the modality LUT.
        window: ``(center, width)`` of the VOI window.
        rows_cols: declared size, when it should differ from ``raw`` (a forged header).
        header: more attributes by keyword (patient, study and series), as an archive's files
            have them; they may replace the defaults (SOPClassUID, BitsStored, HighBit...).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows_cols or raw.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    for keyword, value in (header or {}).items():
        setattr(ds, keyword, value)
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
        ds.SOPClassUID,
        ds.SOPInstanceUID,
    )
    ds.PixelData = raw.astype("<u2").tobytes()
    return ds
