"""Lung measurements from a mask at the image's own resolution.

:func:`lung_areas` splits the lung area into the patient's right and left lung. It runs on every
segmented image at full resolution (up to 15 MP), so it avoids whole-image passes where it can:
the columns of the mask are counted once, and only a group of columns that crosses the midline
needs connected components (on its own columns). The rule is the same either way.

Right and left are the patient's: a DICOM film stored mirrored or rotated is measured in the
conventional display its ``PatientOrientation`` gives
(:class:`~lungseg.data.dicom_header.Orientation`); for other files that display is assumed, and the
row's ``orientation`` says which.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from lungseg.data.dicom_header import DISPLAY, Orientation
from lungseg.inference.quality import REVIEW_THRESHOLD, review_reason

#: Share of a component's pixels that must lie on each side of the midline for it to be taken
#: as both lungs joined (and cut) rather than one lung reaching over the midline.
BILATERAL_SHARE = 0.25


#: Labels of :func:`lung_sides`: the patient's right and left lung.
RIGHT, LEFT = 1, 2


class _Part(NamedTuple):
    """Lung pixels in columns ``start:stop`` that go to one side (``side``), or, for one lung
    component joined across the midline, to the right lung left of column ``cut`` and to the
    left lung from it. ``component`` is ``None`` for every lung pixel of those columns."""

    start: int
    stop: int
    component: np.ndarray | None
    area: int
    side: int
    cut: int | None = None


def lung_areas(mask: np.ndarray, orientation: Orientation = DISPLAY) -> tuple[int, int]:
    """``bool[H, W]`` -> (right lung px, left lung px) in the patient's frame.

    The rule below is applied to the mask as :meth:`Orientation.to_display` shows it.

    Each connected component (8-connectivity) goes to the side of the image its centroid lies
    on; the image's left half holds the patient's right lung in a frontal radiograph. A
    component with at least :data:`BILATERAL_SHARE` of its pixels on each side of the midline is
    both lungs joined across the mediastinum (touching lungs, or a mask that spills over the
    heart): it is cut at its narrowest column in the middle of the image, where the mediastinum
    is.
    """
    mask = orientation.to_display(mask)
    sides = {RIGHT: 0, LEFT: 0}
    for part in _parts(mask):
        if part.cut is None:
            sides[part.side] += part.area
        else:
            on_right = int(part.component[:, : max(0, part.cut - part.start)].sum())
            sides[RIGHT] += on_right
            sides[LEFT] += part.area - on_right
    return sides[RIGHT], sides[LEFT]


def lung_sides(mask: np.ndarray, orientation: Orientation = DISPLAY) -> np.ndarray:
    """``bool[H, W]`` -> ``uint8[H, W]``: 0 background, :data:`RIGHT` (1) and :data:`LEFT` (2)
    for the patient's right and left lung, split as :func:`lung_areas` counts them, on the
    stored grid of ``mask``."""
    mask = orientation.to_display(mask)
    sides = np.zeros(mask.shape, np.uint8)
    for part in _parts(mask):
        view = sides[:, part.start : part.stop]
        pixels = mask[:, part.start : part.stop] if part.component is None else part.component
        if part.cut is None:
            view[pixels] = part.side
        else:
            left_of_cut = (np.arange(part.start, part.stop) < part.cut)[None, :]
            view[pixels & left_of_cut] = RIGHT
            view[pixels & ~left_of_cut] = LEFT
    return np.ascontiguousarray(orientation.from_display(sides))


def _parts(mask: np.ndarray) -> list[_Part]:
    m8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    width = m8.shape[1]
    mid = width / 2.0
    columns = cv2.reduce(m8, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    parts = []
    # A component never spans an empty column, so each run of non-empty columns holds whole
    # components. A run entirely left of the midline holds right-lung components only (their
    # centroids are left of it, and none has pixels on both sides), and vice versa; only a run
    # across the midline needs its components (its own columns only: full-size connected
    # components with statistics take 25 ms on a 2000x2000 mask).
    for start, stop in _column_runs(columns):
        area = int(columns[start:stop].sum())
        if stop <= int(mid):
            parts.append(_Part(start, stop, None, area, RIGHT))
        elif start >= mid:
            parts.append(_Part(start, stop, None, area, LEFT))
        else:
            parts.extend(_split_components(m8[:, start:stop], start, width))
    return parts


def _column_runs(columns: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of non-zero entries."""
    filled = np.concatenate(([0], (columns > 0).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(filled))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _split_components(crop: np.ndarray, x0: int, width: int) -> list[_Part]:
    """The rule of :func:`lung_areas` for each component of ``crop``, columns ``x0..`` of an
    image ``width`` wide."""
    crop = np.ascontiguousarray(crop)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(crop, connectivity=8)
    mid = width / 2.0
    stop = x0 + crop.shape[1]
    parts = []
    for i in range(1, count):
        area = int(stats[i, cv2.CC_STAT_AREA])
        component = labels == i
        on_right = int(component[:, : max(0, int(mid) - x0)].sum())
        if min(on_right, area - on_right) >= BILATERAL_SHARE * area:
            cut = _mediastinum_column(component, x0, width)
            parts.append(_Part(x0, stop, component, area, RIGHT, cut))
        else:
            side = RIGHT if centroids[i][0] + x0 < mid else LEFT
            parts.append(_Part(x0, stop, component, area, side))
    return parts


def _mediastinum_column(component: np.ndarray, x0: int, width: int) -> int:
    """Column (of the whole image) with the fewest pixels of ``component`` (columns ``x0..`` of
    the image) in the middle 40% of the image width; of equally narrow columns, the one nearest
    the centre."""
    lo, hi = int(0.3 * width), max(int(0.7 * width), int(0.3 * width) + 1)
    counts = np.zeros(hi - lo, np.int64)
    a, b = max(lo, x0), min(hi, x0 + component.shape[1])
    if a < b:
        counts[a - lo : b - lo] = component[:, a - x0 : b - x0].sum(axis=0)
    candidates = lo + np.flatnonzero(counts == counts.min())
    return int(candidates[np.argmin(np.abs(candidates - width / 2.0))])


def measure(
    key: str,
    file: str,
    mask: np.ndarray,
    spacing: tuple[float, float] | None,
    uncertainty: float | None = None,
    *,
    spacing_source: str = "",
    orientation: Orientation = DISPLAY,
    convention: str = "unknown",
    review_threshold: float = REVIEW_THRESHOLD,
    not_frontal_chest: str = "",
) -> dict:
    """The measurements of one mask at the image's resolution, as a row of
    ``measurements.csv`` (``uncertainty``: the image's
    :func:`~lungseg.inference.quality.uncertain_fraction`, blank when not given; ``review``: why
    the mask needs a look, :func:`~lungseg.inference.quality.review_reason` with the model's
    ``review_threshold``; ``spacing_source`` and ``orientation``: as
    :class:`~lungseg.data.io.Decoded` has them; ``convention``: the mask convention of the model
    that drew it, so an area is never read against the other convention's;
    ``not_frontal_chest``: as :func:`~lungseg.inference.quality.review_reason` takes it)."""
    h, w = mask.shape
    right, left = lung_areas(mask, orientation)
    total = right + left
    row = {
        "key": key, "file": file, "height": h, "width": w, "lung_px": total,
        "lung_fraction": round(total / (h * w), 6), "right_lung_px": right, "left_lung_px": left,
        "orientation": orientation.source,
        "spacing_mm": "", "spacing_source": "", "lung_cm2": "", "right_lung_cm2": "",
        "left_lung_cm2": "",
        "uncertain_fraction": "" if uncertainty is None else round(float(uncertainty), 6),
        "review": review_reason(mask, uncertainty, review_threshold, not_frontal_chest),
        "convention": convention,
    }  # fmt: skip
    if spacing is not None:
        cm2 = spacing[0] * spacing[1] / 100.0
        row.update(
            spacing_mm=f"{spacing[0]:.4f}x{spacing[1]:.4f}",
            spacing_source=spacing_source,
            lung_cm2=round(total * cm2, 3),
            right_lung_cm2=round(right * cm2, 3),
            left_lung_cm2=round(left * cm2, 3),
        )
    return row
