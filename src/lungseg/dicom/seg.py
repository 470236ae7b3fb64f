"""DICOM Segmentation objects for DICOM X-rays, which a PACS stores and viewers show over the
image (``lungseg segment --dicom-seg``, ``?format=dicom-seg``; needs ``lungseg[dicom]``).

A SEG holds two binary segments on the X-ray's pixel grid, one frame each, both always present:
1 = right lung, 2 = left lung - the patient's, split as
:func:`lungseg.inference.measure.lung_sides` splits them in the display the source's
``PatientOrientation`` gives (:mod:`lungseg.data.dicom_header`). They are coded in SNOMED CT as
*Right lung* (3341006) and *Left lung* (44029006), category *Anatomical structure*, with a
display colour each, algorithm type AUTOMATIC, and an algorithm identification that names the
model, the SHA-256 of its weights and whether TTA was used (:class:`ModelIdentity`).

What readers need and highdicom leaves out for an image without a Frame of Reference (every
projection radiograph) is added: the pixel measures (the spacing at the patient that the
measurements used), a nominal plane orientation and position, the source's
``PatientOrientation``.

The object keeps the source's patient and study and references its instance. Every UID, date
and time is derived from the source and the model (:meth:`ModelIdentity.seed`), none from the
clock or a random number: the same image and model give the same bytes - on a rerun, a resume,
from ``segment`` and from ``serve`` - and a PACS replaces the object instead of storing a copy.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np

from lungseg.core.errors import LungsegError
from lungseg.data.dicom_decode import read_dicom
from lungseg.data.dicom_header import orientation, spacing
from lungseg.inference.measure import lung_sides
from lungseg.models.identity import ModelIdentity

#: ``(segment label, SNOMED CT code, meaning, display colour as sRGB)`` of segments 1 and 2;
#: the colours are the overlay's (:mod:`lungseg.inference.encode`).
SEGMENTS = (
    ("Right lung", "3341006", "Right lung", (64, 160, 255)),
    ("Left lung", "44029006", "Left lung", (255, 170, 0)),
)
#: Series numbers of the SEG and SR series (a PACS lists them after the source's series).
SERIES_NUMBER, SR_SERIES_NUMBER = 9901, 9902
#: ``ContentCreatorName`` (a person name; the algorithm is its creator).
CREATOR = "lungseg^automatic"
#: Projection radiographs have no Frame of Reference, so no true orientation in the patient.
#: Viewers (OHIF, dcmqi/3D Slicer, pydicom-seg) still read the Plane Orientation and Pixel
#: Measures of every SEG; rows along x and columns along y is the nominal value they expect for
#: a 2D image, and it claims nothing about the patient (PatientOrientation says that).
NOMINAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_UID_NAMESPACE = uuid.UUID("6c756e67-7365-6700-8000-5345474d454e")  # "lungseg", "SEGMEN"
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Type 2 attributes of the patient and study that the SEG copies; empty when the source lacks
#: them (minimal files from converters often do).
_TYPE2 = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip
#: Attributes of the source's General Series and General Image modules that describe what the
#: segmentation shows as much as the image: copied where the source has them.
_COPIED = ("BodyPartExamined", "PatientOrientation", "ImageLaterality", "BurnedInAnnotation")


def read_header(data: bytes, name: str):
    """The DICOM header (no pixel data) of an X-ray file's bytes
    (:func:`lungseg.data.dicom_decode.read_dicom`)."""
    return read_dicom(data, name, pixels=False)


def output_settings(segmenter) -> dict[str, Any]:
    """What a model's masks depend on beyond its identity: the preprocessing and
    postprocessing. ``segment`` and ``serve`` both seed UIDs with it."""
    from lungseg.core.config import to_dict

    return {
        "preprocess": [to_dict(config) for _, config in segmenter.networks],
        "postprocess": to_dict(segmenter.postprocess),
    }


class UIDs:
    """Name-based UIDs and the source's date and time, for the objects made from one source
    image by one model with one set of settings."""

    def __init__(self, source, identity: ModelIdentity, settings: Any = None) -> None:
        self.seed = identity.seed(settings)
        self.source = source
        self.date, self.time = _source_moment(source)

    def uid(self, *parts: str) -> str:
        """A version 5 UUID as a ``2.25`` UID (PS3.5 B.2): the same inputs, the same UID."""
        text = "\n".join([*parts, self.seed])
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, text).int}"

    def stamp(self, dataset) -> None:
        """Every creation, content and series date and time of ``dataset`` to the source's."""
        for prefix in ("InstanceCreation", "Content", "Series"):
            setattr(dataset, f"{prefix}Date", self.date)
            setattr(dataset, f"{prefix}Time", self.time)
        for item in dataset.get("ContributingEquipmentSequence", []):
            item.ContributionDateTime = self.date + self.time


