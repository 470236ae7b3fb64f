"""Realistic chest films: real X-rays (the bundled examples) stored as DX and CR files the way
digital radiography systems store them, for the tests that hand them to real readers (Orthanc,
OHIF, dciodvfy) and to lungseg.

Each film has a patient, a study and a series, a PatientOrientation, a view (PA or AP) and a body
part, and one way of stating its pixel size (PS3.3 C.8.11.7, C.7.6.3.1.7). The catalogue
:data:`FILMS` covers what hospitals send:

* DX for presentation and CR SOP classes;
* MONOCHROME2 and MONOCHROME1; 12 bits stored in 16, and the full 16 bits;
* PixelSpacing only (a CR: a DX must state ImagerPixelSpacing, PS3.3 C.8.11.4), ImagerPixelSpacing
  only, ImagerPixelSpacing with an EstimatedRadiographicMagnificationFactor;
* a width that is not a multiple of 8 (a SEG packs its frames bit by bit);
* a film stored mirrored: the pixels flipped left to right and PatientOrientation ``R\\F``.

UIDs derive from the film's name, so a film is the same file every time (a PACS that stores it
twice keeps one instance).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dicom_files import dicom_bytes

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "COVID"
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
#: A UID root for test objects (2.25 + a number derived from a name, PS3.5 B.2).
_UID_ROOT = "2.25."


def uid(*parts: str) -> str:
    """A UID derived from ``parts``: the same parts, the same UID."""
    digest = hashlib.sha256("\n".join(parts).encode()).digest()[:16]
    return _UID_ROOT + str(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class Spec:
    """How one film is stored.

    Attributes:
        stem: the example X-ray (``examples/COVID/images/<stem>.png``) it is made from.
        sop: ``"DX"`` or ``"CR"``.
        photometric: ``MONOCHROME2`` (0 is black) or ``MONOCHROME1`` (0 is white).
        bits: bits stored, 12 or 16 (always 16 allocated).
        size: ``(rows, columns)`` of the film.
        pixel_spacing: PixelSpacing ``(row, col)`` in mm at the patient, or None.
        imager_spacing: ImagerPixelSpacing ``(row, col)`` in mm at the detector, or None.
        magnification: EstimatedRadiographicMagnificationFactor, or None.
        mirrored: stored flipped left to right (PatientOrientation ``R\\F``).
        view: ViewPosition, ``PA`` or ``AP``.
    """

    stem: str
    sop: str = "DX"
    photometric: str = "MONOCHROME2"
    bits: int = 12
    size: tuple[int, int] = (512, 512)
    pixel_spacing: tuple[float, float] | None = None
    imager_spacing: tuple[float, float] | None = None
    magnification: float | None = None
    mirrored: bool = False
    view: str = "PA"


@dataclass(frozen=True)
class Film:
    """One film: its file and what a correct reader must find in it.

    Attributes:
        name: the catalogue's name (also the file's stem).
        data: the ``.dcm`` file's bytes.
        spec: how it was stored.
        image: ``uint8[H, W]`` as a person sees it: the patient's right on the viewer's left
            (mirrored films are flipped back), 0 black.
        mask: ``bool[H, W]`` the lungs drawn by hand, on the same grid as ``image`` (not flipped
            when the film is: on the stored grid, ``mask_stored``).
        header: the attributes the film was written with (UIDs, patient, study, series).
    """

    name: str
    data: bytes
    spec: Spec
    image: np.ndarray
    mask: np.ndarray
    header: dict[str, object] = field(repr=False)

    @property
    def mask_stored(self) -> np.ndarray:
        """``bool[H, W]`` the lungs on the stored pixel grid."""
        return self.mask[:, ::-1] if self.spec.mirrored else self.mask

    @property
    def spacing_at_patient(self) -> tuple[float, float] | None:
        """``(row, col)`` mm at the patient that a reader should use; None: only at the detector."""
        if self.spec.pixel_spacing is not None:
            return self.spec.pixel_spacing
        if self.spec.imager_spacing is not None and self.spec.magnification:
            return tuple(s / self.spec.magnification for s in self.spec.imager_spacing)
        return None

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.dcm"
        path.write_bytes(self.data)
        return path


#: The catalogue: one film per kind a hospital sends (see the module's docstring).
FILMS: dict[str, Spec] = {
    "dx-pa-mono2-12bit-magnified": Spec(
        "1d435a4b", imager_spacing=(0.148, 0.148), magnification=1.09
    ),
    "dx-ap-mono1-16bit-imager": Spec(
        "333932bd",
        photometric="MONOCHROME1",
        bits=16,
        size=(480, 432),
        imager_spacing=(0.194, 0.194),
        view="AP",
    ),  # fmt: skip
    "cr-pa-mono1-12bit-pixelspacing": Spec(
        "4fed5061",
        sop="CR",
        photometric="MONOCHROME1",
        size=(520, 480),
        pixel_spacing=(0.171, 0.171),
    ),  # fmt: skip
    "cr-pa-mono2-16bit-width509": Spec(
        "527321ee", sop="CR", bits=16, size=(500, 509), pixel_spacing=(0.16, 0.16)
    ),
    "dx-pa-mono2-12bit-mirrored": Spec(
        "82a78c13",
        size=(512, 496),
        imager_spacing=(0.15, 0.15),
        magnification=1.1,
        mirrored=True,
    ),  # fmt: skip
}


def stored_values(image: np.ndarray, spec: Spec, seed: int) -> np.ndarray:
    """``uint8[H, W]`` (0 black) -> ``uint16[H, W]`` stored values of ``spec.bits`` bits in its
    photometric interpretation, with a little detector noise so that no bit is always zero (a
    film that is an 8-bit image times 16 is not what a detector writes)."""
    top = (1 << spec.bits) - 1
    rng = np.random.default_rng(seed)
    # Detectors rarely use the whole range: values between 3 % and 94 % of it.
    values = image.astype(np.float64) / 255.0 * 0.91 + 0.03
    values = values * top + rng.normal(0.0, top / 1500.0, image.shape)
    values = np.clip(np.rint(values), 0, top).astype(np.uint16)
    return top - values if spec.photometric == "MONOCHROME1" else values


def film(name: str, spec: Spec | None = None, patient_number: int | None = None) -> Film:
    """The film ``name`` of the catalogue (or made as ``spec`` says)."""
    spec = spec or FILMS[name]
    number = patient_number if patient_number is not None else sorted(FILMS).index(name) + 1
    source = cv2.imread(str(EXAMPLES / "images" / f"{spec.stem}.png"), cv2.IMREAD_GRAYSCALE)
    drawn = cv2.imread(str(EXAMPLES / "masks" / f"{spec.stem}.png"), cv2.IMREAD_GRAYSCALE)
    rows, cols = spec.size
    image = cv2.resize(source, (cols, rows), interpolation=cv2.INTER_CUBIC)
    mask = cv2.resize(drawn, (cols, rows), interpolation=cv2.INTER_NEAREST) > 127
    stored = image[:, ::-1] if spec.mirrored else image
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    raw = stored_values(stored, spec, seed)
    top = (1 << spec.bits) - 1
    header = _header(name, spec, number, top)
    window = (top / 2, top * 0.9)
    data = dicom_bytes(raw, spec.photometric, spec.pixel_spacing, window=window, header=header)
    return Film(name, data, spec, image, mask, header)


def films(names: list[str] | None = None) -> dict[str, Film]:
    """The catalogue's films by name (all of them by default)."""
    return {name: film(name) for name in names or FILMS}


