"""Segmentation metrics per image, and their accumulation over a dataset.

Every overlap score derives from the confusion counts ``tp, fp, fn, tn`` of :func:`confusion`
(as in segmentation_models_pytorch); each metric is a plain function, and
:class:`MetricAccumulator` collects them over batches (``update`` / ``compute`` / ``reset``, as
in MONAI).

Empty masks (no lung in the prediction, the ground truth, or both) have fixed semantics:

* both empty: Dice = IoU = precision = recall = 1.0, hd95 = 0.0 (a perfect answer);
* exactly one empty: Dice = IoU = precision = recall = 0.0, hd95 = NaN.

The rule behind the count ratios: a zero denominator gives 1.0 when prediction and target are
both empty (nothing to find, nothing claimed) and 0.0 otherwise (a whole lung missed, or lung
claimed in an image without one). Pixel accuracy and MSE never have a zero denominator. A surface
distance has no value when one surface is missing, so hd95 is NaN there (as in MONAI 1.6, which
also gives NaN, not 0.0, when both are empty). :func:`summarize` leaves NaNs out of its statistics
and reports how many (``n_nan``); Dice and IoU already count such an image as a failure.
Summaries, confidence intervals and the paired test between models are in
:mod:`lungseg.evaluation.statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
from scipy import ndimage

from lungseg.core.errors import LungsegError
from lungseg.evaluation.statistics import summarize

METRIC_NAMES = ("dice", "iou", "precision", "recall", "accuracy", "mse", "hd95")
# hd95 and mse are errors: their worst image is the largest value.
_LOWER_IS_BETTER = frozenset({"mse", "hd95"})
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


class Confusion(NamedTuple):
    """Pixel confusion counts, ``int64`` arrays of shape ``(N,)`` (or 0-d for one image)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    def pooled(self) -> Confusion:
        """Counts summed over all images, for dataset-level (pooled) scores."""
        return Confusion(*(np.asarray(c).sum() for c in self))


