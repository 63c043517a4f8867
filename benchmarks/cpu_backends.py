"""CPU backends side by side: torch eager vs ONNX Runtime, patches per second.

For ``resnet50_trunc`` (batch 32, 256 px patches) and a ViT-L/16 (UNI's architecture,
224 px input), both with random weights (speed does not depend on the values): the
encoder's ``encode()`` in torch eager and through :func:`wrap_for_cpu` (ONNX Runtime,
fp32, exported once and cached), on the same uint8 batch, and the maximum absolute
difference of their features. Threads: torch's (``torch.get_num_threads()``), also used
by ONNX Runtime. Target: ONNX Runtime >= 2x torch eager on resnet50_trunc.

Usage::

    python benchmarks/cpu_backends.py                  # resnet50_trunc + a short ViT-L run
    python benchmarks/cpu_backends.py --vit-batch 8 --repeats 3 --json cpu.json
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
from napari_ghanet.encoders.onnx_backend import wrap_for_cpu


def _rate(fn, batch: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn(batch)  # warm-up (and, for ONNX, export + session creation)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(batch)
    return repeats * len(batch) / (time.perf_counter() - t0), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="resnet50_trunc batch (32)")
    p.add_argument("--vit-batch", type=int, default=4, help="ViT-L/16 batch (4; 0 skips it)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", type=Path, default=None, help="ONNX cache (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="ghanet-onnx-"))
    rng = np.random.default_rng(0)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "results": [],
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores,"
        f" load average {load}"
    )
    header = (
        f"{'encoder':<16} {'batch':>5} {'torch /s':>9} {'onnx /s':>9} {'ratio':>6} {'max|d|':>9}"
    )
    print(header)
    print("-" * len(header))
    cases = [("resnet50_trunc", args.batch, 256)]
    if args.vit_batch > 0:
        cases.append(("vit_large (UNI)", args.vit_batch, 256))
    for label, bs, side in cases:
        if label == "resnet50_trunc":
            enc = create_encoder("resnet50_trunc", pretrained=False)
        else:
            from napari_ghanet.encoders.timm_models import create_timm_encoder

            enc = create_timm_encoder("uni", pretrained=False)
        batch = torch.from_numpy(rng.integers(0, 256, (bs, side, side, 3), dtype=np.uint8))
        t0 = time.perf_counter()
        fast = wrap_for_cpu(enc, "onnx", cache_dir=cache)
        fast.encode(batch[:2])
        export_s = time.perf_counter() - t0
        reps = args.repeats if label == "resnet50_trunc" else 1
        torch_rate, ref = _rate(enc.encode, batch, reps)
        onnx_rate, out = _rate(fast.encode, batch, reps)
        diff = float((out - ref).abs().max())
        row = {
            "encoder": label,
            "batch": bs,
            "torch_per_s": round(torch_rate, 2),
            "onnx_per_s": round(onnx_rate, 2),
            "ratio": round(onnx_rate / torch_rate, 2),
            "max_abs_diff": diff,
            "export_and_first_run_s": round(export_s, 1),
        }
        info["results"].append(row)
        print(
            f"{label:<16} {bs:>5} {torch_rate:>9.1f} {onnx_rate:>9.1f} "
            f"{onnx_rate / torch_rate:>5.2f}x {diff:>9.2e}",
            flush=True,
        )
        del enc, fast
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"fp32, random weights; load average at end {info['load_average_at_end']}")
    if args.json:
        args.json.write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