def _source_moment(source) -> tuple[str, str]:
    """The source's content date and time, else its acquisition's, series', study's or
    creation's; a source that has none gets the first day of DICOM dates (still no clock)."""
    for prefix in ("Content", "Acquisition", "Series", "Study", "InstanceCreation"):
        date = str(source.get(f"{prefix}Date", "") or "").strip()
        if len(date) == 8 and date.isdigit():
            time = str(source.get(f"{prefix}Time", "") or "").strip()
            return date, time if time[:6].isdigit() else "000000"
    return "19700101", "000000"


def with_type2(source):
    """A copy of ``source`` with every patient and study attribute that the SEG and SR copy
    present (empty where the source lacks it)."""
    source = source.copy()
    for keyword in _TYPE2:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


def check_source(source, shape: tuple[int, int], name: str) -> None:
    """Refuse a source a SEG or SR cannot reference, in one line."""
    missing = [k for k in _REQUIRED_UIDS if not source.get(k)]
    if missing:
        raise LungsegError(
            f"the DICOM file has no {', '.join(missing)}, so a DICOM SEG cannot reference it",
            name,
        )
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        raise LungsegError("a DICOM SEG of a multi-frame DICOM file is not supported", name)
    if (int(source.Rows), int(source.Columns)) != shape:
        raise LungsegError(
            f"DICOM SEG: mask {shape} does not match the image's Rows x Columns "
            f"({source.Rows}, {source.Columns})",
            name,
        )


