"""Cohort scaling on Dask: slides per second with 1 and 2 worker processes (1 torch thread
each) on the same generated cohort, the scheduling overhead per slide (a no-op task), and
each slide's stage costs (grid, encoding, writing) for projections.

Generates (once, in a temporary folder) ``--slides`` small H&E pyramids, starts a
``LocalCluster`` the way ``--cluster local:N`` does, warms every worker (imports, encoder
built), then times ``embed_task`` over the cohort with ``overwrite``. Targets on a 2-core
machine: 2 workers >= 1.7x one worker; overhead < 0.5 s per slide.

Usage::

    python benchmarks/cohort_scaling.py                       # 12 slides, morphometric
    python benchmarks/cohort_scaling.py --encoder resnet50_trunc --slides 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def noop(i):
    return {"status": "done", "n_patches": 0}


def main(argv=None) -> int:
    from conftest import he_image, write_pyramid
    from napari_ghanet.cohort.engine import available_cores, open_client, run_tasks
    from napari_ghanet.cohort.inputs import resolve_inputs
    from napari_ghanet.cohort.tasks import embed_task, encoder_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=12)
    ap.add_argument("--encoder", default="morphometric",
                    choices=["morphometric", "resnet50_trunc"])
    ap.add_argument("--size", type=int, nargs=2, default=(1536, 2048), metavar=("H", "W"))
    ap.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"])
    ap.add_argument("--noop-tasks", type=int, default=60)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ghanet-cohort-bench-"))
    src = tmp / "slides"
    src.mkdir()
    t0 = time.perf_counter()
    for i in range(args.slides + 2):  # two warm-up slides
        rgb, _ = he_image(*args.size, seed=i)
        write_pyramid(src / f"{'warm' if i < 2 else 'slide'}{i:03d}.tif", rgb, mpp=0.5)
    print(f"generated {args.slides} slides {args.size[1]}x{args.size[0]} px in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    items = resolve_inputs([src], notify=lambda s: None)
    warm, cohort = items[:2], items[2:]
    kwargs = {"patch_px": 256, "target_mpp": 0.5}
    if args.encoder == "resnet50_trunc":
        import torch
        from torchvision.models import resnet50

        torch.manual_seed(0)
        w = tmp / "resnet50-random.pth"
        torch.save(resnet50(weights=None).state_dict(), w)
        kwargs["weights"] = str(w)
    recipe = encoder_recipe(args.encoder, kwargs)  # what embed_cohort sends to the workers
    options = {"patch_px": 256, "target_mpp": 0.5, "device": "cpu", "workers": 2,
               "overwrite": True, "backend": args.backend}
    load = os.getloadavg()
    figures: dict = {"cores": available_cores(), "load_avg_1_5_15": [round(x, 2) for x in load],
                     "slides": args.slides, "backend": args.backend,
                     "encoder": args.encoder, "size": list(args.size)}
    for n in (1, 2):
        out = tmp / f"out{n}"
        with open_client(f"local:{n}", threads=1, say=lambda s: None) as client:
            run_tasks(embed_task, warm[:n] if n <= 2 else warm, args=(str(out), recipe, options),
                      client=client, progress=False)
            t = time.perf_counter()
            res = run_tasks(embed_task, cohort, args=(str(out), recipe, options),
                            client=client, progress=False)
            dt = time.perf_counter() - t
            assert all(r.status == "done" for r in res), [r.error for r in res]
            t = time.perf_counter()
            run_tasks(noop, range(args.noop_tasks), client=client, progress=False)
            overhead = (time.perf_counter() - t) / args.noop_tasks * n
        rows = [r.row for r in res]
        patches = sum(r["n_patches"] for r in rows)
        figures[f"workers_{n}"] = {
            "seconds": round(dt, 2), "slides_per_s": round(args.slides / dt, 3),
            "patches_per_s": round(patches / dt, 1),
            "noop_overhead_s_per_task": round(overhead, 4),
            "per_slide_s": {k: round(float(np.mean([r[k] for r in rows])), 4)
                            for k in ("t_grid", "t_embed", "t_write", "seconds")},
            "patches_per_slide": round(patches / len(rows), 1),
        }
        print(f"{n} worker(s): {args.slides / dt:.3f} slides/s, {patches / dt:.1f} patches/s, "
              f"no-op overhead {overhead * 1000:.1f} ms per task-slot; per slide "
              f"{figures[f'workers_{n}']['per_slide_s']}")
    s1 = figures["workers_1"]["slides_per_s"]
    s2 = figures["workers_2"]["slides_per_s"]
    figures["speedup_2_vs_1"] = round(s2 / s1, 2)
    print(f"speed-up 2 vs 1 worker: {s2 / s1:.2f}x (target >= 1.7x on 2 cores); scheduling "
          f"overhead {figures['workers_1']['noop_overhead_s_per_task'] * 1000:.1f} ms per "
          "slide (target < 500 ms)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
