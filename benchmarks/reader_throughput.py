"""Patch reading on one thread: the project's reader against raw OpenSlide and the JPEG
decoder itself, on a tiled JPEG slide; and the cost of a spatially shuffled visiting order.

Part 1 (``--part decode``): patches of one tile at level 0 (256 x 256 px on the generated
slide, 240 x 240 on the CMU Aperio slide: ``--slide cmu``), a different tile each (the tile caches never hit: a measure of decoding, not of
caching), all on one thread, the same patches for every reader, in rounds that alternate
the readers (so machine load hits all alike):

* ``project``: ``napari_ghanet.io.slide.open_slide(...).read_region`` (the ``jpegtiles``
  backend: pread + libjpeg-turbo + copy into the output);
* ``openslide``: raw ``openslide.OpenSlide.read_region`` (RGBA PIL image converted to a
  numpy array, as any caller must);
* ``decode``: ``imagecodecs.jpeg8_decode`` of the same compressed tiles, already in
  memory: the single-core JPEG decode limit;
* ``fastslide``: ``fastslide.FastSlide.read_region(...).numpy()`` (no tile cache), only
  when the ``fastslide`` package is importable (it is not a dependency).

Targets: project >= 1.2x openslide and >= 0.8x decode.

Part 2 (``--part order``): the embedding's patch read (``PatchGrid.read``: 256 px at 0.5
um/px, i.e. 512 level-0 px read at level 0 and halved) over the tissue grid of the slide
in grid (row-major) order and in a spatially shuffled block order (blocks of 4 x 4 grid
cells visited in random order, the patches of a block consecutive, row-major inside it),
alternated, one thread; prints the read-cost ratio block / row-major.

The slide: ``--slide PATH``, default the cached whole slide of ``benchmarks/whole_slide.py``
(built when missing; ``--side`` picks its size).

Usage::

    python benchmarks/reader_throughput.py                       # both parts
    python benchmarks/reader_throughput.py --part decode --patches 2000
    python benchmarks/reader_throughput.py --part order --blocks 400 --json reader.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def _tissue_tiles(slide, n: int, seed: int) -> np.ndarray:
    """Level-0 (x, y) of ``n`` distinct level-0 tiles at least half tissue, shuffled."""
    from napari_ghanet.preprocessing.patches import patch_grid
    from napari_ghanet.preprocessing.tissue import tissue_mask

    mask = tissue_mask(slide)
    # a patch of one tile at level 0 = tile px at the slide's own mpp
    side = _tile_side(slide)
    grid = patch_grid(slide, mask, patch_px=side, target_mpp=slide.mpp, min_tissue_fraction=0.5)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(grid))[:n]
    return grid.coords[pick]


def _tile_side(slide) -> int:
    tile = slide.level_tile_sizes[0]
    if not tile or tile[0] != tile[1]:
        raise SystemExit(f"{slide.path}: level 0 is not tiled in squares")
    return int(tile[0])


def _tile_bytes(path: Path, coords: np.ndarray):
    """Compressed bytes of the level-0 tiles at ``coords`` and the level's decode args."""
    import tifffile

    from napari_ghanet.io.backends.jpegtiles import jpeg_level

    with tifffile.TiffFile(str(path)) as tif:
        lv = jpeg_level(tif.pages[0])
    if lv is None:
        raise SystemExit(f"{path}: level 0 is not tiled JPEG")
    out = []
    with open(path, "rb") as fh:
        for x, y in coords:
            ti = (int(y) // lv.tile_h) * lv.nx + int(x) // lv.tile_w
            fh.seek(int(lv.offsets[ti]))
            out.append(fh.read(int(lv.counts[ti])))
    return out, lv


def decode_part(path: Path, n: int, rounds: int, seed: int) -> dict:
    """Part 1: patches/s of the project reader, raw OpenSlide and the decoder alone."""
    import imagecodecs
    import openslide

    from napari_ghanet.io.slide import open_slide

    with open_slide(path) as slide:
        coords = _tissue_tiles(slide, n, seed)
        backend = slide.backend
        side = _tile_side(slide)
    blobs, lv = _tile_bytes(path, coords)  # also brings the file's pages into the OS cache
    size = (side, side)

    # each pass opens its reader first (untimed): no tile is in any cache when it starts
    def project():
        with open_slide(path) as slide:
            t0 = time.perf_counter()
            for x, y in coords:
                slide.read_region((int(x), int(y)), 0, size)
            return time.perf_counter() - t0

    def raw_openslide():
        with openslide.OpenSlide(str(path)) as osr:
            t0 = time.perf_counter()
            for x, y in coords:
                np.asarray(osr.read_region((int(x), int(y)), 0, size))
            return time.perf_counter() - t0

    def decode():
        t0 = time.perf_counter()
        for data in blobs:
            imagecodecs.jpeg8_decode(data, tables=lv.tables, colorspace=lv.colorspace,
                                     outcolorspace=lv.outcolorspace)
        return time.perf_counter() - t0

    runs = {"project": project, "openslide": raw_openslide, "decode": decode}
    diff_fastslide = None
    try:  # optional: fastslide (a C++ reader on PyPI), measured when installed
        import fastslide
    except ImportError:
        fastslide = None
    if fastslide is not None:

        def fast():
            fs = fastslide.FastSlide.from_file_path(str(path), cache=None)
            t0 = time.perf_counter()
            for x, y in coords:
                fs.read_region((int(x), int(y)), 0, size).numpy()
            return time.perf_counter() - t0

        runs["fastslide"] = fast
        fs = fastslide.FastSlide.from_file_path(str(path), cache=None)
        with open_slide(path) as slide:
            x, y = (int(v) for v in coords[0])
            a = np.asarray(fs.read_region((x, y), 0, size).numpy())[:, :, :3]
            diff_fastslide = int(np.abs(a.astype(int) - slide.read_region((x, y), 0, size)).max())
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        names = list(runs)
        names = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in names:
            times[name].append(runs[name]())
    rate = {k: len(coords) / min(v) for k, v in times.items()}  # best round of each
    median = {k: len(coords) / float(np.median(v)) for k, v in times.items()}
    return {
        "slide": str(path), "backend": backend, "patches": int(len(coords)), "rounds": rounds,
        "patch_px": side,
        "patches_per_s_best": {k: round(v, 1) for k, v in rate.items()},
        "patches_per_s_median": {k: round(v, 1) for k, v in median.items()},
        "project_vs_openslide": round(median["project"] / median["openslide"], 3),
        "project_vs_decode": round(median["project"] / median["decode"], 3),
        "mean_tile_bytes": int(np.mean([len(b) for b in blobs])),
        "fastslide_max_abs_diff_to_project": diff_fastslide,
    }


def block_order(coords: np.ndarray, step: int, block: int, seed: int) -> np.ndarray:
    """Indices of ``coords`` (a row-major patch grid with stride ``step``) visiting blocks
    of ``block`` x ``block`` grid cells in random order, each block's patches consecutive
    (row-major inside the block)."""
    cx, cy = coords[:, 0] // step, coords[:, 1] // step
    bid = (cy // block) * (int(cx.max()) // block + 1) + cx // block
    blocks = np.unique(bid)
    rank = np.empty(int(bid.max()) + 1, np.int64)
    rank[np.random.default_rng(seed).permutation(blocks)] = np.arange(len(blocks))
    return np.lexsort((np.arange(len(coords)), rank[bid]))  # stable: row-major inside


def order_part(path: Path, max_blocks: int | None, rounds: int, seed: int) -> dict:
    """Part 2: one-thread read time of the tissue grid, row-major vs shuffled 4x4 blocks."""
    from napari_ghanet.io.slide import open_slide
    from napari_ghanet.preprocessing.patches import patch_grid
    from napari_ghanet.preprocessing.tissue import tissue_mask

    with open_slide(path) as slide:
        grid = patch_grid(slide, tissue_mask(slide), patch_px=256, target_mpp=0.5)
    order = block_order(grid.coords, grid.step_level0, 4, seed)
    if max_blocks:  # a random subset of blocks, in the shuffled order
        cx, cy = grid.coords[:, 0] // grid.step_level0, grid.coords[:, 1] // grid.step_level0
        bid = (cy // 4) * 100_000 + cx // 4
        keep_blocks = []
        for b in bid[order]:
            if not keep_blocks or keep_blocks[-1] != b:
                keep_blocks.append(b)
            if len(keep_blocks) > max_blocks:
                break
        keep = np.isin(bid, keep_blocks[:max_blocks])
        order = order[keep[order]]
    rows = np.sort(order)
    times = {"row-major": [], "block": []}
    for r in range(rounds):
        pairs = [("row-major", rows), ("block", order)]
        for name, idx in pairs if r % 2 == 0 else pairs[::-1]:
            with open_slide(path) as slide:  # a fresh tile cache for each pass
                t0 = time.perf_counter()
                for i in idx:
                    grid.read(slide, int(i))
                times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "slide": str(path), "grid_patches": len(grid), "patches_read": int(len(order)),
        "patch_size_level0": grid.patch_size_level0, "rounds": rounds,
        "seconds_median": {k: round(v, 3) for k, v in med.items()},
        "patches_per_s": {k: round(len(order) / v, 1) for k, v in med.items()},
        "block_vs_row_major_cost": round(med["block"] / med["row-major"], 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide", type=Path, default=None, help="tiled JPEG slide (default: "
                    "the whole slide of benchmarks/whole_slide.py, built when missing)")
    ap.add_argument("--side", type=int, default=None, help="side of the generated slide, px")
    ap.add_argument("--part", choices=("decode", "order", "both"), default="both")
    ap.add_argument("--patches", type=int, default=3000, help="patches of part 1")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of part 1")
    ap.add_argument("--blocks", type=int, default=0,
                    help="4x4 blocks read in part 2 (0: the whole grid)")
    ap.add_argument("--order-rounds", type=int, default=2, help="rounds of part 2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    path = args.slide
    if path is not None and str(path) == "cmu":
        from napari_ghanet.io.slide import cmu_slide_path

        path = cmu_slide_path()
    if path is None:
        import whole_slide

        side = args.side or whole_slide.FULL_SIDE
        path = whole_slide.build_whole_slide(None, side, 0, say=print)
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "load_before": _load()}
    if args.part in ("decode", "both"):
        d = decode_part(path, args.patches, args.rounds, args.seed)
        out["decode"] = d
        print(f"\n{d['patch_px']} px patches at level 0 (one tile each), one thread, "
              f"{d['patches']} distinct tiles, "
              f"{d['rounds']} rounds ({d['backend']} backend)")
        print(f"{'reader':<12}{'median /s':>12}{'best /s':>12}")
        for k in d["patches_per_s_median"]:
            print(f"{k:<12}{d['patches_per_s_median'][k]:>12.1f}{d['patches_per_s_best'][k]:>12.1f}")
        print(f"project / openslide = {d['project_vs_openslide']:.2f} (target >= 1.2); "
              f"project / decode = {d['project_vs_decode']:.2f} (target >= 0.8)")
    if args.part in ("order", "both"):
        o = order_part(path, args.blocks or None, args.order_rounds, args.seed)
        out["order"] = o
        print(f"\nembedding patch reads ({o['patch_size_level0']} level-0 px -> 256 px), one "
              f"thread, {o['patches_read']} of {o['grid_patches']} grid patches")
        for k, v in o["seconds_median"].items():
            print(f"{k:<12}{v:>10.2f} s {o['patches_per_s'][k]:>10.1f} /s")
        print(f"block order / row-major read cost = {o['block_vs_row_major_cost']:.3f}")
    out["load_after"] = _load()
    print(f"\nload average before / after: {out['load_before']} | {out['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
