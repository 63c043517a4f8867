"""How close the preliminary risk is to the final one, and how soon it comes.

Runs ``predict_slide`` with a preliminary-risk estimator that answers when 5 %, 10 % and
25 % of the patches are embedded (the same estimator the dock and ``ghanet predict
--progressive`` use, there on a time budget instead), then the exact answer, and prints:

* a cohort of generated slides (``datasets.synthetic``, pathway activities drawn at
  random, so risks spread): per fraction, Spearman's rank correlation of the preliminary
  with the final risks, the share of slides whose preliminary risk group equals the
  final one, the median |risk difference|, how often the bootstrap interval holds the
  final risk, and the seconds to that answer against the whole run;
* optionally the real-size slide of ``benchmarks/whole_slide.py`` (``--whole-slide``):
  the same per fraction, with times.

The model is the bundled demonstration model (trained on generated slides of the same
kind, so its risks mean something here); ``--model`` takes another bundle (with
``--encoder-weights`` when its encoder needs them). Target (issue 17): the preliminary
risk group equals the final one for >= 90 % of generated slides at 25 % of the patches.

Usage::

    python benchmarks/progressive.py [--slides 20] [--side 10240] [--whole-slide]
                                     [--fractions 0.05 0.1 0.25] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def bench_dir() -> Path:
    d = Path(os.environ.get("GHANET_BENCH_DIR", "/tmp/ghanet-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def cohort_slides(n: int, side: int, seed: int = 0) -> list[Path]:
    """``n`` generated slides of ``side`` px at 0.5 um/px (cached in the bench folder)."""
    from napari_ghanet.datasets.synthetic import write_synthetic_slide

    rng = np.random.default_rng(seed)
    activities = rng.uniform(0.0, 1.0, size=(n, 6))
    out = []
    folder = bench_dir() / f"progressive-cohort-{side}"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        path = folder / f"slide{i:03d}.tif"
        if not path.exists():
            t = time.perf_counter()
            write_synthetic_slide(path, (side, side), mpp=0.5, seed=1000 + i,
                                  activity=activities[i].tolist(), tissue_fraction=0.5)
            print(f"  wrote {path.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        out.append(path)
    return out


def run_slide(path: Path, bundle, fractions, *, device: str = "cpu", batch_size: int = 64,
              weights=None) -> dict:
    """One slide: the estimates at ``fractions`` and the final answer."""
    from napari_ghanet.inference.predict import predict_slide
    from napari_ghanet.inference.progressive import ProgressiveEstimator

    @dataclass
    class AtFractions(ProgressiveEstimator):
        targets: tuple = (0.05, 0.1, 0.25)
        passed: float = 0.0

        def due(self, fraction: float, n_blocks_done: int) -> bool:
            # one estimate as soon as a target is passed (several targets may be passed
            # in one batch: each then gets this same estimate)
            left = [t for t in self.targets if t > self.passed]
            if left and fraction >= left[0] and n_blocks_done >= 1 and fraction < 1:
                self.passed = fraction
                return True
            return False

    got = []
    est = AtFractions(bundle, got.append, device=device, targets=tuple(fractions))
    kw = {"weights": weights} if weights else {}
    t = time.perf_counter()
    p = predict_slide(path, bundle, device=device, use_cache=False, batch_size=batch_size,
                      preliminary=est, **kw)
    total = time.perf_counter() - t
    prelim = [g for g in got if not g.final]
    # for each target, the first estimate made at or past it
    picked = []
    for t in fractions:
        later = [g for g in prelim if g.fraction >= t]
        if later:
            picked.append(later[0])
    return {
        "slide": path.name,
        "n_patches": int(p.n_patches),
        "final_risk": float(p.risk),
        "final_group": p.risk_group,
        "seconds_total": round(total, 2),
        "estimates": [g.to_dict() for g in picked],
        "overhead_s": round(est.overhead_seconds, 3),
    }


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def summarise(rows: list[dict], fractions) -> list[dict]:
    """Per fraction: rank correlation, group agreement, |diff|, interval coverage, time."""
    out = []
    for k, f in enumerate(fractions):
        have = [r for r in rows if len(r["estimates"]) > k]
        if not have:
            continue
        pre = np.array([r["estimates"][k]["risk"] for r in have])
        fin = np.array([r["final_risk"] for r in have])
        agree = np.mean([r["estimates"][k]["group"] == r["final_group"] for r in have])
        cover = np.mean([r["estimates"][k]["low"] <= r["final_risk"] <= r["estimates"][k]["high"]
                         for r in have])
        actual = np.median([r["estimates"][k]["fraction"] for r in have])
        sec = np.median([r["estimates"][k]["seconds"] for r in have])
        tot = np.median([r["seconds_total"] for r in have])
        out.append({
            "fraction": f, "actual_fraction": float(actual), "slides": len(have),
            "spearman": spearman(pre, fin) if len(have) > 2 else float("nan"),
            "group_agreement": float(agree), "median_abs_diff": float(np.median(np.abs(pre - fin))),
            "interval_coverage": float(cover), "median_seconds": float(sec),
            "median_total_seconds": float(tot),
        })
    return out


def print_table(title: str, summary: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'fraction':>9} {'slides':>6} {'spearman':>9} {'group agree':>12} "
          f"{'|d risk| med':>13} {'interval holds':>15} {'s to answer':>12} {'s total':>8}")
    for s in summary:
        print(f"{s['actual_fraction']:>9.3f} {s['slides']:>6d} {s['spearman']:>9.3f} "
              f"{100 * s['group_agreement']:>11.0f}% {s['median_abs_diff']:>13.4f} "
              f"{100 * s['interval_coverage']:>14.0f}% {s['median_seconds']:>12.1f} "
              f"{s['median_total_seconds']:>8.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=20, help="generated slides (default 20)")
    ap.add_argument("--side", type=int, default=10240,
                    help="generated slide side in px at 0.5 um/px (default 10240)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25])
    ap.add_argument("--whole-slide", action="store_true",
                    help="also the real-size slide of benchmarks/whole_slide.py")
    ap.add_argument("--model", type=Path, default=None, help="model bundle (default: demo)")
    ap.add_argument("--encoder-weights", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=16,
                    help="encoder batch (default 16, one block: estimates close to each "
                         "fraction)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = ap.parse_args(argv)

    import torch

    from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    bundle = load_bundle(args.model or demo_bundle_path())
    fractions = sorted(args.fractions)
    print(f"model {bundle.name!r} (encoder {bundle.encoder.name}); {os.cpu_count()} cores; "
          "no GPU", file=sys.stderr)
    result: dict = {"model": bundle.name, "fractions": fractions}
    if args.slides > 0:
        rows = []
        for path in cohort_slides(args.slides, args.side):
            r = run_slide(path, bundle, fractions, batch_size=args.batch_size,
                          weights=args.encoder_weights)
            rows.append(r)
            est = ", ".join(f"{e['fraction']:.2f}:{e['risk']:.3f}/{e['group'][0]}"
                            for e in r["estimates"])
            print(f"  {r['slide']}: {r['n_patches']} patches, final {r['final_risk']:.3f}/"
                  f"{r['final_group'][0]}; {est}; {r['seconds_total']:.1f} s", file=sys.stderr)
        summary = summarise(rows, fractions)
        result["cohort"] = {"side_px": args.side, "rows": rows, "summary": summary}
        print_table(f"generated cohort: {len(rows)} slides of {args.side} px at 0.5 um/px, "
                    f"median {int(np.median([r['n_patches'] for r in rows]))} patches",
                    summary)
        finals = [r["final_group"] for r in rows]
        print("final groups: " + ", ".join(f"{g} {finals.count(g)}" for g in
                                           ("low", "intermediate", "high")))
        at25 = [s for s in summary if abs(s["fraction"] - 0.25) < 1e-9]
        if at25:
            ok = at25[0]["group_agreement"] >= 0.9
            print(f"target: group agreement at 25 % >= 90 %: "
                  f"{100 * at25[0]['group_agreement']:.0f}% -> {'met' if ok else 'NOT met'}")
    if args.whole_slide:
        sys.path.insert(0, str(HERE))
        from whole_slide import build_whole_slide

        path = build_whole_slide()
        r = run_slide(path, bundle, fractions, batch_size=args.batch_size,
                      weights=args.encoder_weights)
        result["whole_slide"] = r
        print(f"\nreal-size slide {path.name}: {r['n_patches']} patches, final risk "
              f"{r['final_risk']:.4f} ({r['final_group']}), {r['seconds_total']:.1f} s in all, "
              f"preliminary updates {r['overhead_s']:.1f} s")
        for e in r["estimates"]:
            print(f"  {100 * e['fraction']:5.1f} % after {e['seconds']:6.1f} s: risk "
                  f"{e['risk']:.4f} [{e['low']:.4f}, {e['high']:.4f}] {e['group']} "
                  f"(support {100 * e['group_support']:.0f} %), diff {e['risk'] - r['final_risk']:+.4f}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
