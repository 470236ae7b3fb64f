"""Statistics over per-image scores: summaries with bootstrap confidence intervals, and the
paired test that compares two models on the same images.

NaNs (an image whose score is undefined, e.g. hd95 with an empty mask) are left out and counted,
never averaged in (see :mod:`lungseg.evaluation.metrics` for the empty-mask semantics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from lungseg.core.errors import LungsegError


def summarize(
    values: Sequence[float] | np.ndarray,
    higher_is_better: bool = True,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Summary statistics of per-image values, NaNs left out and counted.

    Args:
        values: ``float[N]`` per-image values.
        higher_is_better: decides which extreme is the ``worst`` (min for Dice, max for hd95).
        n_resamples: bootstrap resamples for the confidence interval of the mean.
        seed: bootstrap seed; the same seed and values give the same interval.

    Returns:
        ``mean``, ``std`` (sample, ``ddof=1``; 0.0 for one value), ``median``, ``min``, ``max``,
        ``worst`` and ``worst_index`` (index into ``values``, first on ties), ``ci95``
        (``[low, high]``, percentile bootstrap of the mean), ``n`` (values used) and ``n_nan``
        (values left out). Without any finite value the statistics are NaN and
        ``worst_index`` is ``None``.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = ~np.isnan(arr)
    used = arr[finite]
    n = int(used.size)
    out: dict[str, Any] = {"n": n, "n_nan": int(arr.size - n)}
    if n == 0:
        nan = math.nan
        out.update(mean=nan, std=nan, median=nan, min=nan, max=nan, worst=nan, worst_index=None)
        out["ci95"] = [nan, nan]
        return out
    worst_position = int(np.argmin(used) if higher_is_better else np.argmax(used))
    out.update(
        mean=float(used.mean()),
        std=float(used.std(ddof=1)) if n > 1 else 0.0,
        median=float(np.median(used)),
        min=float(used.min()),
        max=float(used.max()),
        worst=float(used[worst_position]),
        worst_index=int(np.flatnonzero(finite)[worst_position]),
        ci95=bootstrap_ci(used, n_resamples=n_resamples, seed=seed),
    )
    return out


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> list[float]:
    """Percentile-bootstrap confidence interval of the mean.

    Args:
        values: ``float[N]`` without NaNs.
        n_resamples: number of resamples with replacement.
        seed: seed of ``numpy.random.default_rng``.
        confidence: interval coverage.

    Returns:
        ``[low, high]``.
    """
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = values.size
    # Chunks bound the (resamples x n) index matrix to ~32 MB for large test sets.
    chunk = max(1, 4_000_000 // n)
    means = np.concatenate(
        [
            values[rng.integers(0, n, size=(min(chunk, n_resamples - start), n))].mean(axis=1)
            for start in range(0, n_resamples, chunk)
        ]
    )
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return [float(low), float(high)]


def paired_wilcoxon(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict:
    """Wilcoxon signed-rank test of two models' per-image scores on the same images.

    Pairs where either value is NaN are dropped. Zero differences are dropped by the test
    (``zero_method="wilcox"``) but kept in the median difference.

    Args:
        a: ``float[N]`` per-image scores of model A (e.g. Dice).
        b: ``float[N]`` scores of model B on the same images, in the same order.

    Returns:
        ``statistic``, ``p_value`` (two-sided), ``median_difference`` (median of ``a - b``;
        positive means A scores higher), ``n`` (pairs used) and ``n_nonzero``. When all
        differences are zero the models are indistinguishable: statistic 0.0, p-value 1.0.
        Without any pair, everything but the counts is NaN.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise LungsegError(
            f"paired test needs scores for the same images, got {a.size} and {b.size} values"
        )
    valid = ~(np.isnan(a) | np.isnan(b))
    diff = a[valid] - b[valid]
    n, n_nonzero = int(diff.size), int(np.count_nonzero(diff))
    result = {"n": n, "n_nonzero": n_nonzero}
    if n == 0:
        return result | {"statistic": math.nan, "p_value": math.nan, "median_difference": math.nan}
    median_difference = float(np.median(diff))
    if n_nonzero == 0:
        return result | {"statistic": 0.0, "p_value": 1.0, "median_difference": median_difference}
    test = stats.wilcoxon(a[valid], b[valid], zero_method="wilcox")
    return result | {
        "statistic": float(test.statistic),
        "p_value": float(test.pvalue),
        "median_difference": median_difference,
    }
