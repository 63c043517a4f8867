"""Speed of the region filter, the artifact QC and the overlapping heatmap.

Prints: filter_grid on 100,000 patch centres against a 2,000-vertex include polygon and
ten exclude discs; qc_patches throughput on 256 px patches; overlap_heatmap on 100,000
patches at 75 % overlap.

    python benchmarks/roi_qc_heatmap.py
"""

from __future__ import annotations

import time

import numpy as np
import shapely

from napari_ghanet.inference.heatmap import overlap_heatmap
from napari_ghanet.preprocessing.qc import qc_patches
from napari_ghanet.preprocessing.roi import Region, Regions, filter_grid


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    rad = 30_000 + 5_000 * np.sin(7 * t)
    star = shapely.Polygon(np.c_[50_000 + rad * np.cos(t), 50_000 + rad * np.sin(t)])
    discs = [shapely.Point(20_000 + 6_000 * i, 50_000).buffer(2_000) for i in range(10)]
    regions = Regions([Region(star, "star")], [Region(d, f"disc {i}") for i, d in enumerate(discs)])
    xs = np.arange(0, 100_000, 316)
    coords = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)[:100_000]
    s = best_of(lambda: filter_grid(coords, 256, regions, mpp=0.25))
    print(f"filter_grid: {len(coords):,} patches, 11 regions: {s * 1e3:.1f} ms")

    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (256, 256, 256, 3), dtype=np.uint8)
    s = best_of(lambda: qc_patches(patches), repeat=2)
    print(f"qc_patches: {len(patches)} patches of 256 px: {s:.2f} s "
          f"({len(patches) / s:,.0f} patches/s, one thread)")

    scores = rng.random(len(coords))
    grid4 = coords // 316 * 64  # a 64 px lattice: 256 px patches at 75 % overlap
    s = best_of(lambda: overlap_heatmap(grid4, 256, scores, 0.75))
    print(f"overlap_heatmap: {len(coords):,} patches at 75 % overlap: {s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
