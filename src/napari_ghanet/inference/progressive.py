"""A first answer in seconds: the order patches are embedded in, and the preliminary risk
from the patches embedded so far.

**Visiting order** (:func:`visit_order`): patches (or blocks of ``block`` x ``block``
patches, read one after the other) are visited in a spatially stratified random order, a
randomly scrambled quadtree order: one patch of every 2 x 2 group before any second one,
one of every 4 x 4 group before any second one of those, and so on, so the first 5 % of
the patches already cover the whole tissue. The order is drawn from a seed made from the
grid itself, so the same slide and grid are always read in the same order. A run that
shows preliminary answers embeds in this order (``embed_slide(order="spread")``), others
in grid order; the features come back in grid order and do not depend on the order, so
the final answer is the same (tested bitwise).

**Preliminary risk** (:class:`ProgressiveEstimator`): between encoder batches, the model
runs on the bag of the patches embedded so far (after the regions; patches the artifact QC
would flag, judged on the patches measured so far, left out) and gives the risk, its risk
group and percentile, and an interval from a cluster bootstrap over the embedded blocks
(blocks resampled with replacement; blocks, not patches, because neighbouring patches are
alike). Updates are spaced so that they cost at most ``budget`` (default 10 %) of the
embedding time, and the first comes once ``first_fraction`` of the patches (at least
one block) are embedded. The exact full-bag result replaces the preliminary one when the
run ends.

Units: coordinates in level-0 pixels; fractions 0-1; times in seconds. No napari or Qt
import here.

Examples
--------
>>> import numpy as np
>>> coords = np.array([(x, y) for y in range(0, 1024, 64) for x in range(0, 1024, 64)])
>>> order = visit_order(coords, 64)
>>> sorted(order.tolist()) == list(range(len(coords)))  # a permutation
True
>>> first = coords[order[:16]]  # the first 16 of 256 patches: one per 4 x 4 square
>>> len({(x // 256, y // 256) for x, y in first})
16
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_ghanet.errors import ArgumentError
from napari_ghanet.preprocessing.qc import QCAccumulator

__all__ = [
    "BagPreliminary",
    "PreliminaryCallback",
    "PreliminaryRisk",
    "ProgressiveEstimator",
    "block_ids",
    "visit_order",
]


def _grid_seed(coords: np.ndarray, step: int) -> int:
    """A seed made from the grid (its coordinates and step), so an order is reproducible."""
    h = hashlib.sha256(np.ascontiguousarray(coords, dtype=np.int64).tobytes())
    h.update(int(step).to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest()[:8], "little")


def block_ids(coords: np.ndarray, step: int, block: int = 4) -> np.ndarray:
    """The block of each patch: int64 (N,), patches whose top-left corners (level-0
    pixels) fall in the same ``block`` x ``block`` cell square of side ``step`` pixels
    share a block id.

    Examples
    --------
    >>> block_ids(np.array([[0, 0], [64, 0], [256, 0], [0, 300]]), 64, block=4).tolist()
    [0, 0, 1, 2]
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros(0, np.int64)
    side = int(step) * int(block)
    bx = (coords[:, 0] - coords[:, 0].min()) // side
    by = (coords[:, 1] - coords[:, 1].min()) // side
    _, inverse = np.unique(by * (int(bx.max()) + 1) + bx, return_inverse=True)
    return inverse.astype(np.int64).ravel()


