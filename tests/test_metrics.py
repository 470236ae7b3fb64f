"""Metrics: hand-computed cases, empty-mask semantics, summaries, and MONAI on real masks."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import stats

from lungseg.core.errors import LungsegError
from lungseg.evaluation.metrics import (
    METRIC_NAMES,
    Confusion,
    MetricAccumulator,
    accuracy_score,
    confusion,
    dice_score,
    hausdorff_distance,
    hd95,
    iou_score,
    mse,
    per_image_metrics,
    pooled_scores,
    precision_score,
    recall_score,
)
from lungseg.evaluation.statistics import bootstrap_ci, paired_wilcoxon, summarize


def masks(*rows: str) -> np.ndarray:
    """``masks("10", "01")`` -> ``bool[2,2]``; several ``|``-separated blocks -> ``bool[N,H,W]``."""
    blocks = [[list(map(int, r)) for r in row.split("|")] for row in rows]
    arr = np.array(blocks, dtype=bool)  # (H, N, W)
    return arr[:, 0] if arr.shape[1] == 1 else arr.transpose(1, 0, 2)


# --- confusion counts and scores ------------------------------------------------------------


def test_counts_and_scores_of_a_2x2_case():
    pred = masks("11", "00")
    target = masks("10", "10")
    c = confusion(pred, target)
    assert tuple(int(x) for x in c) == (1, 1, 1, 1)
    assert dice_score(c) == pytest.approx(0.5)
    assert iou_score(c) == pytest.approx(1 / 3)
    assert precision_score(c) == pytest.approx(0.5)
    assert recall_score(c) == pytest.approx(0.5)
    assert accuracy_score(c) == pytest.approx(0.5)


def test_scores_of_a_4x4_case():
    pred = masks("1111", "1111", "0000", "0000")  # 8 pixels
    target = masks("1100", "1100", "1100", "0000")  # 6 pixels, 4 shared
    c = confusion(pred, target)
    assert tuple(int(x) for x in c) == (4, 4, 2, 6)
    assert dice_score(c) == pytest.approx(8 / 14)
    assert iou_score(c) == pytest.approx(4 / 10)
    assert precision_score(c) == pytest.approx(4 / 8)
    assert recall_score(c) == pytest.approx(4 / 6)
    assert accuracy_score(c) == pytest.approx(10 / 16)


def test_confusion_is_vectorised_over_a_batch():
    pred = masks("11|00|11", "00|00|11")
    target = masks("10|00|00", "10|11|00")
    c = confusion(pred, target)
    assert c.tp.tolist() == [1, 0, 0]
    assert c.fp.tolist() == [1, 0, 4]
    assert c.fn.tolist() == [1, 2, 0]
    assert c.tn.tolist() == [1, 2, 0]
    assert dice_score(c).tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_integer_masks_count_nonzero_as_lung():
    target = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    assert dice_score(confusion(target > 0, target)) == 1.0


def test_float_or_mismatched_masks_are_rejected():
    with pytest.raises(LungsegError, match="binary mask"):
        confusion(np.full((2, 2), 0.7), masks("10", "01"))
    with pytest.raises(LungsegError, match="same shape"):
        confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_mse_on_probabilities():
    prob = np.array([[0.5, 1.0], [0.0, 0.0]], dtype=np.float32)
    target = masks("11", "01")
    assert mse(prob, target) == pytest.approx((0.25 + 0 + 0 + 1) / 4)
    assert mse(np.stack([prob, prob]), np.stack([target, target])).shape == (2,)


# --- Hausdorff distance ----------------------------------------------------------------------


def test_hd95_of_two_single_pixels():
    pred = masks("1000", "0000", "0000", "0000")
    target = masks("0001", "0000", "0000", "0000")
    assert hd95(pred, target) == pytest.approx(3.0)
    # spacing is (row, col): three columns apart at 0.5 mm each
    assert hd95(pred, target, spacing=(2.0, 0.5)) == pytest.approx(1.5)


def test_hd95_interpolates_the_percentile_of_each_direction():
    pred = masks("1001", "0000", "0000", "0000")
    target = masks("1000", "0000", "0000", "0000")
    # pred -> target distances [0, 3]: 95th percentile 0.95 * 3; target -> pred: [0]
    assert hd95(pred, target) == pytest.approx(2.85)
    assert hausdorff_distance(pred, target, percentile=None) == pytest.approx(3.0)
    assert hausdorff_distance(pred, target, percentile=50) == pytest.approx(1.5)


def test_hd95_uses_the_surface_not_the_interior():
    target = np.zeros((9, 9), bool)
    target[1:8, 1:8] = True
    pred = np.zeros((9, 9), bool)
    pred[2:7, 2:7] = True
    # every pred surface pixel is 1 from the target surface; target corners are sqrt(2) away
    assert hausdorff_distance(pred, target, percentile=None) == pytest.approx(math.sqrt(2))
    assert hd95(target, target) == 0.0


def test_per_image_spacing():
    pred = np.zeros((2, 4, 4), bool)
    target = np.zeros((2, 4, 4), bool)
    pred[:, 0, 0] = True
    target[:, 0, 3] = True
    out = hd95(pred, target, spacing=[(1.0, 1.0), (1.0, 2.0)])
    assert out.tolist() == pytest.approx([3.0, 6.0])
    with pytest.raises(LungsegError, match="spacing"):
        hd95(pred, target, spacing=[1.0, 1.0, 1.0])


# --- empty masks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        # both empty: a perfect answer
        ("0000", "0000", dict(dice=1, iou=1, precision=1, recall=1, accuracy=1, hd95=0)),
        # lung missed entirely
        ("0000", "0110", dict(dice=0, iou=0, precision=0, recall=0, accuracy=0.5, hd95=None)),
        # lung claimed where there is none
        ("1000", "0000", dict(dice=0, iou=0, precision=0, recall=0, accuracy=0.75, hd95=None)),
    ],
    ids=["both-empty", "pred-empty", "target-empty"],
)
def test_empty_mask_semantics(pred, target, expected):
    p, t = masks(pred)[None], masks(target)[None]
    values = per_image_metrics(p.astype(np.float32), p, t)
    for name, value in expected.items():
        if value is None:
            assert math.isnan(values[name][0]), name
        else:
            assert values[name][0] == pytest.approx(value), name


def test_summary_excludes_and_counts_nans():
    acc = MetricAccumulator(n_resamples=200)
    empty = np.zeros((1, 4, 4), bool)
    lung = np.zeros((1, 4, 4), bool)
    lung[0, 1:3, 1:3] = True
    acc.update(None, lung, lung, stems=["good"])
    acc.update(None, empty, lung, stems=["missed"])
    summary = acc.compute()
    assert summary["hd95_n"] == 1 and summary["hd95_n_nan"] == 1
    assert summary["hd95_mean"] == 0.0
    assert summary["dice_mean"] == 0.5 and summary["dice_n_nan"] == 0
    assert summary["dice_worst_stem"] == "missed"
    assert summary["mse_n"] == 0 and math.isnan(summary["mse_mean"])


# --- summaries -------------------------------------------------------------------------------


def test_summarize_known_values():
    s = summarize([1.0, 2.0, math.nan, 3.0, 4.0])
    assert s["n"] == 4 and s["n_nan"] == 1
    assert s["mean"] == 2.5 and s["median"] == 2.5
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert (s["min"], s["max"]) == (1.0, 4.0)
    assert (s["worst"], s["worst_index"]) == (1.0, 0)
    worst_high = summarize([1.0, 2.0, math.nan, 3.0, 4.0], higher_is_better=False)
    assert (worst_high["worst"], worst_high["worst_index"]) == (4.0, 4)


def test_summarize_without_values():
    s = summarize([math.nan, math.nan])
    assert s["n"] == 0 and s["n_nan"] == 2 and s["worst_index"] is None
    assert math.isnan(s["mean"]) and all(math.isnan(x) for x in s["ci95"])


def test_bootstrap_ci_contains_the_mean_and_is_seeded():
    values = np.random.default_rng(1).normal(0.9, 0.05, size=80)
    low, high = summarize(values, seed=7)["ci95"]
    assert low < values.mean() < high
    # about 2 standard errors each side
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert 1.5 * se < values.mean() - low < 2.5 * se
    assert bootstrap_ci(values, seed=7) == [low, high]
    assert bootstrap_ci(values, seed=8) != [low, high]


def test_pooled_scores_sum_counts_before_dividing():
    counts = Confusion(*(np.array(v) for v in ([90, 1], [10, 0], [0, 9], [0, 0])))
    pooled = pooled_scores(counts)
    assert pooled["dice_pooled"] == pytest.approx(2 * 91 / (2 * 91 + 10 + 9))
    assert pooled["iou_pooled"] == pytest.approx(91 / (91 + 10 + 9))
    # the per-image mean weighs the small image as much as the large one
    assert dice_score(counts).mean() == pytest.approx((180 / 190 + 2 / 11) / 2)


# --- paired test -----------------------------------------------------------------------------


def test_paired_wilcoxon_matches_scipy():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.8, 0.95, size=30)
    a = b + rng.normal(0.02, 0.01, size=30)
    out = paired_wilcoxon(a, b)
    ref = stats.wilcoxon(a, b)
    assert out["statistic"] == ref.statistic and out["p_value"] == ref.pvalue
    assert out["p_value"] < 1e-3
    assert out["median_difference"] == pytest.approx(np.median(a - b))
    assert out["n"] == 30


def test_paired_wilcoxon_identical_models_and_nans():
    a = [0.9, 0.8, math.nan, 0.7]
    out = paired_wilcoxon(a, [0.9, 0.8, 0.5, 0.7])
    assert (out["p_value"], out["statistic"], out["median_difference"]) == (1.0, 0.0, 0.0)
    assert out["n"] == 3 and out["n_nonzero"] == 0
    with pytest.raises(LungsegError, match="same images"):
        paired_wilcoxon([0.9], [0.9, 0.8])


# --- accumulator -----------------------------------------------------------------------------


def test_accumulator_over_batches():
    rng = np.random.default_rng(0)
    target = np.zeros((5, 16, 16), bool)
    target[:, 4:12, 3:13] = True
    prob = np.clip(target + rng.normal(0, 0.3, target.shape), 0, 1).astype(np.float32)
    pred = prob > 0.5
    acc = MetricAccumulator()
    acc.update(prob[:2], pred[:2], target[:2], stems=["a", "b"])
    batch = acc.update(prob[2:], pred[2:], target[2:], stems=["c", "d", "e"])
    assert batch["dice"].shape == (3,)
    summary = acc.compute()
    direct = per_image_metrics(prob, pred, target)
    assert summary["n_images"] == 5
    for name in METRIC_NAMES:
        assert summary[f"{name}_mean"] == pytest.approx(np.nanmean(direct[name]))
    assert summary["dice_worst_stem"] == "abcde"[int(np.argmin(direct["dice"]))]
    assert summary["hd95_worst_stem"] == "abcde"[int(np.argmax(direct["hd95"]))]
    assert summary["dice_pooled"] == pytest.approx(
        float(dice_score(confusion(pred, target).pooled()))
    )
    rows = acc.per_image()
    assert [r["stem"] for r in rows] == list("abcde")
    assert set(rows[0]) == {"stem", *METRIC_NAMES}
    assert rows[3]["iou"] == pytest.approx(direct["iou"][3])
    acc.reset()
    assert len(acc) == 0 and acc.per_image() == []
    with pytest.raises(LungsegError, match="empty"):
        acc.compute()


def test_accumulator_default_stems_and_bad_stems():
    acc = MetricAccumulator()
    batch = np.zeros((2, 4, 4), bool)
    acc.update(None, batch, batch)
    acc.update(None, batch, batch)
    assert [r["stem"] for r in acc.per_image()] == ["0", "1", "2", "3"]
    with pytest.raises(LungsegError, match="stems"):
        acc.update(None, batch, batch, stems=["only-one"])


# --- against MONAI on real masks -------------------------------------------------------------


@pytest.fixture(scope="module")
def real_pairs(covid_cxr: Path) -> tuple[np.ndarray, np.ndarray]:
    """Ten real ground-truth masks and realistic predictions made by perturbing them."""
    files = sorted(covid_cxr.glob("*/masks/*.png"))[::30][:10]
    target = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) > 0 for f in files])
    rng = np.random.default_rng(0)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    preds = []
    for i, mask in enumerate(target.astype(np.uint8)):
        pred = [
            cv2.erode(mask, disk),
            cv2.dilate(mask, disk),
            np.roll(mask, (6, -4), axis=(0, 1)),
            mask ^ (rng.random(mask.shape) < 0.02).astype(np.uint8),
        ][i % 4].copy()
        for _ in range(3):  # stray blobs away from the lungs
            y, x = rng.integers(0, 256, size=2)
            cv2.circle(pred, (int(x), int(y)), int(rng.integers(1, 6)), 1, -1)
        preds.append(pred > 0)
    return np.stack(preds), target


@pytest.mark.shared_data
def test_dice_and_iou_match_monai_on_real_masks(real_pairs):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, target = real_pairs
    p, t = (torch.from_numpy(a[:, None].astype(np.float32)) for a in (pred, target))
    ref_dice = monai_metrics.DiceMetric(include_background=True, reduction="none")(p, t)
    ref_iou = monai_metrics.MeanIoU(include_background=True, reduction="none")(p, t)
    c = confusion(pred, target)
    np.testing.assert_allclose(dice_score(c), ref_dice.numpy()[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(iou_score(c), ref_iou.numpy()[:, 0], rtol=0, atol=1e-6)
    assert 0.5 < dice_score(c).min() < 0.99  # the perturbations are neither trivial nor absurd


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("percentile", "spacing"),
    [(95.0, None), (95.0, (0.7, 1.3)), (None, None)],
    ids=["hd95-pixels", "hd95-mm", "hd-max-pixels"],
)
def test_hausdorff_matches_monai_on_real_masks(real_pairs, spacing, percentile):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, target = real_pairs
    p, t = (torch.from_numpy(a[:, None].astype(np.float32)) for a in (pred, target))
    metric = monai_metrics.HausdorffDistanceMetric(
        include_background=True, percentile=percentile, reduction="none"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about torch API deprecations
        ref = metric(p, t, spacing=None if spacing is None else list(spacing)).numpy()[:, 0]
    ours = hausdorff_distance(pred, target, spacing=spacing, percentile=percentile)
    # MONAI works in float32; ours in float64
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-4)
    assert np.ptp(ours) > 1.0  # the cases differ, so the comparison means something
