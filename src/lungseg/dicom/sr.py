"""A DICOM Structured Report of the lung areas beside each SEG: TID 1500 *Measurement Report*, the
form the IHE AI Results (AIR) profile asks an AI result's measurements to take
(``lungseg segment --dicom-sr``, ``?format=dicom-sr``; needs ``lungseg[dicom]``).

The report (a Comprehensive 3D SR, as highdicom writes TID 1500) holds three measurement groups:

* *Right lung* and *Left lung* (TID 1410 planar ROI): the area of the SEG's segment 1 or 2,
  referenced by the SEG's instance and segment number and the source X-ray;
* *Lung* (TID 1501): the total.

Each area is in cm² where the header gives a spacing (``cm2``), else in pixels (``{pixels}``);
its *Measurement Method* says which spacing and what it means - the ``spacing_source`` of
``measurements.csv`` (:mod:`lungseg.data.dicom_header`), or ``no pixel spacing`` - so a reader never
takes detector centimetres for the patient's. The algorithm is identified as in the SEG (model,
weights digest, TTA); the observer is the model as a device. UIDs, dates and times come from the
source and the model, as in :mod:`lungseg.dicom.seg`: the same input and model, the same bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lungseg.core.errors import LungsegError
from lungseg.dicom.seg import (
    SEGMENTS,
    SR_SERIES_NUMBER,
    UIDs,
    algorithm_identification,
    check_source,
    output_settings,
    read_header,
    segmentation,
    to_bytes,
    with_type2,
)
from lungseg.models.identity import ModelIdentity

#: Coding scheme of lungseg's own codes (a private scheme, PS3.16 8.2: ``99`` + a name).
SCHEME = "99LUNGSEG"
#: SNOMED CT: *Plain chest X-ray* (the procedure reported) and *Lung* (the total's site).
CHEST_XRAY = ("399208008", "SCT", "Plain chest X-ray")
LUNG = ("39607008", "SCT", "Lung")


def report(
    source, seg, row: dict[str, Any], identity: ModelIdentity, *, settings: Any = None,
    name: str = "image",
):  # fmt: skip
    """The TID 1500 measurement report of one X-ray's lungs, as a ``highdicom`` SR dataset.

    Args:
        source: the X-ray's header (``pydicom.Dataset``) or its file's bytes.
        seg: the SEG the report refers to (:func:`lungseg.dicom.seg.segmentation` of the same
            source, mask, identity and settings).
        row: the image's row of ``measurements.csv`` (:func:`lungseg.inference.measure.measure`).
        identity: the model (``segmenter.identity``).
        settings: as given to the SEG (:func:`lungseg.dicom.seg.output_settings`).
        name: shown in errors.

    Raises:
        LungsegError: highdicom is missing, or the source cannot be referenced.
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise LungsegError("a DICOM SR needs highdicom: pip install 'lungseg[dicom]'") from None
    if isinstance(source, bytes):
        source = read_header(source, name)
    check_source(source, (int(row["height"]), int(row["width"])), name)
    source = with_type2(source)
    ids = UIDs(source, identity, settings)
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_identification(identity)[0].AlgorithmName,
        version=f"sha256:{identity.short_digest}",
        parameters=[f"weights_sha256={identity.digest}", f"tta={'yes' if identity.tta else 'no'}"],
    )
    calibrated = row.get("lung_cm2", "") != ""
    unit = (
        hd.sr.CodedConcept("cm2", "UCUM", "square centimeter")
        if calibrated
        else hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
    )
    spacing_source = row.get("spacing_source") or "no pixel spacing"
    method = hd.sr.CodedConcept(
        _code(spacing_source), SCHEME, f"Pixel spacing: {spacing_source}"[:64]
    )
    suffix = "cm2" if calibrated else "px"
    source_image = hd.sr.SourceImageForMeasurement.from_source_image(source)

    def area(value: Any, site: tuple[str, str, str], tracking: str) -> Any:
        return hd.sr.Measurement(
            name=codes.SCT.Area,
            value=float(value),
            unit=unit,
            tracking_identifier=_tracking(ids, tracking),
            method=method,
            algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(hd.sr.CodedConcept(*site))],
            referenced_images=[source_image],
        )

    groups = []
    for number, (label, code, meaning, _) in enumerate(SEGMENTS, start=1):
        key = f"{label.split()[0].lower()}_lung_{suffix}"
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(ids, label),
                referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(
                    seg, segment_number=number
                ),
                finding_type=hd.sr.CodedConcept(code, "SCT", meaning),
                algorithm_id=algorithm,
                measurements=[area(row[key], (code, "SCT", meaning), f"{label} area")],
            )
        )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(ids, "Lungs"),
            finding_type=hd.sr.CodedConcept(*LUNG),
            algorithm_id=algorithm,
            measurements=[area(row[f"lung_{suffix}"], LUNG, "Lung area")],
        )
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=ids.uid("lungseg device"),
            name=identity.label[:64],
            manufacturer_name="lungseg",
            model_name=identity.name[:64],
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept(*CHEST_XRAY),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source, seg],
        content=content[0],
        series_instance_uid=ids.uid(str(source.SeriesInstanceUID), "lungseg SR series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=ids.uid(str(source.SOPInstanceUID), "lungseg SR"),
        instance_number=1,
        manufacturer="lungseg",
        is_complete=True,
        series_description="Lung areas (lungseg)",
    )
    ids.stamp(sr)
    _whole_references(sr, str(source.SOPInstanceUID))
    sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    return sr


