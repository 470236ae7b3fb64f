"""What a DICOM X-ray's header says about measuring it: the pixel spacing and what it means, and
which way the patient lies in the stored pixels.

Light to import (no pydicom at import time): :mod:`lungseg.data.io` reads every header through
here, and :mod:`lungseg.inference.measure` takes the :class:`Orientation` it returns.

**Spacing** (DICOM PS3.3 C.8.11.7 for DX, C.7.6.3.1.7 for the calibration attributes), first
that applies:

1. ``PixelSpacing`` - distances in the patient (the modality has calibrated them), named with
   its ``PixelSpacingCalibrationType`` when given (``PixelSpacing (GEOMETRY)``). A
   ``PixelSpacing`` equal to ``ImagerPixelSpacing`` without a calibration type is a copy of the
   detector's spacing, not a calibration, and is taken as rules 2-3 take ``ImagerPixelSpacing``.
2. ``ImagerPixelSpacing`` divided by ``EstimatedRadiographicMagnificationFactor``: the detector's
   spacing brought back to the patient by the geometry's magnification.
3. ``ImagerPixelSpacing`` alone: at the detector, so areas are too large by the square of the
   (unknown, typically 1.05-1.15) magnification; said in ``spacing_source``.

**Orientation**: ``PatientOrientation`` names the patient direction along a row (towards higher
columns) and down a column. A frontal chest X-ray is displayed with the patient's right on the
viewer's left and the head up: ``L\\F``. Any other pair with one left-right and one head-foot
axis (``R\\F`` mirrored, ``F\\L`` rotated...) is mapped onto that display before right and left
are told apart. Without it (every PNG or JPEG, a DICOM without the attribute, a lateral view by
its axes or its ``ViewPosition``) the display is assumed, and the outputs say so.

**What the film is** (:func:`not_frontal_chest`): the models segment frontal chest radiographs;
a header that says otherwise (a lateral view, another body part, a CT slice) puts the mask up
for review, and the DICOM node does not segment it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``orientation`` when the header stated it, and when it was assumed.
FROM_HEADER, ASSUMED = "dicom", "assumed PA display"


@dataclass(frozen=True)
class Orientation:
    """How the stored pixels map onto the conventional display of a frontal chest X-ray
    (patient's right on the image's left, head up).

    Attributes:
        transpose: rows and columns swapped (a film stored rotated by 90 degrees).
        flip_rows: after any transpose, upside down (head at the bottom).
        flip_columns: after any transpose, mirrored (patient's right on the image's right).
        source: :data:`FROM_HEADER` or :data:`ASSUMED`.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_columns: bool = False
    source: str = ASSUMED

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """``[H, W]`` stored -> the conventional display (a view where possible)."""
        out = array.T if self.transpose else array
        if self.flip_rows:
            out = out[::-1]
        if self.flip_columns:
            out = out[:, ::-1]
        return out

    def from_display(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_display`."""
        out = array[:, ::-1] if self.flip_columns else array
        if self.flip_rows:
            out = out[::-1]
        return out.T if self.transpose else out


#: The conventional display, assumed.
DISPLAY = Orientation()


#: BodyPartExamined values taken as the chest (PS3.16 CID 4031 and what vendors write).
CHEST = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LUNG"})
#: ViewPosition values of a frontal view; an empty one is taken as frontal.
FRONTAL_VIEWS = frozenset({"PA", "AP", ""})
#: Modalities of projection radiographs: computed and digital radiography, film radiography
#: (RG) and other (OT, what secondary captures of digitised films often say).
RADIOGRAPHY = frozenset({"CR", "DX", "RG", "OT"})


def not_frontal_chest(
    ds, modalities: frozenset[str] = RADIOGRAPHY, require_modality: bool = False
) -> str:
    """Why a header says its image is not a frontal chest radiograph, or ``""``: a modality
    outside ``modalities``, a body part that is not the chest, a view that is not PA or AP.
    Attributes that are absent do not count against it, except the modality when
    ``require_modality``."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if (modality or require_modality) and modality not in modalities:
        return f"modality {modality or 'missing'} is not {'/'.join(sorted(modalities))}"
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and part not in CHEST:
        return f"body part {part} is not the chest"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view not in FRONTAL_VIEWS:
        return f"view {view} is not frontal (PA or AP)"
    return ""


#: ViewPosition values of lateral views (left and right lateral, and decubitus):
#: the lungs overlap, so there is no right and left to tell apart whatever the orientation says.
LATERAL_VIEWS = frozenset({"LL", "RL", "LLD", "RLD", "LATERAL"})


def orientation(ds) -> Orientation:
    """The :class:`Orientation` that a header's ``PatientOrientation`` states, else
    :data:`DISPLAY` (assumed): also for a lateral ``ViewPosition``."""
    if str(ds.get("ViewPosition", "") or "").strip().upper() in LATERAL_VIEWS:
        return DISPLAY
    value = ds.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return DISPLAY
    # The first letter is the main direction of an oblique one (``LF``: mostly left).
    along_row, down_column = (str(v).strip().upper()[:1] for v in value)
    if along_row in "LR" and down_column in "HF" and along_row and down_column:
        lateral, vertical, transpose = along_row, down_column, False
    elif along_row in "HF" and down_column in "LR" and along_row and down_column:
        lateral, vertical, transpose = down_column, along_row, True
    else:  # an anterior-posterior axis: a lateral view, which has no right and left side
        return DISPLAY
    return Orientation(transpose, vertical == "H", lateral == "R", FROM_HEADER)


def spacing(ds) -> tuple[tuple[float, float] | None, str]:
    """``((row_mm, col_mm), spacing_source)`` by the rules of this module's docstring, or
    ``(None, "")`` when the header gives no usable spacing."""
    pixel, imager = _pair(ds, "PixelSpacing"), _pair(ds, "ImagerPixelSpacing")
    calibration = str(ds.get("PixelSpacingCalibrationType", "") or "").strip()
    if pixel is not None and (calibration or pixel != imager):
        return pixel, f"PixelSpacing ({calibration})" if calibration else "PixelSpacing"
    if imager is None:
        return None, ""
    factor = _number(ds.get("EstimatedRadiographicMagnificationFactor"))
    if factor is not None and factor > 0:
        at_patient = (imager[0] / factor, imager[1] / factor)
        return at_patient, f"ImagerPixelSpacing / magnification {factor:g}"
    return imager, "ImagerPixelSpacing at detector"


def _pair(ds, keyword: str) -> tuple[float, float] | None:
    value = ds.get(keyword)
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, col = (_number(v) for v in value)
    if row is None or col is None or row <= 0 or col <= 0:
        return None
    return row, col


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
