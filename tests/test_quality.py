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
