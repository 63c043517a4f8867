"""Does the demo model's morphology attention follow nuclear density on a real slide?

Predicts the demo slide (the real CMU H&E slide) with the bundled demo model, then counts
nuclei in every patch independently of the model's encoder: haematoxylin optical density
from scikit-image's colour deconvolution, smoothed, and its local maxima above a stain
threshold counted per mm^2 of tissue. Prints the Spearman correlation between patch
attention and that density.

    python benchmarks/attention_nuclear_density.py [--slide PATH] [--model BUNDLE]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage as ndi
from scipy.stats import spearmanr
from skimage.color import rgb2hed
from skimage.feature import peak_local_max


def nuclear_density(rgb: np.ndarray, mpp: float) -> float:
    """Nuclei per mm^2 of tissue in an RGB uint8 patch (H, W, 3)."""
    hed = rgb2hed(rgb)
    h = ndi.gaussian_filter(hed[..., 0], sigma=1.5 / mpp)  # ~nucleus-sized smoothing
    tissue = rgb.astype(float).mean(-1) < 220
    if tissue.mean() < 0.05:
        return 0.0
    thr = np.percentile(hed[..., 0][tissue], 75)
    peaks = peak_local_max(h, min_distance=max(1, int(3.0 / mpp)), threshold_abs=thr)
    area_mm2 = tissue.sum() * (mpp / 1000.0) ** 2
    return len(peaks) / area_mm2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slide", default=None)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    from napari_ghanet.datasets.demo import demo_slide_path
    from napari_ghanet.inference.predict import predict_slide
    from napari_ghanet.io.slide import open_slide
    from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

    slide_path = args.slide or demo_slide_path()
    bundle = load_bundle(args.model or demo_bundle_path())
    pred = predict_slide(slide_path, bundle, device="cpu", use_cache=False)
    slide = open_slide(slide_path)
    size = int(pred.patch_size_level0)
    dens = np.array(
        [nuclear_density(slide.read_region((int(x), int(y)), 0, (size, size)), slide.mpp)
         for x, y in pred.coords]
    )
    att = np.asarray(pred.morphology_attention)
    rho, p = spearmanr(att, dens)
    print(f"slide: {slide_path}")
    print(f"patches: {len(att)}; nuclear density median {np.median(dens):.0f} /mm^2 "
          f"(IQR {np.percentile(dens, 25):.0f}-{np.percentile(dens, 75):.0f})")
    print(f"Spearman rho(morphology attention, nuclear density) = {rho:.3f} (p = {p:.2g})")
    top = np.argsort(att)[::-1][: max(1, len(att) // 10)]
    print(f"nuclear density of the top-10% attention patches: {np.median(dens[top]):.0f} /mm^2 "
          f"vs all patches {np.median(dens):.0f} /mm^2")


if __name__ == "__main__":
    main()