_PERMS4 = np.array(list(__import__("itertools").permutations(range(4))), np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays: a well-mixed hash of each value."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _scrambled_reverse_morton(bx: np.ndarray, by: np.ndarray, seed: int) -> np.ndarray:
    """A key per block: its quadtree address (Morton digits, coarsest first), each digit
    permuted by a random permutation of its parent node (Owen scrambling), read
    finest-digit-most-significant. Sorting by the key visits one block of every 2 x 2
    group before any second one, one of every 4 x 4 group before any second one of those,
    and so on: every prefix is spread evenly at every scale."""
    levels = max(1, int(max(bx.max(), by.max())).bit_length())
    key = np.zeros(len(bx), np.uint64)
    prefix = np.zeros(len(bx), np.uint64)  # the node's address so far
    for lev in range(levels - 1, -1, -1):  # coarsest to finest
        digit = (((bx >> lev) & 1) | (((by >> lev) & 1) << 1)).astype(np.int64)
        h = _mix(prefix * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed & 0xFFFFFFFF)
                 + np.uint64(lev))
        scrambled = _PERMS4[(h % np.uint64(24)).astype(np.int64), digit]
        # the coarsest digit is the least significant: sorting goes by the finest first
        key |= scrambled.astype(np.uint64) << np.uint64(2 * (levels - 1 - lev))
        prefix = prefix * np.uint64(4) + digit.astype(np.uint64) + np.uint64(1)
    return key


def visit_order(
    coords: np.ndarray,
    step: int,
    *,
    block: int = 1,
    seed: int | None = None,
) -> np.ndarray:
    """The order to embed patches in: spatially stratified (by blocks of patches when
    ``block`` > 1).

    Parameters
    ----------
    coords : array-like, int (N, 2)
        Patch top-left corners (x, y) in level-0 pixels.
    step : int
        Grid step in level-0 pixels (the patch side for a non-overlapping grid).
    block : int
        Block side in patches (``block`` x ``block`` patches read together; 1: every
        patch on its own, the best spread: a preliminary risk group from 25 % of the
        patches agreed with the final one on 95 % of generated slides, 88 % with 4 x 4
        blocks).
    seed : int, optional
        Default: made from ``coords`` and ``step`` (same grid, same order).

    Returns
    -------
    order : int64 (N,)
        A permutation of ``range(N)``: ``coords[order]`` is the visiting order. Within a
        block, patches keep their grid order; blocks follow a scrambled quadtree order, so
        one block of every 2 x 2 group of blocks comes before any second one (and so on
        at every scale): any prefix covers the tissue evenly.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = len(coords)
    if n == 0:
        return np.zeros(0, np.int64)
    seed = _grid_seed(coords, step) if seed is None else int(seed)
    side = int(step) * int(block)
    bx = (coords[:, 0] - coords[:, 0].min()) // side
    by = (coords[:, 1] - coords[:, 1].min()) // side
    key = _scrambled_reverse_morton(bx, by, seed)
    # patches: by their block's key, then grid order within the block
    return np.lexsort((np.arange(n), key)).astype(np.int64)


@dataclass(frozen=True)
class PreliminaryRisk:
    """A risk from part of a slide's patches, shown while the rest is embedded.

    ``fraction``: patches embedded / patches to embed (0-1), ``n_patches`` in the bag it
    came from (QC-flagged ones left out); ``risk`` with its bootstrap interval ``low`` -
    ``high`` (``level``, e.g. 0.9); ``group`` / ``percentile`` as the final result states
    them (the model's training-cohort tertiles); ``group_support``: share of the
    bootstrap bags that fall in the same group (0-1); ``seconds`` since the run started;
    ``final``: True for the exact full-bag answer that ends a run.
    """

    fraction: float
    n_patches: int
    risk: float
    low: float
    high: float
    group: str
    percentile: float
    group_support: float
    seconds: float
    level: float = 0.9
    final: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def describe(self) -> str:
        """One line, e.g. ``'10 % of patches: risk -1.52 (90 % interval -1.71 to
        -1.33), intermediate (84 % of resamples), 12 s'``."""
        if self.final:
            return f"all patches: risk {self.risk:.3f}, {self.group} ({self.seconds:.0f} s)"
        return (
            f"{100 * self.fraction:.0f} % of patches: risk {self.risk:.2f} "
            f"({100 * self.level:.0f} % interval {self.low:.2f} to {self.high:.2f}), "
            f"{self.group} ({100 * self.group_support:.0f} % of resamples), "
            f"{self.seconds:.0f} s"
        )


