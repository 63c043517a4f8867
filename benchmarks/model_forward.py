"""Forward time and peak memory of G-HANet (paper config) for large bags.

Each bag size runs in a fresh process so peak memory is not polluted by earlier runs.
CPU peak memory is the growth of the process's peak resident set during the forward;
CUDA peak memory is torch.cuda.max_memory_allocated.

    python benchmarks/model_forward.py [--sizes 10000 50000 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def run_one(n: int, device: str, repeats: int) -> dict:
    import torch

    from napari_ghanet.models.ghanet import GHANet, GHANetConfig

    torch.manual_seed(0)
    model = GHANet(GHANetConfig(omic_sizes=(100, 200, 300, 400, 500, 600))).eval().to(device)
    x = torch.randn(n, 1024, device=device)
    with torch.inference_mode():
        model.forward_bag(x[:1000])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = _rss_peak_mb()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.forward_bag(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        assert torch.isfinite(out.risk)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _rss_peak_mb() - base + x.numel() * 4 / 2**20
    return {"n": n, "device": device, "seconds": min(times), "peak_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print(json.dumps(run_one(int(args._one[0]), args._one[1], args.repeats)))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{'device':<6} {'patches':>8} {'forward s':>10} {'peak MB':>9} {'us/patch':>9}")
    for device in devices:
        for n in args.sizes:
            res = subprocess.run(
                [sys.executable, __file__, "--repeats", str(args.repeats), "--_one", str(n), device],
                capture_output=True, text=True, check=True,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{device:<6} {n:>8} {r['seconds']:>10.3f} {r['peak_mb']:>9.0f} "
                  f"{1e6 * r['seconds'] / n:>9.2f}")
    print("peak MB includes the input bag (N x 1024 float32); the 4 GB budget is for N = 100,000")


if __name__ == "__main__":
    main()
