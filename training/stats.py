"""The statistics every report uses: Wilson intervals for an accuracy, and paired tests for two runs over the same
problems (scipy's implementations, one place for evaluation and the toy demo)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound at 0 % and 100 %, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 0.0
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def paired(before: Sequence[bool], after: Sequence[bool], confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Two runs' correctness on the same problems, in the same order: the accuracy difference (after - before),
    its paired bootstrap interval, and McNemar's exact test (a binomial test on the problems only one run got
    right). Unpaired intervals ignore that both runs saw the same problems and come out far too wide."""
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired runs need the same, non-empty problems ({a.size} against {b.size})")
    gained, lost = int(((a == 0) & (b == 1)).sum()), int(((a == 1) & (b == 0)).sum())
    p_value = stats.binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    delta = float(b.mean() - a.mean())
    if np.ptp(b - a) > 0:  # equal differences everywhere (none, or every problem gained): no spread to resample
        boot = stats.bootstrap((a, b), lambda x, y, axis=-1: y.mean(axis=axis) - x.mean(axis=axis), paired=True,
                               vectorized=True, confidence_level=confidence, n_resamples=9999,
                               random_state=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    else:
        low = high = delta
    return {"n": int(a.size), "delta": delta, "ci95": [low, high], "gained": gained, "lost": lost,
            "mcnemar_p": float(p_value)}