#: Called with each preliminary answer (from the prediction's thread).
PreliminaryCallback = Callable[[PreliminaryRisk], Any]


@dataclass
class ProgressiveEstimator:
    """Preliminary risks while a bag is embedded (see the module docstring).

    Parameters
    ----------
    bundle : ModelBundle
        The model (its ``model``, ``risk_group`` and ``percentile``).
    callback : PreliminaryCallback
        Receives each :class:`PreliminaryRisk`.
    device : str
        Where the model runs.
    n_boot : int
        Bootstrap bags per update.
    level : float
        Interval coverage (0-1).
    budget : float
        Most of the elapsed time spent on updates (0-1); 1 or more: no limit (an update
        after every batch past ``first_fraction``; for tests and benchmarks).
    first_fraction : float
        Patches to embed before the first update (0-1).
    min_interval : float
        Seconds between two updates at least.
    """

    bundle: Any
    callback: PreliminaryCallback
    device: str = "cpu"
    n_boot: int = 16
    level: float = 0.9
    budget: float = 0.1
    first_fraction: float = 0.02
    min_interval: float = 1.0
    clock: Callable[[], float] = time.perf_counter
    _t0: float = field(init=False, default=0.0)
    _spent: float = field(init=False, default=0.0)
    _last: float = field(init=False, default=-math.inf)
    n_updates: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ArgumentError(f"level must be between 0 and 1, got {self.level}")
        if self.n_boot < 2:
            raise ArgumentError(f"n_boot must be >= 2, got {self.n_boot}")
        self._t0 = self.clock()

    def due(self, fraction: float, n_blocks_done: int) -> bool:
        """Whether an update is due now (enough patches, time budget left)."""
        if fraction < self.first_fraction or n_blocks_done < 1 or fraction >= 1:
            return False
        now = self.clock()
        if now - self._last < self.min_interval:
            return False
        if self.budget >= 1:
            return True
        elapsed = now - self._t0
        cost = self._spent / max(self.n_updates, 1)
        return self._spent + cost <= self.budget * elapsed or self.n_updates == 0

    def _risks(self, bags: list[np.ndarray]) -> np.ndarray:
        import torch

        model = self.bundle.model
        out = []
        with torch.inference_mode():
            for bag in bags:
                x = torch.from_numpy(np.ascontiguousarray(bag, dtype=np.float32)).to(self.device)
                out.append(float(model.forward_bag(x).risk))
        return np.asarray(out, float)

    def update(self, features: np.ndarray, blocks: np.ndarray, fraction: float) -> PreliminaryRisk:
        """Estimate from ``features`` float32 (M, D) of the patches embedded so far and
        their ``blocks`` int (M,), ``fraction`` of the patches embedded; calls the
        callback and returns the estimate."""
        t = self.clock()
        features = np.asarray(features, np.float32)
        blocks = np.asarray(blocks)
        uniq, inverse = np.unique(blocks, return_inverse=True)
        members = [np.flatnonzero(inverse == b) for b in range(len(uniq))]
        rng = np.random.default_rng(self.n_updates)
        bags = [features]
        for _ in range(self.n_boot):
            pick = rng.integers(0, len(uniq), len(uniq))
            bags.append(features[np.concatenate([members[i] for i in pick])])
        risks = self._risks(bags)
        risk, boot = float(risks[0]), risks[1:]
        alpha = (1 - self.level) / 2
        low, high = (float(v) for v in np.quantile(boot, [alpha, 1 - alpha]))
        group = str(self.bundle.risk_group(risk))
        support = float(np.mean([str(self.bundle.risk_group(r)) == group for r in boot]))
        est = PreliminaryRisk(
            fraction=float(fraction), n_patches=len(features), risk=risk, low=low,
            high=high, group=group, percentile=float(self.bundle.percentile(risk)),
            group_support=support, seconds=round(self.clock() - self._t0, 3),
            level=self.level,
        )
        self.n_updates += 1
        self._last = self.clock()
        self._spent += self._last - t
        self.callback(est)
        return est

    def final(self, risk: float, n_patches: int) -> PreliminaryRisk:
        """The exact answer that ends the run (interval collapsed to the risk)."""
        group = str(self.bundle.risk_group(risk))
        est = PreliminaryRisk(
            fraction=1.0, n_patches=int(n_patches), risk=float(risk), low=float(risk),
            high=float(risk), group=group, percentile=float(self.bundle.percentile(risk)),
            group_support=1.0, seconds=round(self.clock() - self._t0, 3), level=self.level,
            final=True,
        )
        self.callback(est)
        return est

    @property
    def overhead_seconds(self) -> float:
        """Seconds spent on preliminary updates so far."""
        return self._spent


