"""Patch-embedding throughput: reading alone, encoder alone, and the whole pipeline.

Generates (once) a JPEG-tiled pyramidal TIFF of synthetic H&E with at least 5,000
tissue patches of 256 px at 0.5 um/px, then prints patches per second for

* ``read``: the threaded patch reader of ``embed_slide`` with no encoder;
* ``encode``: the encoder alone on a batch already on the device (uint8 in, features out:
  preprocessing included), repeated;
* ``pipeline``: ``embed_slide`` end to end (reading overlapped with inference);

for ``morphometric`` and ``resnet50_trunc`` (or any registered encoder, e.g. ``uni``: a
ViT-L/16) on every device present (cpu, and cuda when available). Networks run with
random weights (speed does not depend on them). On the CPU the pipeline uses
``embed_slide``'s default backend (ONNX Runtime when the encoder supports it). The
pipeline's target is at least 90% of the slower of ``read`` and ``encode``.

Usage::

    python benchmarks/embed_throughput.py                    # all patches, every device
    python benchmarks/embed_throughput.py --max-patches 256  # a short CPU run
    python benchmarks/embed_throughput.py --devices cuda --json figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_ghanet.encoders import create_encoder
from napari_ghanet.inference.embedding import embed_slide, iter_patch_batches, resolve_device
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

TEXTURE_PX = 4096  # side of the rendered synthetic tissue, repeated over the slide
REPEAT = 7  # the slide is REPEAT x REPEAT textures: 28672 px = 14.3 mm at 0.5 um/px
MPP = 0.5


def _texture(seed: int = 3) -> np.ndarray:
    """Synthetic H&E tissue covering most of a TEXTURE_PX square, (H, W, 3) uint8."""
    try:
        from napari_ghanet.datasets.synthetic import synthetic_slide
    except ImportError:  # a plain optical-density rendering without the synthetic module
        rng = np.random.default_rng(seed)
        n = TEXTURE_PX
        c_e = 0.35 + 0.15 * rng.random((n, n), dtype=np.float32)
        c_h = 0.05 + 0.05 * rng.random((n, n), dtype=np.float32)
        for y, x in rng.integers(4, n - 4, (60_000, 2)):
            c_h[y - 3 : y + 4, x - 3 : x + 4] = 0.8
        od = c_h[..., None] * np.float32([0.81, 0.51, 0.29]) + c_e[..., None] * np.float32(
            [0.21, 0.83, 0.53]
        )
        return np.clip(245 * 10.0 ** (-od), 0, 255).astype(np.uint8)
    return synthetic_slide((TEXTURE_PX, TEXTURE_PX), mpp=MPP, seed=seed, tissue_fraction=0.95).rgb


def _area_down(img: np.ndarray, f: int) -> np.ndarray:
    h, w = img.shape[0] // f, img.shape[1] // f
    return img[: h * f, : w * f].reshape(h, f, w, f, 3).mean((1, 3)).round().astype(np.uint8)


def write_benchmark_slide(path: Path, tile: int = 256) -> Path:
    """Write the benchmark slide (REPEAT x REPEAT copies of the texture, 4 levels)."""
    import tifffile

    tex = _texture()
    tmp = path.with_name(path.name + ".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for level in range(4):
            f = 4**level
            t = tex if f == 1 else _area_down(tex, f)
            side = t.shape[0] * REPEAT
            n_tiles = -(-side // tile)

            def tiles(t=t, side=side, n_tiles=n_tiles):
                period = t.shape[0]
                for ty in range(n_tiles):
                    ys = ty * tile + np.arange(tile)
                    for tx in range(n_tiles):
                        xs = tx * tile + np.arange(tile)
                        out = t[np.ix_(ys % period, xs % period)]  # periodic texture
                        out[ys >= side] = 245
                        out[:, xs >= side] = 245
                        yield out

            tw.write(
                tiles(),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": 90},
                photometric="rgb",
                subfiletype=0 if level == 0 else 1,
                resolution=(1e4 / (MPP * f), 1e4 / (MPP * f)),
                resolutionunit="CENTIMETER",
            )
    os.replace(tmp, path)
    return path


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_read(slide, grid, batch_size: int, workers: int) -> float:
    t0 = time.perf_counter()
    n = 0
    for lo, hi, _, _ in iter_patch_batches(slide, grid, batch_size=batch_size, workers=workers):
        n += hi - lo
    return n / (time.perf_counter() - t0)


def bench_encode(encoder, sample: np.ndarray, dev: torch.device, batch_size: int, n: int) -> float:
    """Patches/s of preprocessing + forward on a batch already on the device."""
    reps = max(1, -(-batch_size // len(sample)))
    batch = torch.from_numpy(np.concatenate([sample] * reps)[:batch_size]).to(dev)
    encoder = encoder.to(dev).eval()
    cuda = dev.type == "cuda"
    if cuda and encoder.channels_last_ok:
        encoder = encoder.to(memory_format=torch.channels_last)
    if cuda and hasattr(encoder, "use_fused_attention"):
        encoder.use_fused_attention(True)  # PyTorch SDPA, as embed_slide does
    amp = None
    if cuda and encoder.autocast_ok:
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    torch.backends.cudnn.benchmark = cuda

    def step():
        x = encoder.preprocess(batch)
        if cuda and encoder.channels_last_ok:
            x = x.contiguous(memory_format=torch.channels_last)
        if amp is not None:
            with torch.autocast("cuda", dtype=amp):
                return encoder(x)
        return encoder(x)

    with torch.inference_mode():
        for _ in range(2 if cuda else 1):
            step()
        _sync(dev)
        steps = max(1, n // batch_size)
        t0 = time.perf_counter()
        for _ in range(steps):
            step().float()
        _sync(dev)
    return steps * batch_size / (time.perf_counter() - t0)


def bench_pipeline(
    slide, grid, encoder, dev, batch_size: int, workers: int, compile: bool = False
) -> float:
    t0 = time.perf_counter()
    feats = embed_slide(
        slide,
        grid,
        encoder,
        device=dev,
        batch_size=batch_size,
        workers=workers,
        compile=compile and dev.type == "cuda",
    )
    _sync(dev)
    return len(feats) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", type=Path, default=None, help="use this slide instead")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ghanet-bench",
        help="where the generated slide is kept between runs",
    )
    p.add_argument("--max-patches", type=int, default=None, help="embed only this many")
    p.add_argument("--devices", default=None, help="comma list (default: cpu and cuda if any)")
    p.add_argument("--encoders", default="morphometric,resnet50_trunc")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 cpu, 256 cuda")
    p.add_argument("--workers", type=int, default=None, help="reader threads (default: cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--compile", action="store_true", help="CUDA: torch.compile the network")
    args = p.parse_args(argv)

    if args.slide is None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        path = args.workdir / f"bench_{TEXTURE_PX}x{REPEAT}.tif"
        if not path.exists():
            t0 = time.perf_counter()
            print(f"writing the benchmark slide {path} ...", file=sys.stderr, flush=True)
            write_benchmark_slide(path)
            print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    else:
        path = args.slide
    devices = (
        args.devices.split(",")
        if args.devices
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    workers = args.workers or max(2, os.cpu_count() or 2)
    slide = open_slide(path)
    grid = patch_grid(slide, tissue_mask(slide))
    n_tissue = len(grid)
    if args.slide is None and n_tissue < 5000:
        print(f"error: only {n_tissue} tissue patches (< 5000)", file=sys.stderr)
        return 1
    if args.max_patches and args.max_patches < len(grid):
        pick = np.linspace(0, len(grid) - 1, args.max_patches).round().astype(int)
        grid = grid.select(np.unique(pick))
    sample = np.stack([grid.read(slide, i) for i in range(min(64, len(grid)))])
    info = {
        "slide": str(path),
        "slide_px": list(slide.dimensions),
        "tissue_patches": n_tissue,
        "patches_timed": len(grid),
        "workers": workers,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "note": "resnet50_trunc with random weights (speed does not depend on the values)",
        "results": [],
    }
    print(
        f"slide {path.name}: {slide.dimensions[0]}x{slide.dimensions[1]} px, "
        f"{n_tissue} tissue patches (256 px at 0.5 um/px); timing {len(grid)}; "
        f"{workers} reader threads; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; gpu: {info['gpu']}"
    )
    header = f"{'device':<6} {'encoder':<16} {'batch':>5} {'read':>9} {'encode':>9} {'pipeline':>9}  pipeline/min"
    print(header)
    print("-" * len(header))
    for dev_name in devices:
        dev = resolve_device(dev_name)
        bs = args.batch_size or (256 if dev.type == "cuda" else 64)
        read = bench_read(slide, grid, bs, workers)
        for name in args.encoders.split(","):
            enc = (
                create_encoder(name)
                if name in ("morphometric", "torchscript")
                else create_encoder(name, pretrained=False)
            )
            n_enc = min(len(grid), 4096 if dev.type == "cuda" else 256)
            enc_rate = bench_encode(enc, sample, dev, bs, max(n_enc, bs))
            pipe = bench_pipeline(slide, grid, enc, dev, bs, workers, args.compile)
            ratio = pipe / min(read, enc_rate)
            row = {
                "device": dev.type,
                "encoder": name,
                "batch_size": bs,
                "read_per_s": round(read, 1),
                "encode_per_s": round(enc_rate, 1),
                "pipeline_per_s": round(pipe, 1),
                "pipeline_over_slower": round(ratio, 3),
            }
            info["results"].append(row)
            print(
                f"{dev.type:<6} {name:<16} {bs:>5} {read:>9.1f} {enc_rate:>9.1f} {pipe:>9.1f}"
                f"  {ratio:.2f}",
                flush=True,
            )
            del enc
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    print("patches/s; 'encode' on a batch already on the device; resnet50 random weights")
    if args.json:
        args.json.write_text(json.dumps(info, indent=2))
    slide.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
