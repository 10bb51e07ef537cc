"""Rank agreement of scores with labels: ROC-AUC and Spearman, NaN-aware.

Used by the learned scorer's cross-validation (`scoring.learned`) and by the agreement table
(`phased_ift.scoring.agreement.evaluate_scores`), so both report the same numbers.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def roc_auc(positive: Sequence[bool], scores: Sequence[float]) -> float:
    """ROC-AUC of `scores` for the binary `positive` (ties count half; sklearn.metrics.roc_auc_score).

    NaN scores are dropped first. Returns NaN when only one class is left.
    """
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(positive, bool), np.asarray(scores, float)
    ok = ~np.isnan(s)
    y, s = y[ok], s[ok]
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, s))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties; scipy.stats.spearmanr) over pairs with no NaN.

    Returns NaN for fewer than 3 pairs or a constant side.
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)