def _header(name: str, spec: Spec, number: int, top: int) -> dict[str, object]:
    study = uid("lungseg test study", name)
    header: dict[str, object] = {
        "SOPClassUID": DX if spec.sop == "DX" else CR,
        "SOPInstanceUID": uid("lungseg test instance", name),
        "SpecificCharacterSet": "ISO_IR 100",
        # Patient
        "PatientName": f"TEST^FILM{number:02d}",
        "PatientID": f"LUNGSEG-TEST-{number:04d}",
        "PatientBirthDate": "19610704",
        "PatientSex": "F" if number % 2 else "M",
        # Study
        "StudyInstanceUID": study,
        "StudyDate": "20240131",
        "StudyTime": f"{9 + number:02d}1500",
        "StudyID": f"S{number:04d}",
        "AccessionNumber": f"ACC{number:05d}",
        "ReferringPhysicianName": "REFERRER^ANNA",
        "StudyDescription": "XR CHEST 1 VIEW",
        # Series
        "Modality": spec.sop,
        "SeriesInstanceUID": uid("lungseg test series", name),
        "SeriesNumber": 1,
        "SeriesDescription": f"Chest {spec.view}",
        "BodyPartExamined": "CHEST",
        # Equipment
        "Manufacturer": "lungseg test films",
        "ManufacturerModelName": f"{spec.sop} test detector",
        "InstitutionName": "Test Hospital",
        "StationName": "XR01",
        "SoftwareVersions": "1",
        # Image
        "InstanceNumber": 1,
        "ImageType": ["ORIGINAL", "PRIMARY"],
        "ContentDate": "20240131",
        "ContentTime": f"{9 + number:02d}1712",
        "AcquisitionDate": "20240131",
        "AcquisitionTime": f"{9 + number:02d}1711",
        "PatientOrientation": ["R", "F"] if spec.mirrored else ["L", "F"],
        "ViewPosition": spec.view,
        "BurnedInAnnotation": "NO",
        "LossyImageCompression": "00",
        "BitsStored": spec.bits,
        "HighBit": spec.bits - 1,
        "RescaleIntercept": 0,
        "RescaleSlope": 1,
        "RescaleType": "US",
        "KVP": 120 if spec.view == "PA" else 90,
        "DistanceSourceToDetector": 1800 if spec.view == "PA" else 1100,
    }
    if spec.imager_spacing is not None:
        header["ImagerPixelSpacing"] = list(spec.imager_spacing)
    if spec.magnification is not None:
        header["EstimatedRadiographicMagnificationFactor"] = spec.magnification
        detector = float(header["DistanceSourceToDetector"])
        header["DistanceSourceToPatient"] = round(detector / spec.magnification, 1)
    if spec.sop == "DX":
        header.update(_dx_attributes(spec))
    return header


