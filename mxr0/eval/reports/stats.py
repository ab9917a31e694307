"""Bootstrap confidence intervals and a paired approximate-randomisation test over report pairs.

Every metric is represented by per-study sufficient statistics (:class:`AdditiveStats`): a matrix
``x`` of shape (studies, k) whose column sums determine the corpus value through ``finalize``.
A bootstrap resample is a vector of multiplicities ``w`` (how often each study was drawn), so the
*corpus* metric of the resample is ``finalize(w @ x)`` -- BLEU's brevity penalty, micro-F1 and
macro-F1 are recomputed from resampled counts, never averaged from per-study scores. Metrics that
are not additive under resampling (CIDEr-D: its document frequencies come from the resampled
references) override :meth:`AdditiveStats.resample_values`.

* Bootstrap (MAIRA-2 / LLaVA-Rad practice): ``n_resamples`` (default 500) resamples of the studies
  with replacement, all metrics on the same resamples, seeded (numpy PCG64, one draw of ``N``
  indices per resample, so results do not depend on chunk sizes); reported as the point estimate
  on all studies, the median of the resampled values and the 2.5/97.5 percentiles (95% percentile
  interval, numpy's linear interpolation).
* Paired test between systems A and B scored against the same references: approximate
  randomisation (Noreen 1989; Riezler & Maxwell 2005): in each trial every study's pair of
  outputs is swapped between the systems with probability 1/2 and the corpus metrics are
  recomputed; two-sided ``p = (1 + #{|delta*| >= |delta|}) / (1 + trials)``.

Memory is bounded: resamples and trials are processed in chunks of ``chunk`` rows.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["AdditiveStats", "bootstrap", "paired_randomization", "summarize"]


class AdditiveStats:
    """Per-study sufficient statistics ``x`` (N, k); ``finalize(sums, counts)`` -> (b, len(names))."""

    names: tuple[str, ...] = ()

    def __init__(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"sufficient statistics must be 2-D (studies, k), got shape {x.shape}")
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def finalize(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def value(self) -> dict[str, float]:
        """Corpus values on all studies."""
        v = self.finalize(self.x.sum(axis=0, keepdims=True), np.array([float(len(self))]))[0]
        return {k: float(val) for k, val in zip(self.names, v)}

    def resample_values(self, weights: np.ndarray) -> np.ndarray:
        """Corpus values for each row of study multiplicities ``weights`` (b, N) -> (b, m)."""
        return self.finalize(weights @ self.x, weights.sum(axis=1))

    def swapped_values(self, other: "AdditiveStats", swap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values of (self', other') where rows of ``swap`` (b, N, 0/1) exchange the studies' outputs."""
        if type(other) is not type(self) or other.x.shape != self.x.shape:
            raise ValueError("paired test needs the same metric on the same studies for both systems")
        d = swap @ (other.x - self.x)
        sa, sb = self.x.sum(axis=0), other.x.sum(axis=0)
        n = np.full(swap.shape[0], float(len(self)))
        return self.finalize(sa + d, n), self.finalize(sb - d, n)


def _resample_weights(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    w = np.empty((b, n), dtype=np.float64)
    for r in range(b):
        w[r] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return w


def bootstrap(stats: Mapping[str, AdditiveStats], n_resamples: int = 500, seed: int = 0,
              chunk: int = 50) -> dict[str, np.ndarray]:
    """Resampled corpus values: {metric name: array (n_resamples,)} for every metric of every family."""
    fams = list(stats.values())
    if not fams:
        return {}
    n = len(fams[0])
    for s in fams:
        if len(s) != n:
            raise ValueError("all metric families must cover the same studies")
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {name: [] for s in fams for name in s.names}
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        w = _resample_weights(rng, n, b)
        for s in fams:
            vals = s.resample_values(w)
            for j, name in enumerate(s.names):
                out[name].append(vals[:, j])
        done += b
    return {k: np.concatenate(v) for k, v in out.items()}


def summarize(point: Mapping[str, float], samples: Mapping[str, np.ndarray] | None,
              level: float = 0.95) -> dict[str, dict]:
    """{metric: {value, median, ci_low, ci_high}} (only ``value`` without samples)."""
    out = {}
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    for k, v in point.items():
        row = {"value": float(v)}
        if samples is not None and k in samples:
            s = samples[k]
            row.update(median=float(np.median(s)), ci_low=float(np.percentile(s, lo)),
                       ci_high=float(np.percentile(s, hi)))
        out[k] = row
    return out


def paired_randomization(stats_a: Mapping[str, AdditiveStats], stats_b: Mapping[str, AdditiveStats],
                         trials: int = 10000, seed: int = 0, chunk: int = 256) -> dict[str, dict]:
    """Two-sided approximate-randomisation test of B - A for every metric; see the module docstring."""
    if set(stats_a) != set(stats_b):
        raise ValueError(f"systems have different metric families: {sorted(stats_a)} vs {sorted(stats_b)}")
    rng = np.random.default_rng(seed)
    fams = list(stats_a)
    n = len(stats_a[fams[0]]) if fams else 0
    observed, exceed = {}, {}
    for f in fams:
        va, vb = stats_a[f].value(), stats_b[f].value()
        for name in stats_a[f].names:
            observed[name] = (va[name], vb[name])
            exceed[name] = 0
    done = 0
    while done < trials:
        b = min(chunk, trials - done)
        swap = (rng.random((b, n)) < 0.5).astype(np.float64)
        for f in fams:
            a2, b2 = stats_a[f].swapped_values(stats_b[f], swap)
            for j, name in enumerate(stats_a[f].names):
                d_obs = abs(observed[name][1] - observed[name][0])
                d = np.abs(b2[:, j] - a2[:, j])
                exceed[name] += int(np.sum(d >= d_obs - 1e-12 * max(1.0, d_obs)))
        done += b
    out = {}
    for name, (a, b_) in observed.items():
        out[name] = {"a": a, "b": b_, "delta": b_ - a, "p_value": (1 + exceed[name]) / (1 + trials)}
    return out