def _as_mask(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if np.issubdtype(x.dtype, np.integer):
        return x != 0
    raise LungsegError(
        f"{name} must be a binary mask (bool, or integers where nonzero is lung), got dtype "
        f"{x.dtype}; threshold probabilities first (lungseg.inference.postprocessing.postprocess)"
    )


def _check_shapes(**arrays: np.ndarray | None) -> tuple[int, ...]:
    shapes = {name: np.shape(a) for name, a in arrays.items() if a is not None}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise LungsegError(f"arrays must have the same shape, got {listed}")
    shape = next(iter(shapes.values()))
    if len(shape) not in (2, 3):
        raise LungsegError(f"expected masks of shape (H, W) or (N, H, W), got {shape}")
    return shape


def confusion(pred: np.ndarray, target: np.ndarray) -> Confusion:
    """Confusion counts per image.

    Args:
        pred: ``bool[N,H,W]`` or ``bool[H,W]`` predicted mask (integer: nonzero is lung).
        target: ground-truth mask of the same shape.

    Returns:
        :class:`Confusion` of ``int64[N]`` arrays (0-d arrays for one ``(H, W)`` image).
    """
    pred = _as_mask(pred, "pred")
    target = _as_mask(target, "target")
    _check_shapes(pred=pred, target=target)
    axes = (-2, -1)
    n_pixels = pred.shape[-2] * pred.shape[-1]
    tp = np.count_nonzero(pred & target, axis=axes)
    n_pred = np.count_nonzero(pred, axis=axes)
    n_target = np.count_nonzero(target, axis=axes)
    fp = n_pred - tp
    fn = n_target - tp
    tn = n_pixels - tp - fp - fn
    return Confusion(*(np.asarray(c, dtype=np.int64) for c in (tp, fp, fn, tn)))


def _ratio(numerator: np.ndarray, denominator: np.ndarray, both_empty: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with the module's zero-denominator rule."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(both_empty, 1.0, 0.0))
    return out[()] if out.ndim == 0 else out


def _both_empty(c: Confusion) -> np.ndarray:
    return (np.asarray(c.tp) + np.asarray(c.fp) + np.asarray(c.fn)) == 0


def dice_score(c: Confusion) -> np.ndarray:
    """Dice ``2tp / (2tp + fp + fn)``; 1.0 when both masks are empty. Shape as the counts."""
    return _ratio(2 * np.asarray(c.tp), 2 * np.asarray(c.tp) + c.fp + c.fn, _both_empty(c))


def iou_score(c: Confusion) -> np.ndarray:
    """IoU (Jaccard) ``tp / (tp + fp + fn)``; 1.0 when both masks are empty."""
    return _ratio(c.tp, np.asarray(c.tp) + c.fp + c.fn, _both_empty(c))


def precision_score(c: Confusion) -> np.ndarray:
    """Precision ``tp / (tp + fp)``; with nothing predicted: 1.0 if the target is empty too,
    else 0.0."""
    return _ratio(c.tp, np.asarray(c.tp) + c.fp, _both_empty(c))


def recall_score(c: Confusion) -> np.ndarray:
    """Recall (sensitivity) ``tp / (tp + fn)``; with an empty target: 1.0 if nothing was
    predicted, else 0.0."""
    return _ratio(c.tp, np.asarray(c.tp) + c.fn, _both_empty(c))


def accuracy_score(c: Confusion) -> np.ndarray:
    """Pixel accuracy ``(tp + tn) / (tp + fp + fn + tn)``."""
    total = np.asarray(c.tp) + c.fp + c.fn + c.tn
    return _ratio(np.asarray(c.tp) + c.tn, total, np.ones_like(total, dtype=bool))


def mse(prob: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean squared error of probabilities against the binary ground truth (Brier score).

    Args:
        prob: ``float[N,H,W]`` or ``float[H,W]`` in ``[0, 1]``.
        target: mask of the same shape (lung = 1).

    Returns:
        ``float64[N]`` (a 0-d array for one image).
    """
    target = _as_mask(target, "target")
    _check_shapes(prob=prob, target=target)
    diff = np.asarray(prob, dtype=np.float64) - target
    return np.mean(diff * diff, axis=(-2, -1))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: the mask minus its erosion by a 3x3 cross, outside the image = 0.

    The same surface as MONAI's ``get_mask_edges`` (scipy ``binary_erosion`` XOR mask).
    """
    eroded = cv2.erode(
        mask.astype(np.uint8), _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0
    ).astype(bool)
    return mask & ~eroded


def _directed_distances(
    from_edges: np.ndarray, to_edges: np.ndarray, spacing: tuple[float, float]
) -> np.ndarray:
    """Distance from each pixel of ``from_edges`` to the nearest pixel of ``to_edges``."""
    distance = ndimage.distance_transform_edt(~to_edges, sampling=spacing)
    return distance[from_edges]


def _hausdorff_one(
    pred: np.ndarray, target: np.ndarray, percentile: float | None, spacing: tuple[float, float]
) -> float:
    has_pred, has_target = pred.any(), target.any()
    if not (has_pred or has_target):
        return 0.0
    if not (has_pred and has_target):
        return math.nan
    # Distances are exact within the bounding box of both masks (every surface pixel is inside
    # it), and the distance transform on the crop is much cheaper than on the full image.
    rows = np.flatnonzero((pred | target).any(axis=1))
    cols = np.flatnonzero((pred | target).any(axis=0))
    window = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # The surface is computed on the full image so that lung touching the image edge keeps its
    # edge pixels as surface, as MONAI does (it crops with a one-pixel margin of zeros).
    pred_edges, target_edges = _surface(pred)[window], _surface(target)[window]
    directed = (
        _directed_distances(pred_edges, target_edges, spacing),
        _directed_distances(target_edges, pred_edges, spacing),
    )
    if percentile is None:
        return float(max(d.max() for d in directed))
    return float(max(np.percentile(d, percentile) for d in directed))


def _spacings(spacing: Any, n: int) -> np.ndarray:
    """``None``, ``(row, col)`` or ``(N, 2)`` -> ``float64[N, 2]``."""
    if spacing is None:
        return np.ones((n, 2))
    arr = np.asarray(spacing, dtype=np.float64)
    if arr.shape == (2,):
        return np.broadcast_to(arr, (n, 2))
    if arr.shape == (n, 2):
        return arr
    raise LungsegError(
        f"spacing must be None, (row_mm, col_mm) or one such pair per image ({n}, 2), "
        f"got shape {arr.shape}"
    )


def hausdorff_distance(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | np.ndarray | None = None,
    percentile: float | None = 95.0,
) -> np.ndarray:
    """Symmetric (percentile) Hausdorff distance between mask surfaces, as MONAI defines it.

    For each direction (prediction -> target and target -> prediction) the distances from every
    surface pixel to the nearest surface pixel of the other mask are collected; the result is
    the larger of the two directed percentiles (linear interpolation, as ``torch.quantile``).
    This equals ``monai.metrics.HausdorffDistanceMetric(percentile=...)`` except for empty masks.

    Args:
        pred: ``bool[N,H,W]`` or ``bool[H,W]``.
        target: mask of the same shape.
        spacing: pixel size ``(row, col)`` (e.g. in mm), or one pair per image ``(N, 2)``;
            ``None`` measures in pixels.
        percentile: in ``[0, 100]``; ``None`` gives the classic (maximum) Hausdorff distance.

    Returns:
        ``float64[N]`` (a scalar for one image): 0.0 when both masks are empty, NaN when
        exactly one is.
    """
    pred = _as_mask(pred, "pred")
    target = _as_mask(target, "target")
    shape = _check_shapes(pred=pred, target=target)
    if percentile is not None and not 0.0 <= percentile <= 100.0:
        raise LungsegError(f"percentile must be in [0, 100], got {percentile}")
    single = len(shape) == 2
    preds, targets = (pred[None], target[None]) if single else (pred, target)
    spacings = _spacings(spacing, len(preds))
    out = np.array(
        [
            _hausdorff_one(p, t, percentile, (float(s[0]), float(s[1])))
            for p, t, s in zip(preds, targets, spacings, strict=True)
        ],
        dtype=np.float64,
    )
    return out[0] if single else out


def hd95(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """95th-percentile Hausdorff distance; see :func:`hausdorff_distance`.

    Args:
        pred: ``bool[N,H,W]`` or ``bool[H,W]``.
        target: mask of the same shape.
        spacing: ``(row, col)`` pixel size, or ``(N, 2)``; ``None`` measures in pixels.

    Returns:
        ``float64[N]`` or a scalar: 0.0 when both masks are empty, NaN when exactly one is.
    """
    return hausdorff_distance(pred, target, spacing=spacing, percentile=95.0)


def _per_image(
    prob: np.ndarray | None,
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | np.ndarray | None,
) -> tuple[Confusion, dict[str, np.ndarray]]:
    pred = _as_mask(pred, "pred")
    target = _as_mask(target, "target")
    shape = _check_shapes(prob=prob, pred=pred, target=target)
    if len(shape) != 3:
        raise LungsegError(f"expected a batch of shape (N, H, W), got {shape}")
    counts = confusion(pred, target)
    values = {
        "dice": dice_score(counts),
        "iou": iou_score(counts),
        "precision": precision_score(counts),
        "recall": recall_score(counts),
        "accuracy": accuracy_score(counts),
        "mse": np.full(shape[0], np.nan) if prob is None else mse(prob, target),
        "hd95": hd95(pred, target, spacing),
    }
    return counts, values


def per_image_metrics(
    prob: np.ndarray | None,
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """All per-image metrics of a batch.

    Args:
        prob: ``float[N,H,W]`` in ``[0, 1]``, or ``None`` when only masks exist (MSE is NaN).
        pred: ``bool[N,H,W]`` predicted masks.
        target: ``bool[N,H,W]`` ground truth.
        spacing: ``(row, col)`` pixel size or ``(N, 2)``, for hd95; ``None`` means pixels.

    Returns:
        ``{name: float64[N]}`` for dice, iou, precision, recall, accuracy, mse, hd95.
    """
    return _per_image(prob, pred, target, spacing)[1]


def pooled_scores(counts: Confusion) -> dict[str, float]:
    """Dataset-level Dice and IoU from counts summed over all images.

    Pooled scores weigh every pixel equally (large lungs count more); the per-image means weigh
    every image equally. Both are reported because they answer different questions.
    """
    total = counts.pooled()
    return {"dice_pooled": float(dice_score(total)), "iou_pooled": float(iou_score(total))}


class MetricAccumulator:
    """Collects per-image metrics over batches and summarises them.

    Example:
        >>> acc = MetricAccumulator()
        >>> for prob, target, stems in loader:  # prob float[N,H,W] in [0, 1]
        ...     acc.update(prob, postprocess_batch(prob, config), target, stems)
        >>> summary, rows = acc.compute(), acc.per_image()

    Args:
        n_resamples: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.
    """

    def __init__(self, n_resamples: int = 2000, seed: int = 0) -> None:
        self.n_resamples = n_resamples
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget every image added so far."""
        self._stems: list[str] = []
        self._counts: list[Confusion] = []
        self._values: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self._stems)

    def update(
        self,
        prob: np.ndarray | None,
        pred: np.ndarray,
        target: np.ndarray,
        stems: Sequence[str] | None = None,
        spacing: Sequence[float] | np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Add a batch.

        Args:
            prob: ``float[N,H,W]`` in ``[0, 1]``, or ``None`` (MSE is then NaN).
            pred: ``bool[N,H,W]``.
            target: ``bool[N,H,W]``.
            stems: ``N`` image names; default: the running index as a string.
            spacing: ``(row, col)`` or ``(N, 2)`` pixel size for hd95; ``None`` means pixels.

        Returns:
            The batch's per-image metrics, ``{name: float64[N]}``.
        """
        counts, values = _per_image(prob, pred, target, spacing)
        n = len(counts.tp)
        if stems is None:
            stems = [str(len(self) + i) for i in range(n)]
        elif len(stems) != n:
            raise LungsegError(f"got {len(stems)} stems for a batch of {n} images")
        self._stems.extend(str(s) for s in stems)
        self._counts.append(counts)
        self._values.append(values)
        return values

    def _collected(self) -> tuple[Confusion, dict[str, np.ndarray]]:
        if not self._stems:
            raise LungsegError("no images to evaluate: the accumulator is empty")
        counts = Confusion(*(np.concatenate(parts) for parts in zip(*self._counts, strict=True)))
        values = {name: np.concatenate([v[name] for v in self._values]) for name in METRIC_NAMES}
        return counts, values

    def compute(self) -> dict[str, Any]:
        """Summary over all images added since the last reset.

        Returns:
            A flat, JSON-ready dict: ``n_images``, then for each metric of
            :data:`METRIC_NAMES` the keys ``<metric>_<stat>`` for every statistic of
            :func:`summarize` (``dice_mean``, ``dice_ci95``, ``hd95_n_nan``, ...), with
            ``<metric>_worst_stem`` in place of the index; and ``dice_pooled``, ``iou_pooled``.
        """
        counts, values = self._collected()
        out: dict[str, Any] = {"n_images": len(self._stems)}
        for name in METRIC_NAMES:
            summary = summarize(
                values[name],
                higher_is_better=name not in _LOWER_IS_BETTER,
                n_resamples=self.n_resamples,
                seed=self.seed,
            )
            index = summary.pop("worst_index")
            summary["worst_stem"] = None if index is None else self._stems[index]
            out.update({f"{name}_{key}": value for key, value in summary.items()})
        out.update(pooled_scores(counts))
        return out

    def per_image(self) -> list[dict[str, Any]]:
        """One row per image: ``stem`` and every metric of :data:`METRIC_NAMES` as floats."""
        if not self._stems:
            return []
        _, values = self._collected()
        return [
            {"stem": stem, **{name: float(values[name][i]) for name in METRIC_NAMES}}
            for i, stem in enumerate(self._stems)
        ]
