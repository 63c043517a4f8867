"""Shared helpers of the plugin tests: small random-weight model bundles and slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_ghanet.models.bundle import save_bundle
from napari_ghanet.models.ghanet import GHANet, GHANetConfig

#: genes per category of the small test models
SIZES = (4, 6, 5, 3, 7, 4)
CATEGORIES = ("Tumor Suppression", "Oncogenesis", "Protein Kinases", "Cellular Differentiation",
              "Transcription", "Cytokines and Growth")
MORPHOMETRIC_DIM = 64
#: the encoder spec of the fast test bundles: morphometric, 64 px patches at 2 um/px (the
#: CLAM field of view, 128 um, at 1/16 of the pixels)
FAST_ENCODER = {"name": "morphometric", "dim": MORPHOMETRIC_DIM, "patch_px": 64,
                "target_mpp": 2.0}


def small_model(input_dim: int = MORPHOMETRIC_DIM, seed: int = 0) -> GHANet:
    torch.manual_seed(seed)
    return GHANet(
        GHANetConfig(omic_sizes=SIZES, input_dim=input_dim, width=32, heads=2, dim_head=16,
                     gate_dim=16, compress_dim=8, ffn_mult=2, dropout=0.0)
    ).eval()


def bundle_metadata(encoder: dict | None = None, **over) -> dict:
    meta = {
        "name": "test-ghanet",
        "encoder": encoder or {"name": "morphometric", "dim": MORPHOMETRIC_DIM,
                               "patch_px": 256, "target_mpp": 0.5},
        "categories": [
            {"name": name, "genes": [f"GENE{i}{j}" for j in range(s)]}
            for i, (name, s) in enumerate(zip(CATEGORIES, SIZES))
        ],
        "genomic_stats": {"mean": [[0.0] * s for s in SIZES], "std": [[1.0] * s for s in SIZES]},
        "survival_bins_months": [0.0, 12.0, 24.0, 48.0, 120.0],
        "risk_quantiles": {"probs": np.linspace(0, 1, 11).tolist(),
                           "values": np.linspace(-4.0, 0.0, 11).tolist()},
        "risk_groups": {"cutpoints": [-2.6667, -1.3333], "labels": ["low", "intermediate", "high"]},
        "provenance": {"data": "random weights for tests"},
        "intended_use": "Test model with random weights: for software tests only.",
    }
    meta.update(over)
    return meta


def make_bundle(path: Path, input_dim: int = MORPHOMETRIC_DIM, seed: int = 0, **meta) -> Path:
    """A small random-weight G-HANet bundle for the morphometric encoder (by default)."""
    return save_bundle(path, small_model(input_dim, seed), bundle_metadata(**meta))


def write_tiff_slide(path: Path, rgb: np.ndarray, mpp: float | None = 0.5, levels: int = 3,
                     tile: int = 128) -> Path:
    """A tiled pyramidal RGB TIFF (SubIFD pyramid, resolution tags in um when mpp is given)."""
    import tifffile
    from skimage.transform import downscale_local_mean

    kw = {}
    if mpp is not None:
        kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(tile, tile), photometric="rgb", subifds=levels - 1, **kw,
                  compression="zlib")
        level = rgb
        for i in range(1, levels):
            level = downscale_local_mean(level, (2, 2, 1)).astype(np.uint8)
            sub_kw = {}
            if mpp is not None:
                f = 2**i
                sub_kw = {"resolution": (1e4 / (mpp * f), 1e4 / (mpp * f)),
                          "resolutionunit": "CENTIMETER"}
            tif.write(level, tile=(tile, tile), photometric="rgb", subfiletype=1,
                      compression="zlib", **sub_kw)
    return path


def tissue_rgb(h: int = 1024, w: int = 1536, seed: int = 0) -> np.ndarray:
    """An H&E-like RGB image: a pink tissue blob with purple nuclei on white glass."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 245, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((yy - h / 2) / (h * 0.38)) ** 2 + ((xx - w / 2) / (w * 0.36)) ** 2 < 1
    img[blob] = (225, 150, 190)
    n = int(blob.sum() / 400)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    keep = blob[ys, xs]
    for y, x in zip(ys[keep], xs[keep]):
        img[max(0, y - 3): y + 4, max(0, x - 3): x + 4] = (110, 60, 150)
    return img


def need(module: str):
    """Import an optional package a test needs: skipped where it is not installed, but a
    failure in CI (``CI`` set), where the test extra installs it and nothing the product
    needs may be skipped silently."""
    import importlib
    import os

    import pytest

    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def small_vit(seed: int = 3):
    """A two-block timm ViT (48-d, 64 px input) with seeded random weights, in eval mode:
    small enough to export, quantize and run in a test."""
    import torch

    from napari_ghanet.encoders.timm_models import TimmArchEncoder

    enc = TimmArchEncoder(
        "vit_tiny_patch16_224",
        model_args={"depth": 2, "embed_dim": 48, "num_heads": 2, "img_size": 64},
        input_size=64,
        pretrained=False,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return enc.eval()


def run_predict_cli(argv: list[str]) -> int:
    """Parse and run ``ghanet predict ARGV`` as ``ghanet`` does (add_parser, then
    args.func(args)); returns the exit code."""
    import argparse

    from napari_ghanet.cli import predict as cli_predict

    parser = argparse.ArgumentParser(prog="ghanet")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_predict.add_parser(sub)
    args = parser.parse_args(["predict", *argv])
    return args.func(args)


def write_test_cache(folder: Path, slide, grid, spec: dict):
    """A feature cache for ``slide``'s ``grid`` (seeded random 8-d features, the encoder
    ``spec``) written where and how the pipeline writes one; returns (path, features)."""
    from napari_ghanet.io.features import (
        PatchFeatures,
        cached_features_path,
        grid_key,
        save_features,
    )

    path = cached_features_path(folder, slide, spec, grid)
    feats = PatchFeatures(
        np.random.default_rng(0).normal(size=(len(grid), 8)).astype(np.float32),
        grid.coords,
        {"encoder_spec": spec, "slide_fingerprint": slide.fingerprint(),
         "grid_key": grid_key(grid), **grid.geometry()},
    )
    save_features(path, feats)
    return path, feats
