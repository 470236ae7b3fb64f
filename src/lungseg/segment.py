"""``lungseg segment``: masks, overlays and lung measurements for new X-rays.

For each input image this writes, at the image's **own resolution**:

* ``OUT/masks/<stem>.png`` - 0/255 lung mask;
* ``OUT/overlays/<stem>.png`` - the X-ray with the lungs tinted and outlined;
* a row of ``OUT/measurements.csv`` - lung area in pixels and as a share of the image, right and
  left lung separately (the patient's right lung is on the image's left, as radiographs are
  viewed), areas in cm² when the file states its pixel spacing (DICOM), and
  ``uncertain_fraction``, the model's doubt about the mask (:mod:`lungseg.quality`): review the
  masks with the highest values first; ``review`` names a mask that needs a look whatever its
  doubt (an empty one: ``no lung found``).

A file that cannot be read is listed with its reason in ``OUT/errors.csv``; the others are done.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lungseg.data.io import IMAGE_SUFFIXES, Decoded, decode_image
from lungseg.errors import LungsegError
from lungseg.inference import Segmenter
from lungseg.io_utils import atomic_write_bytes, atomic_write_text, csv_text
from lungseg.progress import track
from lungseg.quality import review_reason, uncertain_fraction

MEASUREMENT_COLUMNS = (
    "stem", "file", "height", "width", "lung_px", "lung_fraction", "right_lung_px", "left_lung_px",
    "spacing_mm", "lung_cm2", "right_lung_cm2", "left_lung_cm2", "uncertain_fraction", "review",
)  # fmt: skip


@dataclass
class SegmentResult:
    """What :func:`segment_files` did."""

    n_done: int
    n_failed: int
    out: Path
    #: ``(uncertain_fraction, file)`` of every segmented image, most uncertain first (ties by file).
    most_uncertain: list[tuple[float, str]]
    #: ``(file, review reason)`` of the masks :func:`~lungseg.quality.review_reason` flags.
    flagged: list[tuple[str, str]] = field(default_factory=list)


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into image files, in a stable order.

    Below a given folder, sub-folders named ``masks`` are skipped: in a dataset laid out as
    ``<Class>/images`` + ``<Class>/masks`` (or ``images/`` + ``masks/``) they hold ground
    truth, not X-rays. A ``masks`` folder given itself is searched like any other.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES
                    and "masks" not in (part.lower() for part in p.relative_to(path).parts[:-1])
                )
            )
        elif path.is_file():
            files.append(path)
        else:
            raise LungsegError("input not found", path)
    if not files:
        raise LungsegError(
            f"no images found in {', '.join(map(str, inputs))} "
            f"(looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def lung_areas(mask: np.ndarray) -> tuple[int, int]:
    """``bool[H, W]`` -> (right lung px, left lung px) in the patient's frame.

    Each connected component goes to the side of the image its centroid lies on; the image's
    left half holds the patient's right lung in a frontal radiograph. A component with at least
    :data:`BILATERAL_SHARE` of its pixels on each side of the midline is both lungs joined across
    the mediastinum (touching lungs, or a mask that spills over the heart): it is cut at its
    narrowest column in the middle of the image, where the mediastinum is.
    """
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    width = mask.shape[1]
    mid = width / 2.0
    right = left = 0
    for i in range(1, count):
        area = int(stats[i, cv2.CC_STAT_AREA])
        component = labels == i
        on_right = int(component[:, : int(mid)].sum())
        if min(on_right, area - on_right) >= BILATERAL_SHARE * area:
            cut = _mediastinum_column(component)
            on_right = int(component[:, :cut].sum())
            right += on_right
            left += area - on_right
        elif centroids[i][0] < mid:
            right += area
        else:
            left += area
    return right, left


#: Share of a component's pixels that must lie on each side of the midline for it to be taken
#: as both lungs joined (and cut) rather than one lung reaching over the midline.
BILATERAL_SHARE = 0.25


def _mediastinum_column(component: np.ndarray) -> int:
    """Column with the fewest pixels of ``component`` in the middle 40% of the image width; of
    equally narrow columns, the one nearest the centre."""
    width = component.shape[1]
    lo, hi = int(0.3 * width), max(int(0.7 * width), int(0.3 * width) + 1)
    counts = component[:, lo:hi].sum(axis=0)
    candidates = lo + np.flatnonzero(counts == counts.min())
    return int(candidates[np.argmin(np.abs(candidates - width / 2.0))])


def measure(
    stem: str,
    file: str,
    mask: np.ndarray,
    spacing: tuple[float, float] | None,
    uncertainty: float | None = None,
) -> dict:
    """One ``measurements.csv`` row for a mask at the image's resolution (``uncertainty``: the
    image's :func:`~lungseg.quality.uncertain_fraction`, blank when not given)."""
    h, w = mask.shape
    total = int(mask.sum())
    right, left = lung_areas(mask)
    row = {
        "stem": stem, "file": file, "height": h, "width": w, "lung_px": total,
        "lung_fraction": round(total / (h * w), 6), "right_lung_px": right, "left_lung_px": left,
        "spacing_mm": "", "lung_cm2": "", "right_lung_cm2": "", "left_lung_cm2": "",
        "uncertain_fraction": "" if uncertainty is None else round(float(uncertainty), 6),
        "review": review_reason(mask),
    }  # fmt: skip
    if spacing is not None:
        cm2 = spacing[0] * spacing[1] / 100.0
        row.update(
            spacing_mm=f"{spacing[0]:.4f}x{spacing[1]:.4f}",
            lung_cm2=round(total * cm2, 3),
            right_lung_cm2=round(right * cm2, 3),
            left_lung_cm2=round(left * cm2, 3),
        )
    return row


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``uint8[H, W]`` X-ray + ``bool[H, W]`` mask -> ``uint8[H, W, 3]`` BGR overlay."""
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    tint = bgr.copy()
    tint[mask] = (0.5 * tint[mask] + np.array([0, 127, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape) / 300))
    cv2.drawContours(tint, contours, -1, (0, 255, 255), thickness)
    return tint


def _decode(path: Path) -> Decoded | LungsegError:
    try:
        return decode_image(path.read_bytes(), str(path))
    except LungsegError as exc:
        return exc
    except Exception as exc:
        return LungsegError(f"cannot read image ({exc})", path)


def _decoded_batches(files: list[Path], batch: int) -> Iterator[list[tuple[Path, object]]]:
    # Decoding (PNG/JPEG/DICOM) runs in threads, ahead of the model, which releases the GIL.
    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(files), batch):
            chunk = files[start : start + batch]
            yield list(zip(chunk, pool.map(_decode, chunk), strict=True))


def segment_files(
    segmenter: Segmenter,
    inputs: Sequence[str | Path],
    out: str | Path,
    batch_size: int = 8,
    progress: bool = True,
) -> SegmentResult:
    """Segment every image in ``inputs`` into ``out`` (see the module docstring)."""
    files = find_images(inputs)
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(files)
    rows: list[dict] = []
    errors: list[dict] = []
    batches = _decoded_batches(files, batch_size)
    n_batches = -(-len(files) // batch_size)
    for chunk in track(batches, n_batches, "segment", enabled=progress, unit="batch"):
        good = [(p, d) for p, d in chunk if isinstance(d, Decoded)]
        for path, err in chunk:
            if isinstance(err, LungsegError):
                errors.append({"file": str(path), "problem": err.problem})
        if not good:
            continue
        pixels = [d.pixels for _, d in good]
        prob = segmenter.proba_working(pixels)
        masks = segmenter.masks_from_proba(prob, [p.shape for p in pixels])
        doubt = uncertain_fraction(prob)
        for (path, decoded), mask, unsure in zip(good, masks, doubt, strict=True):
            stem = stems[path]
            _write_png(out / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
            _write_png(out / "overlays" / f"{stem}.png", overlay(decoded.pixels, mask))
            rows.append(measure(stem, str(path), mask, decoded.spacing, unsure))
    _write_csv(out / "measurements.csv", rows, MEASUREMENT_COLUMNS)
    errors_csv = out / "errors.csv"
    if errors:
        _write_csv(errors_csv, errors, ("file", "problem"))
    else:
        errors_csv.unlink(missing_ok=True)
    ranked = sorted(((r["uncertain_fraction"], r["file"]) for r in rows), key=_most_uncertain)
    flagged = [(r["file"], r["review"]) for r in rows if r["review"]]
    return SegmentResult(len(rows), len(errors), out, ranked, flagged)


def _most_uncertain(item: tuple[float, str]) -> tuple[float, str]:
    return -item[0], item[1]


def _unique_stems(files: list[Path]) -> dict[Path, str]:
    seen: dict[str, int] = {}
    stems = {}
    for path in files:
        stem = path.stem
        if stem in seen:
            seen[stem] += 1
            stem = f"{stem}-{seen[stem]}"
        else:
            seen[stem] = 0
        stems[path] = stem
    return stems


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise LungsegError("could not encode PNG", path)
    atomic_write_bytes(path, buf.tobytes())


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    atomic_write_text(path, csv_text(rows, columns))
