"""Phenotype clusters of a slide's patches (k-means on their features), numpy only.

DeepAttnMISL (:class:`napari_ghanet.models.official_mil.DeepAttnMISL`) pools patches per
phenotype cluster; the MCAT pipeline it comes from ran k-means with 10 clusters on each
slide's patch features once, before training. The training module caches the ids beside
the feature files (``<features>.clusters10.npy``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["phenotype_clusters"]


def _kmeans_once(x: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> tuple[np.ndarray, float]:
    n = len(x)
    centers = [x[rng.integers(n)]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):  # k-means++ seeding
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers.append(x[idx])
        d2 = np.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    c = np.stack(centers)
    ids = np.full(n, -1, np.int64)
    sq = (x**2).sum(1)
    for _ in range(iters):  # Lloyd
        dist = sq[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
        new = dist.argmin(1)
        if np.array_equal(new, ids):
            break
        ids = new
        for j in range(k):
            members = x[ids == j]
            if len(members):
                c[j] = members.mean(0)
    inertia = float(((x - c[ids]) ** 2).sum())
    return ids, inertia


def phenotype_clusters(
    features: np.ndarray, k: int = 10, seed: int = 0, iters: int = 25, restarts: int = 4
) -> np.ndarray:
    """K-means phenotype cluster id (int64, (N,)) of each patch of one slide.

    ``restarts`` k-means++ starts from one seeded generator, Lloyd iterations each, the
    lowest within-cluster sum of squares kept; a slide with at most ``k`` patches gets one
    cluster per patch (the rest stay empty). Deterministic for a given ``seed``.

    Examples
    --------
    >>> x = np.concatenate([np.zeros((5, 2)), np.ones((5, 2)) * 10])
    >>> ids = phenotype_clusters(x, k=2)
    >>> len(set(ids[:5].tolist())), len(set(ids[5:].tolist())), bool(ids[0] != ids[5])
    (1, 1, True)
    """
    x = np.asarray(features, np.float64)
    n = len(x)
    if n <= k:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(max(1, restarts)):
        ids, inertia = _kmeans_once(x, k, rng, iters)
        if inertia < best_inertia:
            best, best_inertia = ids, inertia
    return best
