"""Everything fitted from the training patients of a fold: survival bins, genomic scaling,
reconstruction gene masks.

The paper's code derives its bins from the whole cohort and its gene masks from a
with-replacement, class-weighted sample of the training set; here each is fitted on the
fold's training patients only, each patient counted once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from napari_ghanet.errors import CohortError

__all__ = [
    "survival_bin_edges",
    "discretize",
    "GenomicScaler",
    "risk_groups_for_masks",
    "welch_p_values",
    "reconstruction_masks",
]


def survival_bin_edges(months: np.ndarray, censorship: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Bin edges in months, float64 (n_bins + 1,): quantiles of the uncensored patients'
    survival as the paper's code (``pd.qcut``), with the outer edges at 0 and the longest
    follow-up. Bin k is [edges[k], edges[k+1]); the last bin is open-ended.
    """
    months = np.asarray(months, np.float64)
    events = np.asarray(censorship) == 0
    if events.sum() < n_bins:
        raise CohortError(
            f"only {int(events.sum())} uncensored patient(s) to place {n_bins} survival bins; "
            "use fewer bins or more patients"
        )
    inner = np.quantile(months[events], np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.concatenate([[0.0], inner, [max(float(months.max()), float(inner[-1]))]])


def discretize(months: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index (int64) of each survival time: k with edges[k] <= t < edges[k+1], times
    past the last inner edge fall in the last bin."""
    return np.searchsorted(np.asarray(edges)[1:-1], np.asarray(months), side="right").astype(np.int64)


@dataclass
class GenomicScaler:
    """Per-feature standardisation (z-score) fitted on training patients.

    mean, std: float32 (G,); constant features get std 1 so they map to 0.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> GenomicScaler:
        x = np.asarray(x, np.float64)
        std = x.std(axis=0)
        std[std < 1e-8] = 1.0
        return cls(mean=x.mean(axis=0).astype(np.float32), std=std.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def risk_groups_for_masks(
    labels: np.ndarray, censorship: np.ndarray, n_bins: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (low_risk, high_risk) patient masks as the paper's code forms them.

    Low risk: survival in the upper half of the bins (label >= n_bins // 2), censored or
    not. High risk: an observed event in the lower half. Censored patients in the lower
    half are left out: their outcome is unknown.
    """
    labels = np.asarray(labels)
    events = np.asarray(censorship) == 0
    low = labels >= n_bins // 2
    high = (labels < n_bins // 2) & events
    return low, high


def welch_p_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sided Welch t-test p-value per column of a (n_a, G) vs b (n_b, G); columns
    without variance in both groups get p = 1."""
    # Near-constant genes make scipy warn about precision; they get p = 1 below anyway.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind(a, b, axis=0, equal_var=False).pvalue
    p = np.asarray(p, np.float64)
    p[~np.isfinite(p)] = 1.0
    return p


def reconstruction_masks(
    genomics: np.ndarray,
    category_index: list[np.ndarray],
    labels: np.ndarray,
    censorship: np.ndarray,
    mode: str = "significant",
    p_threshold: float = 0.05,
    n_bins: int = 4,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Which of each category's genes the model reconstructs.

    genomics: (P, G) training patients (each once); category_index: per category, column
    indices into G. mode ``"significant"`` keeps genes whose Welch t-test between low- and
    high-risk patients gives p < p_threshold (as the paper's code); ``"all"`` keeps all.
    A category with no significant gene keeps its single most significant one so every
    token still has a target. Returns (masks, p_values): per category a bool mask over
    its columns and the float64 p-values (ones for ``"all"``).
    """
    if mode not in ("significant", "all"):
        raise CohortError(f"unknown reconstruction gene mode {mode!r}: use 'significant' or 'all'")
    if mode == "all":
        return (
            [np.ones(len(ix), bool) for ix in category_index],
            [np.ones(len(ix)) for ix in category_index],
        )
    low, high = risk_groups_for_masks(labels, censorship, n_bins)
    if low.sum() < 2 or high.sum() < 2:
        raise CohortError(
            f"gene selection needs >= 2 low-risk and >= 2 high-risk training patients, got "
            f"{int(low.sum())} and {int(high.sum())}; use --recon-genes all"
        )
    p_all = welch_p_values(genomics[low], genomics[high])
    masks, pvals = [], []
    for ix in category_index:
        p = p_all[ix]
        m = p < p_threshold
        if not m.any():
            m[int(np.argmin(p))] = True
        masks.append(m)
        pvals.append(p)
    return masks, pvals