def _private_scheme():
    """The Coding Scheme Identification of :data:`SCHEME` (PS3.3 C.12.1.1.2.1), so a reader
    learns whose codes the measurement methods are."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "lungseg pixel spacing sources"
    item.CodingSchemeResponsibleOrganization = "lungseg"
    return item


def _whole_references(dataset, source_uid: str) -> None:
    """Image references without the frame numbers highdicom puts in them (PS3.3 C.18.3.1): a
    segment is named by its number alone, and the source X-ray has one frame, which a single-
    frame instance may not be referenced by."""
    for element in dataset.iterall():
        if element.keyword != "ReferencedSOPSequence":
            continue
        for ref in element.value:
            whole = str(ref.get("ReferencedSOPInstanceUID", "")) == source_uid
            if "ReferencedFrameNumber" in ref and ("ReferencedSegmentNumber" in ref or whole):
                del ref.ReferencedFrameNumber


def _tracking(ids: UIDs, what: str):
    """A tracking identifier whose UID is derived (highdicom draws a random one otherwise)."""
    import highdicom as hd

    return hd.sr.TrackingIdentifier(
        uid=ids.uid(str(ids.source.SOPInstanceUID), "lungseg tracking", what), identifier=what
    )


def _code(spacing_source: str) -> str:
    """A code value (at most 16 characters, PS3.5 SH) for a spacing source."""
    words = "".join(c if c.isalnum() else "-" for c in spacing_source.lower())
    return words.replace("imagerpixelspacing", "IPS").replace("pixelspacing", "PS")[:16]


def dicom_outputs(
    header, mask: np.ndarray, row: dict[str, Any], segmenter, *, name: str = "image",
    seg: bool = True, sr: bool = False, encoder=None,
) -> dict[str, bytes]:  # fmt: skip
    """The DICOM outputs of one X-ray, as ``segment``, ``serve`` and the node all make them:
    ``{"dicom_seg": SEG bytes, "dicom_sr": SR bytes}`` (those asked for).

    Args:
        header: the X-ray's DICOM header or file bytes.
        mask: ``bool[H, W]`` at the X-ray's resolution.
        row: its measurements (:func:`lungseg.inference.measure.measure`).
        segmenter: the model; its ``identity`` and :func:`output_settings` seed the UIDs.
        name: shown in errors.
        seg: make the SEG.
        sr: make the SR (it refers to the SEG, which is made for it either way).
        encoder: a :class:`lungseg.dicom.encoder.DicomEncoder` to make them in its worker
            processes (the same bytes); ``None``: in this thread.
    """
    identity = segmenter.identity
    if identity is None:
        raise LungsegError("DICOM outputs need a model loaded by lungseg.load_model", name)
    settings = output_settings(segmenter)
    if isinstance(header, bytes):
        header = read_header(header, name)
    make = encode if encoder is None else encoder.encode
    return make(header, mask, row, identity, settings, name=name, seg=seg, sr=sr)


def encode(
    header, mask: np.ndarray, row: dict[str, Any], identity: ModelIdentity, settings: Any, *,
    name: str, seg: bool, sr: bool,
) -> dict[str, bytes]:  # fmt: skip
    """:func:`dicom_outputs` from the model's identity and :func:`output_settings` (what a
    worker process receives): the SEG, and the SR that refers to it."""
    dataset = segmentation(header, mask, identity, settings=settings, name=name)
    files = {"dicom_seg": to_bytes(dataset)} if seg else {}
    if sr:
        files["dicom_sr"] = to_bytes(
            report(header, dataset, row, identity, settings=settings, name=name)
        )
    return files