#: ViewCodeSequence of each ViewPosition (CID 4010).
_VIEWS = {"PA": ("272479007", "postero-anterior"), "AP": ("399348003", "antero-posterior")}


def _dx_attributes(spec: Spec) -> dict[str, object]:
    """What the DX IOD adds (PS3.3 A.26: DX Series, DX Anatomy Imaged, DX Image, DX Detector)."""
    from pydicom.dataset import Dataset

    def code(value: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
        return item

    view = code(*_VIEWS[spec.view])
    view.ViewModifierCodeSequence = []
    return {
        "PresentationIntentType": "FOR PRESENTATION",
        "ImageLaterality": "U",
        "AnatomicRegionSequence": [code("43799004", "Chest")],
        "ViewCodeSequence": [view],
        # A log-encoded film: more X-rays on the detector, a darker MONOCHROME2 pixel.
        "PixelIntensityRelationship": "LOG",
        "PixelIntensityRelationshipSign": -1 if spec.photometric == "MONOCHROME2" else 1,
        "PresentationLUTShape": "IDENTITY" if spec.photometric == "MONOCHROME2" else "INVERSE",
        "DetectorType": "SCINTILLATOR",
        "AcquisitionContextSequence": [],
        "PositionerType": "NONE" if spec.view == "PA" else "",
    }
