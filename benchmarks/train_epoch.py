"""Epoch time of the batched trainer vs a one-bag-per-step loop, same effective batch.

Both train the same G-HANet (same initial weights, same seeded patient order and patch
draws) on fold 0 of a synthetic feature cohort with gradient accumulation over 32 bags;
the only difference is the micro-batch: the trainer's default (16 padded bags per forward
pass, bags of similar size together within each group of 32), or one bag per forward pass
(the paper code's loop). Prints the median epoch time of each, the speed-up,
and the held-out c-index and training loss after the same number of epochs to show the
results agree (they differ only by dropout draws).

With ``--models``, instead: the median seconds per epoch of each named model (the
comparison models, G-HANet's ablations, the baselines) on the same fold, with the sizes of
:data:`napari_ghanet.training.compare.SYNTH_MODEL_CONFIG` and the trainer's defaults.

    python benchmarks/train_epoch.py [--epochs 20] [--patients 400] [--device cpu]
    python benchmarks/train_epoch.py --models ghanet amil deepattnmisl transmil mcat \
        survpath ghanet-no-recon ghanet-no-genome ghanet-no-hyper snn abmil_snn --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from napari_ghanet.training.cohort import FeatureStore, read_cohort, read_splits, resolve_fold
from napari_ghanet.training.compare import SYNTH_MODEL_CONFIG
from napari_ghanet.training.cv import RunConfig, prepare_fold
from napari_ghanet.training.metrics import harrell_c_index
from napari_ghanet.training.synth import SYNTH_RECIPE, SynthConfig, write_synthetic_cohort
from napari_ghanet.training.trainer import (
    TrainConfig,
    predict,
    resolve_device,
    seed_everything,
    train_epoch,
)

from napari_ghanet.models.baselines import build_model


def run(setup, model_config, batch_size: int, epochs: int, device: torch.device,
        name: str = "ghanet") -> dict:
    seed_everything(0)
    model = build_model(name, **model_config).to(device)
    cfg = TrainConfig(batch_size=batch_size, accumulation=32, lr=SYNTH_RECIPE["train"]["lr"],
                      device=str(device))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(0)
    times, losses = [], []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        stats = train_epoch(model, setup.train, opt, cfg, rng, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(stats["train_loss"])
    p = predict(model, setup.test, cfg, device)
    c = harrell_c_index(setup.test.times, setup.test.c == 0, p["risk"])
    return {"epoch_s": statistics.median(times), "times": times, "loss": losses[-1], "c_index": c}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patients", type=int, default=400)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--models", nargs="+", default=None,
                    help="time these models instead (seconds per epoch each)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_cohort(Path(tmp), SynthConfig(patients=args.patients))
        cohort = read_cohort(paths["cohort"], paths["signatures"])
        features = FeatureStore(cohort, paths["features"])
        fold = resolve_fold(cohort, read_splits(paths["splits"])[0], features)
        if args.models:
            per_model(args, cohort, fold, features, device)
            return
        cfg = RunConfig(model="ghanet", cohort="", signatures="", splits="",
                        model_config=SYNTH_RECIPE["model_config"]["ghanet"])
        setup = prepare_fold(cohort, fold, cfg, features)
        for i in range(len(setup.train)):  # read every bag once: time the training only
            setup.train.bag(i)
        sizes = [len(setup.train.bag(i)) for i in range(len(setup.train))]
        print(f"device {device}, torch threads {torch.get_num_threads()}, "
              f"{len(setup.train)} training bags of {min(sizes)}-{max(sizes)} patches "
              f"({setup.model_config['input_dim']}-d), {len(setup.test)} held-out, "
              f"G-HANet width {setup.model_config['width']}, accumulation 32, {args.epochs} epochs")
        batched = run(setup, setup.model_config, TrainConfig().batch_size, args.epochs, device)
        per_bag = run(setup, setup.model_config, 1, args.epochs, device)
    print(f"{'trainer':<28}{'epoch (s)':>10}{'train loss':>12}{'held-out c':>12}")
    label = f"batched ({TrainConfig().batch_size} bags/forward)"
    for name, r in ((label, batched), ("one bag per step", per_bag)):
        print(f"{name:<28}{r['epoch_s']:>10.2f}{r['loss']:>12.4f}{r['c_index']:>12.4f}")
    print(f"speed-up: {per_bag['epoch_s'] / batched['epoch_s']:.1f}x")


def per_model(args, cohort, fold, features, device) -> None:
    """Median seconds per epoch of each model on fold 0 (bags read once beforehand)."""
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.epochs} epochs, "
          f"batch size {TrainConfig().batch_size}, accumulation 32")
    print(f"{'model':<20}{'epoch (s)':>10}{'train loss':>12}{'held-out c':>12}")
    for name in args.models:
        cfg = RunConfig(model=name, cohort="", signatures="", splits="",
                        model_config=SYNTH_MODEL_CONFIG)
        setup = prepare_fold(cohort, fold, cfg, features)
        if setup.train.bag is not None:
            for i in range(len(setup.train)):  # read every bag (and clusters) once
                setup.train.bag(i)
                if setup.train.clusters is not None:
                    setup.train.clusters(i)
        r = run(setup, setup.model_config, TrainConfig().batch_size, args.epochs, device, name)
        print(f"{name:<20}{r['epoch_s']:>10.2f}{r['loss']:>12.4f}{r['c_index']:>12.4f}", flush=True)


if __name__ == "__main__":
    main()
