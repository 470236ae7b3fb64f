"""Quality control without ground truth: the uncertain fraction on hand-made maps, its rank
correlation with the error, and that on real X-rays of unseen patients it finds the bad masks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lungseg.core.errors import LungsegError
from lungseg.evaluation.evaluate import evaluate
from lungseg.inference.quality import error_rank_correlation, uncertain_fraction


def test_uncertain_fraction_by_hand() -> None:
    maps = np.array(
        [
            [[0.95, 0.6], [0.05, 0.2]],  # unsure: 0.6, 0.2; lung or unsure: 0.95, 0.6, 0.2
            [[1.0, 1.0], [0.0, 0.0]],  # sure everywhere -> 0
            [[0.5, 0.5], [0.5, 0.5]],  # no lung, all unsure -> 4 / 4
            [[0.1, 0.9], [0.9, 0.11]],  # the bounds are sure; 0.11 is not -> 1 / 3
        ]
    )
    np.testing.assert_allclose(uncertain_fraction(maps), [2 / 3, 0.0, 1.0, 1 / 3])
    assert float(uncertain_fraction(maps[0])) == pytest.approx(2 / 3)
    assert float(uncertain_fraction(np.zeros((3, 3)))) == 0.0
    with pytest.raises(LungsegError, match=r"\(H, W\) or \(N, H, W\)"):
        uncertain_fraction(np.zeros(4))


def test_uncertain_fraction_is_a_share_of_the_lung() -> None:
    """Issue 24: 1.158 on a noise image, while the page calls it a share of the lung."""
    noise = np.random.default_rng(0).uniform(0, 1, (4, 64, 64))
    shares = uncertain_fraction(noise)
    assert np.all((shares >= 0) & (shares <= 1)), shares
    assert shares.min() > 0.5  # noise is mostly unsure: still flagged for review


def test_error_rank_correlation() -> None:
    dice = np.array([0.97, 0.95, 0.90, 0.80])
    assert error_rank_correlation([0.1, 0.2, 0.3, 0.4], dice) == pytest.approx(1.0)
    assert error_rank_correlation([0.4, 0.3, 0.2, 0.1], dice) == pytest.approx(-1.0)
    # NaN images are left out; too few images or a constant side give NaN.
    assert error_rank_correlation([0.1, 0.2, np.nan, 0.4], dice) == pytest.approx(1.0)
    assert math.isnan(error_rank_correlation([0.1, 0.2], dice[:2]))
    assert math.isnan(error_rank_correlation([0.3, 0.3, 0.3], dice[:3]))


def test_uncertainty_ranks_bad_masks_of_unseen_patients(covid_cxr: Path, tmp_path: Path) -> None:
    """On the validation split of the real data (63 images of patients the shipped FCN never
    trained on), the most uncertain masks are the worst: rank correlation 0.71 when measured."""
    result = evaluate("fcn", tmp_path / "eval", data=covid_cxr, split="val", device="cpu")
    rows = result.per_image
    assert len(rows) == 63
    rho = result.metrics["uncertainty_error_spearman"]
    assert rho == pytest.approx(
        error_rank_correlation([r["uncertain_fraction"] for r in rows], [r["dice"] for r in rows])
    )
    assert rho > 0.5
    # The ten most uncertain masks are on average clearly worse than the rest.
    ranked = sorted(rows, key=lambda r: r["uncertain_fraction"], reverse=True)
    worst10 = np.mean([r["dice"] for r in ranked[:10]])
    rest = np.mean([r["dice"] for r in ranked[10:]])
    assert worst10 < rest - 0.01, (worst10, rest)


def test_review_threshold_is_calibrated_per_model() -> None:
    from lungseg.inference.quality import REVIEW_THRESHOLD, calibrate_review_threshold

    dice = np.array([0.98, 0.97, 0.96, 0.92, 0.91, 0.85, 0.80, 0.97, 0.96, 0.95])
    unsure = np.array([0.05, 0.06, 0.07, 0.30, 0.12, 0.40, 0.50, 0.08, 0.11, 0.09])
    # Four masks below 0.93; flagging 90 % of them means all four: the least uncertain is 0.12.
    threshold = calibrate_review_threshold(unsure, dice, max_flagged=0.5)
    assert threshold == pytest.approx(0.119)
    assert (unsure[dice < 0.93] > threshold).all() and (unsure[dice >= 0.93] <= threshold).all()
    assert calibrate_review_threshold(unsure, dice, 0.6, max_flagged=0.5) == pytest.approx(0.299)
    # Flagging 90 % of the bad ones would flag half the images: at most a quarter are.
    capped = calibrate_review_threshold(unsure, dice)
    assert np.mean(unsure > capped) <= 0.25 and capped == pytest.approx(0.30)
    assert calibrate_review_threshold(unsure[:3], dice[:3]) == REVIEW_THRESHOLD  # none bad


def test_review_reason_uses_the_models_threshold_and_the_anatomy() -> None:
    from lungseg.inference.quality import review_reason

    mask = np.zeros((40, 40), bool)
    mask[5:35, 4:16] = True
    mask[5:35, 24:36] = True
    assert review_reason(mask, 0.15) == ""
    assert review_reason(mask, 0.15, threshold=0.1) == "uncertain (0.150 > 0.1)"
    assert review_reason(np.zeros((40, 40), bool), 0.0) == "no lung found"
    one = mask.copy()
    one[:, 20:] = False
    assert review_reason(one, 0.0) == "implausible: no lung on the patient's left"
