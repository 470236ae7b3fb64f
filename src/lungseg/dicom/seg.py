"""DICOM Segmentation objects for DICOM X-rays, which a PACS stores and OHIF or 3D Slicer show
over the image (``lungseg segment --dicom-seg``; needs ``lungseg[dicom]``, i.e. highdicom).

A SEG holds two binary segments on the X-ray's pixel grid: 1 = right lung, 2 = left lung (the
patient's, split as :func:`lungseg.inference.measure.lung_sides` splits them), coded in SNOMED CT
as *Right lung* (3341006) and *Left lung* (44029006), category *Anatomical structure*,
algorithm type AUTOMATIC with lungseg as the algorithm. It references the source instance and
keeps its patient and study (study, series and SOP instance UIDs of the source are referenced,
not changed); its own series and instance UIDs are derived from the source's UIDs and the run's
settings, so segmenting the same image again with the same settings gives the same UIDs and a
PACS replaces the object instead of storing a duplicate.
"""

from __future__ import annotations

import io
import uuid

import numpy as np

from lungseg.core.errors import LungsegError
from lungseg.inference.measure import lung_sides

#: ``(segment label, SNOMED CT code, meaning)`` of segments 1 and 2.
SEGMENTS = (("Right lung", "3341006", "Right lung"), ("Left lung", "44029006", "Left lung"))
#: Series number of the SEG series (a PACS lists it after the source's series).
SERIES_NUMBER = 9901
_UID_NAMESPACE = uuid.UUID("6c756e67-7365-6700-8000-5345474d454e")  # "lungseg", "SEGMEN"
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Type 2 attributes of the patient and study that the SEG copies; empty when the source lacks
#: them (minimal files from converters often do).
_TYPE2 = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip


def read_header(data: bytes, name: str):
    """The DICOM header (no pixel data) of a file's bytes, as pydicom reads it."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise LungsegError(f"corrupt DICOM file ({exc})", name) from None


def dicom_seg_bytes(
    source,
    mask: np.ndarray,
    *,
    model: str = "lungseg",
    settings_id: str = "",
    name: str = "image",
) -> bytes:
    """A DICOM SEG of the lungs over a DICOM X-ray, as the bytes of a ``.dcm`` file.

    Args:
        source: the X-ray: its file's bytes, or its header as a ``pydicom.Dataset`` (pixel data
            not needed).
        mask: at the X-ray's resolution, ``bool[H, W]`` lungs (split into right and left by
            :func:`lungseg.inference.measure.lung_sides`), or ``uint8[H, W]`` sides already
            (0 background, 1 the patient's right lung, 2 the left).
        model: the model's name (Manufacturer's Model Name).
        settings_id: identifies the model and settings; with the source's UIDs it makes the
            SEG's UIDs.
        name: shown in errors (the file or key).

    Raises:
        LungsegError: highdicom is missing, or the source cannot be referenced (no study,
            series or instance UID; several frames; a size that differs from ``sides``).
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise LungsegError("a DICOM SEG needs highdicom: pip install 'lungseg[dicom]'") from None
    from lungseg._version import __version__

    if isinstance(source, bytes):
        source = read_header(source, name)
    sides = lung_sides(mask) if mask.dtype == bool else mask
    missing = [k for k in _REQUIRED_UIDS if not source.get(k)]
    if missing:
        raise LungsegError(
            f"the DICOM file has no {', '.join(missing)}, so a DICOM SEG cannot reference it",
            name,
        )
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        raise LungsegError("a DICOM SEG of a multi-frame DICOM file is not supported", name)
    if (int(source.Rows), int(source.Columns)) != sides.shape:
        raise LungsegError(
            f"DICOM SEG: mask {sides.shape} does not match the image's Rows x Columns "
            f"({source.Rows}, {source.Columns})",
            name,
        )
    source = source.copy()
    for keyword in _TYPE2:
        if keyword not in source:
            setattr(source, keyword, "")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="lungseg", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (label, code, meaning) in enumerate(SEGMENTS, start=1)
    ]
    pixels = np.stack([sides == 1, sides == 2], axis=-1)[None]

    def uid(*parts: str) -> str:
        # A name-based (version 5) UUID as a 2.25 UID (PS3.5 B.2): the same inputs, the same UID.
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(10).join([*parts, settings_id])).int}"

    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uid(str(source.SeriesInstanceUID), "lungseg SEG series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uid(str(source.SOPInstanceUID), "lungseg SEG"),
        instance_number=1,
        manufacturer="lungseg",
        manufacturer_model_name=model,
        software_versions=__version__,
        device_serial_number=settings_id or "0",
        series_description="Lungs (lungseg)",
    )
    groups = seg.SharedFunctionalGroupsSequence[0]
    measures = groups.get("PixelMeasuresSequence")
    if measures is not None and "SliceThickness" not in measures[0]:
        # highdicom copies a projection image's PixelSpacing without a SliceThickness, which its
        # own reader then refuses. Without a Frame of Reference the macro is optional, and the
        # frame references the source image, whose spacing stays authoritative.
        del groups.PixelMeasuresSequence
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()