def segmentation(
    source, mask: np.ndarray, identity: ModelIdentity, *, settings: Any = None,
    name: str = "image",
):  # fmt: skip
    """A DICOM SEG of the lungs over a DICOM X-ray, as a ``highdicom.seg.Segmentation``.

    Args:
        source: the X-ray's header as a ``pydicom.Dataset`` (pixel data not needed), or its
            file's bytes.
        mask: at the X-ray's resolution, ``bool[H, W]`` lungs (split into the patient's right
            and left by :func:`~lungseg.inference.measure.lung_sides` in the orientation the
            header states), or
            ``uint8[H, W]`` sides already (0 background, 1 right lung, 2 left).
        identity: the model (``segmenter.identity``).
        settings: what else the mask depends on (:func:`output_settings`); with the source's
            UIDs and ``identity`` it makes the SEG's UIDs.
        name: shown in errors (the file or key).

    Raises:
        LungsegError: highdicom is missing, or the source cannot be referenced (no study,
            series or instance UID; several frames; a size that differs from the mask).
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise LungsegError("a DICOM SEG needs highdicom: pip install 'lungseg[dicom]'") from None
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if isinstance(source, bytes):
        source = read_header(source, name)
    check_source(source, mask.shape, name)
    sides = lung_sides(mask, orientation(source)) if mask.dtype == bool else mask
    source = with_type2(source)
    ids = UIDs(source, identity, settings)
    algorithm = algorithm_identification(identity)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        )
        for number, (label, code, meaning, rgb) in enumerate(SEGMENTS, start=1)
    ]
    pixels = np.stack([sides == 1, sides == 2], axis=-1)[None]
    # BINARY frames are packed 8 pixels a byte across rows; Orthanc 1.10 cannot cut such a
    # frame out of its instance when the width is not a multiple of 8 (WADO-RS /frames answers
    # 400, and OHIF hangs on "Loading SEG..."). There the SEG is FRACTIONAL (occupancy, one
    # byte a pixel, 0 or the maximum): the same mask, which every reader takes.
    binary = int(source.Columns) % 8 == 0
    kind = (
        hd.seg.SegmentationTypeValues.BINARY if binary else hd.seg.SegmentationTypeValues.FRACTIONAL
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels if binary else pixels.astype(np.float32),
        segmentation_type=kind,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        segment_descriptions=descriptions,
        series_instance_uid=ids.uid(str(source.SeriesInstanceUID), "lungseg SEG series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=ids.uid(str(source.SOPInstanceUID), "lungseg SEG"),
        instance_number=1,
        manufacturer="lungseg",
        manufacturer_model_name=identity.label[:64],
        software_versions=identity.version,
        device_serial_number=identity.short_digest,
        series_description="Lungs (lungseg)",
        content_description="Right and left lung",
        content_creator_name=CREATOR,
        # A lung that was not found still gets its (empty) frame: readers that map segments
        # to frames by position, and a PACS comparing two runs, see the same structure.
        omit_empty_frames=False,
    )
    ids.stamp(seg)
    dimension_uid = ids.uid(str(source.SOPInstanceUID), "lungseg SEG dimensions")
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    groups = seg.SharedFunctionalGroupsSequence[0]
    used, _ = spacing(source)
    if used is not None:
        measures = Dataset()
        measures.PixelSpacing = [f"{v:.6g}" for v in used]
        # Type 1C only for volumes; readers (highdicom's own among them) expect it, and a
        # projection image's "slice" is the whole patient, which no number describes better.
        measures.SliceThickness = "1"
        groups.PixelMeasuresSequence = Sequence([measures])
    elif "PixelMeasuresSequence" in groups:
        del groups.PixelMeasuresSequence
    plane = Dataset()
    plane.ImageOrientationPatient = list(NOMINAL_ORIENTATION)
    groups.PlaneOrientationSequence = Sequence([plane])
    for frame in seg.PerFrameFunctionalGroupsSequence:
        # Nominal as well, and the same for both segments (one plane): dcmqi stacks frames by
        # their position and crashes on a SEG without one.
        position = Dataset()
        position.ImagePositionPatient = [0, 0, 0]
        frame.PlanePositionSequence = Sequence([position])
    for keyword in _COPIED:
        if keyword in source:
            setattr(seg, keyword, source[keyword].value)
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = ""  # Type 2C without a Frame of Reference: empty is "unknown"
    return seg


def algorithm_identification(identity: ModelIdentity):
    """The Algorithm Identification of a model: its name (with ``+tta``), the SHA-256 of its
    weights as the version, and its mask convention and TTA as parameters."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=f"lungseg {identity.name}{'+tta' if identity.tta else ''}"[:64],
        version=f"sha256:{identity.short_digest}",
        family=codes.cid7162.ArtificialIntelligence,
        source="lungseg",
        parameters={
            "weights_sha256": identity.digest,
            "tta": "yes" if identity.tta else "no",
            "convention": identity.convention,
            "lungseg": identity.version,
        },
    )


def to_bytes(dataset) -> bytes:
    """A dataset as the bytes of a ``.dcm`` file."""
    buf = io.BytesIO()
    dataset.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_seg_bytes(
    source, mask: np.ndarray, identity: ModelIdentity, *, settings: Any = None,
    name: str = "image",
) -> bytes:  # fmt: skip
    """:func:`segmentation` as the bytes of a ``.dcm`` file."""
    return to_bytes(segmentation(source, mask, identity, settings=settings, name=name))