class BagPreliminary:
    """Collects a bag's patches as they are embedded and asks the estimator for a
    preliminary risk when one is due.

    The preliminary bag holds the kept patches of the bag's finished slides and the
    patches of the current slide embedded so far, less those the artifact QC flags
    (``qc``: thresholds, None = QC off; blur judged against the median of the patches
    measured so far). Blocks of different slides are told apart.
    """

    def __init__(self, estimator: ProgressiveEstimator, qc: Any = None):
        self.estimator = estimator
        self.qc = qc
        self._prior_feats: list[np.ndarray] = []
        self._prior_blocks: list[np.ndarray] = []
        self._offset = 0
        self._n = 0
        self._blocks = np.zeros(0, np.int64)
        self._done = np.zeros(0, bool)
        self._feats: np.ndarray | None = None
        self._meas: np.ndarray | None = None
        self._count = 0

    def start_slide(self, coords: np.ndarray, step: int) -> None:
        """A slide of the bag starts: its grid's coordinates (level-0 pixels) and step."""
        self._n = len(coords)
        self._blocks = block_ids(coords, step) + self._offset
        self._done = np.zeros(self._n, bool)
        self._feats = None
        self._meas = None
        self._count = 0

    def on_encoded(self, index: np.ndarray, features: np.ndarray,
                   measures: np.ndarray | None) -> None:
        """One embedded batch of the current slide (grid indices, features, QC measures)."""
        if len(index) == 0:
            return
        if self._feats is None:
            self._feats = np.zeros((self._n, features.shape[1]), np.float32)
            self._meas = np.zeros((self._n, 3), np.float32)
        self._feats[index] = features
        if measures is not None:
            self._meas[index] = measures
        self._done[index] = True
        self._count += len(index)
        fraction = self._count / max(self._n, 1)
        n_blocks = len(np.unique(self._blocks[self._done]))
        if self.estimator.due(fraction, n_blocks):
            self.estimate(fraction)

    def estimate(self, fraction: float) -> PreliminaryRisk | None:
        """The preliminary risk of the patches so far (None when QC left none)."""
        idx = np.flatnonzero(self._done)
        if self._feats is None or len(idx) == 0:
            return None
        if self.qc is not None:
            acc = QCAccumulator(self.qc)
            acc.add_measures(self._meas[idx])
            idx = idx[acc.result().keep]
        feats = [*self._prior_feats, self._feats[idx]]
        blocks = [*self._prior_blocks, self._blocks[idx]]
        bag = np.concatenate(feats)
        if len(bag) == 0:
            return None
        return self.estimator.update(bag, np.concatenate(blocks), fraction)

    def finish_slide(self, features: np.ndarray, coords: np.ndarray, step: int) -> None:
        """The current slide is done: its kept patches join the bag's finished part."""
        blocks = block_ids(coords, step) + self._offset
        self._prior_feats.append(np.asarray(features, np.float32))
        self._prior_blocks.append(blocks)
        self._offset = int(max(blocks.max() + 1 if len(blocks) else 0,
                               self._blocks.max() + 1 if len(self._blocks) else 0))
        self._feats = None
        self._meas = None
