"""Seeded percentile-bootstrap intervals over test studies (``scipy.stats.bootstrap``) for the vision suite."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap


def study_bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_resamples: int, seed: int = 0,
                       alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval (``1 - alpha``) of ``statistic(study indices)`` over ``n_resamples`` resamples of the
    ``n`` test studies with replacement; ``(nan, nan)`` without resamples or with fewer than two studies.

    A resample where the statistic is undefined (nan: e.g. no label with both classes) is left out of the
    bootstrap distribution, as a resample that cannot be scored."""
    if n_resamples <= 0 or n < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateDataWarning)  # nan resamples: handled below
        res = bootstrap((np.arange(n),), statistic, n_resamples=n_resamples, vectorized=False,
                        confidence_level=1 - alpha, method="percentile", rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isfinite(lo) and np.isfinite(hi):
        return lo, hi
    dist = res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)]
    if dist.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(dist, alpha / 2)), float(np.quantile(dist, 1 - alpha / 2))


def mean_ci(values: np.ndarray, n_resamples: int, seed: int = 0) -> tuple[float | None, float | None]:
    """95% percentile interval of the mean of per-study ``values`` (None, None when it cannot be computed)."""
    values = np.asarray(values, dtype=np.float64)
    if n_resamples <= 0 or len(values) < 2:
        return None, None
    res = bootstrap((values,), np.mean, n_resamples=n_resamples, vectorized=True, confidence_level=0.95,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
