"""Cross-validated training and honest evaluation of one model on a cohort.

For each split: everything fitted from data (survival bin edges, genomic scaling,
reconstruction gene masks) is fitted on that fold's training patients only, each patient
once; the model is trained with the recipe of :class:`training.trainer.TrainConfig`; the
held-out patients are scored by the model at the end of training (or at the epoch chosen
on an inner validation split of the training patients). The held-out c-index of every
epoch is also recorded, and its maximum is reported as the *optimistic* figure the
paper's code gives, never used for selection.

Each finished fold is written atomically (``fold_K.safetensors`` weights + preprocessing,
``fold_K.json`` predictions and history); ``resume=True`` keeps them and runs the rest.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from napari_ghanet.training import metrics as M
from napari_ghanet.training.calibration import write_calibration
from napari_ghanet.training.cohort import (
    Cohort,
    CohortError,
    FeatureStore,
    FoldData,
    category_columns,
    describe,
    read_cohort,
    read_signatures,
    read_splits,
    resolve_fold,
)
from napari_ghanet.training.labels import (
    GenomicScaler,
    discretize,
    reconstruction_masks,
    survival_bin_edges,
)
from napari_ghanet.training.trainer import (
    SurvivalData,
    TrainConfig,
    fit,
    predict,
    seed_everything,
)

from napari_ghanet._version import __version__
from napari_ghanet.device import resolve_device
from napari_ghanet.errors import TrainingError
from napari_ghanet.io.atomic import atomic_path
from napari_ghanet.models.baselines import (
    MODEL_NAMES,
    build_model,
    is_ghanet,
    known_model,
    model_inputs,
)

__all__ = ["RunConfig", "FoldSetup", "prepare_fold", "run_cv", "run_cv_many", "fold_task",
           "load_fold_checkpoint", "RunError"]

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
_FOLD_HEADER_KEY = "ghanet_fold"


RunError = TrainingError


@dataclass
class RunConfig:
    """Everything that defines a cross-validated run (saved as ``run.json``).

    model_config: overrides of the model's config fields (e.g. width, dropout); the data
    sizes (input_dim, omic_sizes, omic_dim) are filled in per fold.
    inner_val: fraction of each fold's training patients held out as inner validation
    (0 = none); needed for ``train.selection == "inner"``.
    pathways: SurvPath's pathway gene sets (a signatures-format CSV, one column per
    pathway, matched to the table's ``_rnaseq`` columns); None = the cohort's categories.
    """

    model: str
    cohort: str
    signatures: str
    splits: str
    features: str | None = None
    recon_genes: str = "significant"
    p_threshold: float = 0.05
    n_bins: int = 4
    inner_val: float = 0.0
    allow_missing: bool = False
    folds: list[int] | None = None
    cache_gb: float = 4.0
    pathways: str | None = None
    model_config: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d)
        d["train"] = TrainConfig(**d.get("train", {}))
        return cls(**d)


# Settings that change results; a resumed run must match them.
_RESULT_KEYS = (
    "model", "recon_genes", "p_threshold", "n_bins", "inner_val", "allow_missing",
    "model_config", "train", "pathways",
)


@dataclass
class FoldSetup:
    """A fold ready to train: data sets, fitted preprocessing and the model config."""

    fold: FoldData
    train: SurvivalData
    test: SurvivalData
    inner: SurvivalData | None
    bin_edges: np.ndarray
    scaler: GenomicScaler
    recon_masks: list[np.ndarray]
    recon_genes: list[list[str]]
    model_config: dict
    n_fit: int


def _stratified_holdout(y: np.ndarray, c: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool mask of ~fraction of patients, stratified by (bin, censorship)."""
    rng = np.random.default_rng(seed)
    hold = np.zeros(len(y), bool)
    for key in sorted(set(zip(y.tolist(), c.tolist()))):
        members = np.flatnonzero((y == key[0]) & (c == key[1]))
        k = int(round(len(members) * fraction))
        if k:
            hold[rng.choice(members, k, replace=False)] = True
    return hold


def prepare_fold(
    cohort: Cohort,
    fold: FoldData,
    cfg: RunConfig,
    features: FeatureStore | None,
) -> FoldSetup:
    """Fit bins, scaling and gene masks on the fold's training patients; build the data."""
    train_idx = fold.train
    inner_idx = np.zeros(0, np.int64)
    if cfg.inner_val > 0:
        edges0 = survival_bin_edges(cohort.months[train_idx], cohort.censorship[train_idx], cfg.n_bins)
        y0 = discretize(cohort.months[train_idx], edges0)
        hold = _stratified_holdout(y0, cohort.censorship[train_idx], cfg.inner_val, cfg.train.seed)
        inner_idx, train_idx = train_idx[hold], train_idx[~hold]

    months, cens = cohort.months, cohort.censorship
    edges = survival_bin_edges(months[train_idx], cens[train_idx], cfg.n_bins)
    scaler = GenomicScaler.fit(cohort.genomics[train_idx])
    omics_all = None

    def omics_of(idx):
        nonlocal omics_all
        if omics_all is None:
            omics_all = scaler.transform(cohort.genomics)
        return omics_all[idx]

    y_train = discretize(months[train_idx], edges)
    # Only G-HANet reconstructs genomics; the others need no gene selection.
    masks, _ = reconstruction_masks(
        omics_of(train_idx), cohort.category_index, y_train, cens[train_idx],
        mode=cfg.recon_genes if is_ghanet(cfg.model) else "all",
        p_threshold=cfg.p_threshold, n_bins=cfg.n_bins,
    )
    recon_cols = [ix[m] for ix, m in zip(cohort.category_index, masks)]
    recon_genes = [
        [cols[j] for j in np.flatnonzero(m)] for cols, m in zip(cohort.category_columns, masks)
    ]
    uses = model_inputs(cfg.model)
    groups = omic_groups(cohort, cfg)  # per-token column groups of MCAT / SurvPath
    ghanet = is_ghanet(cfg.model)

    def make(idx) -> SurvivalData:
        om = omics_of(idx)
        if groups is not None:
            om = np.ascontiguousarray(np.concatenate([om[:, g] for g in groups], axis=1))
        return SurvivalData(
            ids=[cohort.case_ids[i] for i in idx],
            y=discretize(months[idx], edges),
            c=cens[idx].astype(np.int64),
            times=months[idx].astype(np.float64),
            omics=om if "omics" in uses else None,
            targets=[np.ascontiguousarray(om[:, cols]) for cols in recon_cols] if ghanet else None,
            bag=(lambda i, _idx=idx: features.bag(int(_idx[i]))) if "wsi" in uses else None,
            sizes=np.array([features.bag_size(i) for i in idx], np.int64) if "wsi" in uses else None,
            clusters=(lambda i, _idx=idx: features.clusters(int(_idx[i]), n_clusters))
            if "clusters" in uses else None,
        )

    model_config = config_for_model(cfg.model_config, cfg.model)
    n_clusters = int(model_config.get("num_clusters", 10))
    if "wsi" in uses:
        if features is None:
            raise CohortError(f"model {cfg.model} reads slides: give --features DIR")
        model_config["input_dim"] = features.feature_dim
    if groups is not None:
        model_config["omic_sizes"] = [len(g) for g in groups]
    elif "omics" in uses:
        model_config["omic_dim"] = int(cohort.genomics.shape[1])
    if ghanet:
        model_config["omic_sizes"] = [int(m.sum()) for m in masks]
        model_config.setdefault("num_tokens", len(masks))
    model_config.setdefault("n_bins", cfg.n_bins)
    return FoldSetup(
        fold=fold,
        train=make(train_idx),
        test=make(fold.test),
        inner=make(inner_idx) if len(inner_idx) else None,
        bin_edges=edges,
        scaler=scaler,
        recon_masks=masks,
        recon_genes=recon_genes,
        model_config=model_config,
        n_fit=len(train_idx),
    )


def config_for_model(model_config: dict, model: str) -> dict:
    """The overrides of ``model``: keys that name a model hold that model's own overrides
    (``{"ghanet": {"width": 64}, "amil": {"hidden": 128}}``; G-HANet's variants use
    ``ghanet``'s unless named themselves); other keys apply to every model."""
    shared = {k: v for k, v in model_config.items() if not known_model(k)}
    own = model_config.get(model)
    if own is None and is_ghanet(model):
        own = model_config.get("ghanet")
    if own is not None and not isinstance(own, dict):
        raise RunError(f"--model-config entry {model!r} must be a JSON object")
    return {**shared, **(own or {})}


def omic_groups(cohort: Cohort, cfg: RunConfig) -> list[np.ndarray] | None:
    """Column groups (indices into the genomic table) of the multimodal models' genomic
    tokens: MCAT's 6 categories; SurvPath's pathways (``cfg.pathways``) or categories.
    None for models without genomic tokens."""
    if cfg.model not in ("mcat", "survpath"):
        return None
    if cfg.model == "survpath" and cfg.pathways:
        sets = read_signatures(cfg.pathways)
        cols = category_columns(cohort.gene_columns, sets)
        where = {g: j for j, g in enumerate(cohort.gene_columns)}
        groups = [np.array([where[c] for c in cs], np.int64) for cs in cols if cs]
        if not groups:
            raise CohortError(
                f"no pathway of {cfg.pathways} matches a genomic column of the cohort table: "
                "its genes must appear as <GENE>_rnaseq columns"
            )
        return groups
    groups = [np.asarray(ix, np.int64) for ix in cohort.category_index if len(ix)]
    if not groups:
        raise CohortError(f"model {cfg.model} needs genomic categories: none has a column")
    return groups


def _atomic_save_safetensors(path: Path, state: dict, header: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_FOLD_HEADER_KEY: json.dumps(header)})


def load_fold_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """A fold's model (eval mode) and its preprocessing header (model name and config,
    bin edges, gene names and scaling of the reconstructed genes...)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if _FOLD_HEADER_KEY not in meta:
        raise RunError(f"{path} is not a fold checkpoint of ghanet-train")
    header = json.loads(meta[_FOLD_HEADER_KEY])
    model = build_model(header["model"], **header["model_config"])
    model.load_state_dict(load_file(str(path)))
    return model.eval(), header


def _fold_header(cfg: RunConfig, setup: FoldSetup, cohort: Cohort, name: str) -> dict:
    mean, std = setup.scaler.mean, setup.scaler.std
    cat_stats = []
    for ix, m in zip(cohort.category_index, setup.recon_masks):
        cols = ix[m]
        cat_stats.append({"mean": mean[cols].tolist(), "std": std[cols].tolist()})
    return {
        "model": cfg.model,
        "model_config": setup.model_config,
        "fold": name,
        "bin_edges_months": setup.bin_edges.tolist(),
        "categories": [
            {"name": n, "genes": g} for n, g in zip(cohort.categories, setup.recon_genes)
        ],
        "recon_stats": cat_stats,
        "gene_columns": cohort.gene_columns,
        "scaler": setup.scaler.to_dict(),
        "package_version": __version__,
    }


def _check_out_dir(out: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    run_file = out / RUN_FILE
    if run_file.exists():
        if overwrite:
            for p in list(out.glob("fold_*.json")) + list(out.glob("fold_*.safetensors")):
                p.unlink()
            for name in (RESULTS_FILE, "metrics.md"):
                (out / name).unlink(missing_ok=True)
        elif resume:
            old = json.loads(run_file.read_text())
            new = cfg.to_dict()
            diff = [k for k in _RESULT_KEYS if old.get(k) != new.get(k)]
            if diff:
                raise RunError(
                    f"{out} holds a run made with different settings ({', '.join(diff)}); "
                    "resume with the same options or choose another --out"
                )
        else:
            raise RunError(
                f"{out} already holds a run: pass --resume to continue it, --overwrite to "
                "start again, or choose another --out"
            )
    elif resume and any(out.glob("fold_*.json")):
        raise RunError(f"{out} has fold files but no {RUN_FILE}: cannot tell how they were made")


def default_progress(row: dict) -> None:
    parts = [f"{row.get('fold_label', '')} epoch {row['epoch']:>3}/{row['epochs']}"]
    parts.append(f"loss {row.get('train_loss', float('nan')):.4f}")
    for k, label in (("train_c_index", "train c"), ("inner_c_index", "inner c"),
                     ("test_c_index", "held-out c (monitor)")):
        if row.get(k) is not None:
            parts.append(f"{label} {row[k]:.4f}")
    parts.append(f"{row['seconds']:.1f} s")
    print("  ".join(parts), file=sys.stderr, flush=True)


def run_cv(
    cfg: RunConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[dict], None] | None = default_progress,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    cluster: str | None = None,
    scheduler: str | None = None,
) -> dict:
    """Run (or resume) the cross-validation; returns and writes ``results.json``.

    ``cluster`` ("local:N") or ``scheduler`` (a Dask scheduler address) train the folds as
    parallel tasks (:func:`napari_ghanet.cohort.engine.run_tasks`); each fold is seeded
    as in the serial run, so the results are the same.
    """
    return run_cv_many([cfg], [out_dir], resume=resume, overwrite=overwrite,
                       progress=progress, log=log, should_stop=should_stop, cluster=cluster,
                       scheduler=scheduler)[0]


@dataclass
class _Run:
    cfg: RunConfig
    out: Path
    cohort: Cohort
    features: FeatureStore | None
    resolved: list
    device: torch.device
    folds: dict = field(default_factory=dict)
    t_start: float = 0.0


def _prepare_run(cfg: RunConfig, out_dir, resume: bool, overwrite: bool, log) -> _Run:
    if not known_model(cfg.model):
        raise RunError(f"unknown model {cfg.model!r}; choose one of {list(MODEL_NAMES)} "
                       "or ghanet@R (top-k ratio R in (0, 1])")
    if cfg.train.selection == "inner" and not cfg.inner_val > 0:
        raise RunError("selection 'inner' needs --inner-val > 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_out_dir(out, cfg, resume, overwrite)

    t_start = time.perf_counter()
    cohort, features, resolved = _load_run_data(cfg)
    M.atomic_write_text(out / RUN_FILE, json.dumps(cfg.to_dict(), indent=2))
    device = resolve_device(cfg.train.device)
    log(f"{cfg.model}: {len(cohort.patients)} patients, {len(cohort.gene_columns)} genomic "
        f"features, {len(resolved)} fold(s), device {device}")
    run = _Run(cfg, out, cohort, features, resolved, device, t_start=t_start)
    for k, _fold in resolved:
        fold_json = out / f"fold_{k}.json"
        if resume and fold_json.exists() and (out / f"fold_{k}.safetensors").exists():
            rec = json.loads(fold_json.read_text())
            log(f"fold {k}: kept from the interrupted run (c-index {rec['c_index']:.4f})")
            run.folds[k] = rec
    return run


def _load_run_data(cfg: RunConfig):
    cohort = read_cohort(cfg.cohort, cfg.signatures)
    splits = read_splits(cfg.splits)
    if cfg.folds:
        bad = [k for k in cfg.folds if not 0 <= k < len(splits)]
        if bad:
            raise RunError(f"fold(s) {bad} do not exist: {len(splits)} splits in {cfg.splits}")
        chosen = [(k, splits[k]) for k in cfg.folds]
    else:
        chosen = list(enumerate(splits))
    uses = model_inputs(cfg.model)
    features = None
    if "wsi" in uses:
        if not cfg.features:
            raise CohortError(f"model {cfg.model} reads slides: give --features DIR")
        features = FeatureStore(cohort, cfg.features, cache_bytes=int(cfg.cache_gb * (1 << 30)))
    # Validate every split before training anything: bad inputs fail fast.
    resolved = [(k, resolve_fold(cohort, s, features, cfg.allow_missing)) for k, s in chosen]
    return cohort, features, resolved


def _train_fold(run: _Run, k: int, fold, label: str, progress, should_stop, log) -> dict:
    cfg, out = run.cfg, run.out
    setup = prepare_fold(run.cohort, fold, cfg, run.features)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, **setup.model_config)
    log(f"{label}: {len(setup.train)} training"
        + (f" + {len(setup.inner)} inner-validation" if setup.inner else "")
        + f", {len(setup.test)} held-out patients"
        + (f"; reconstructed genes per category {setup.model_config['omic_sizes']}"
           if is_ghanet(cfg.model) else ""))

    def row_progress(row, _label=label):
        if progress is not None:
            progress({**row, "fold_label": _label})

    res = fit(model, setup.train, cfg.train, monitor=setup.test, inner=setup.inner,
              progress=row_progress, should_stop=should_stop)
    pred = predict(model, setup.test, cfg.train, run.device)
    fm = M.fold_metrics(
        setup.train.times, setup.train.c == 0, setup.test.times, setup.test.c == 0,
        pred["risk"], pred["survival"], setup.bin_edges,
    )
    test_curve = [r.get("test_c_index") for r in res.history]
    valid = [(v, i) for i, v in enumerate(test_curve) if v is not None]
    best = max(valid) if valid else (None, -1)
    rec = {
        "fold": k,
        "split": fold.name,
        "c_index": fm["c_index"],
        "c_index_optimistic": best[0],
        "optimistic_epoch": best[1] + 1 if best[0] is not None else None,
        "selected_epoch": res.selected_epoch,
        "n_train": len(setup.train),
        "n_inner": 0 if setup.inner is None else len(setup.inner),
        "n_test": len(setup.test),
        "skipped": fold.skipped,
        "bin_edges_months": setup.bin_edges.tolist(),
        "recon_gene_counts": [int(m.sum()) for m in setup.recon_masks],
        "metrics": fm,
        "history": res.history,
        "seconds": res.seconds,
        "predictions": {
            "case_id": setup.test.ids,
            "time": setup.test.times.tolist(),
            "event": (setup.test.c == 0).astype(int).tolist(),
            "risk": pred["risk"].tolist(),
            "survival": pred["survival"].tolist(),
        },
    }
    _atomic_save_safetensors(out / f"fold_{k}.safetensors", model.state_dict(),
                             _fold_header(cfg, setup, run.cohort, fold.name))
    M.atomic_write_text(out / f"fold_{k}.json", json.dumps(rec))
    return rec


def _fold_done_line(label: str, rec: dict) -> str:
    return (f"{label}: held-out c-index {_f(rec['c_index'])} (optimistic best epoch "
            f"{_f(rec['c_index_optimistic'])}), Uno {_f(rec['metrics']['uno_c_index'])}, "
            f"{rec['seconds']:.0f} s")


def fold_task(task: tuple[dict, str, int, str]) -> dict:
    """Train one fold on a Dask worker: ``task`` = (RunConfig dict, run folder, fold, label).
    Reads the cohort itself and writes ``fold_K.json`` / ``fold_K.safetensors``; returns
    ``{"status": "done", "record": ...}``."""
    cfg_dict, out_dir, k, label = task
    cfg = RunConfig.from_dict(cfg_dict)
    cohort, features, resolved = _load_run_data(RunConfig.from_dict({**cfg_dict, "folds": [k]}))
    run = _Run(cfg, Path(out_dir), cohort, features, resolved, resolve_device(cfg.train.device))
    rec = _train_fold(run, k, resolved[0][1], label, None, None, lambda s: None)
    return {"status": "done", "error": "", "record": rec, "seconds": rec["seconds"]}


def run_cv_many(
    cfgs: list[RunConfig],
    out_dirs: list[str | os.PathLike],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[dict], None] | None = default_progress,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
) -> list[dict]:
    """Cross-validate several runs (e.g. models); with ``cluster`` or ``scheduler`` every
    (run, fold) is one parallel task, else they run one after another."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    runs = [_prepare_run(c, o, resume, overwrite, log) for c, o in zip(cfgs, out_dirs)]
    todo = []  # (run index, fold index, fold, label)
    for ri, run in enumerate(runs):
        name = f"{run.cfg.model} " if len(runs) > 1 else ""
        for n, (k, fold) in enumerate(run.resolved):
            if k not in run.folds:
                todo.append((ri, k, fold, f"{name}fold {k} ({n + 1}/{len(run.resolved)})"))
    if cluster is None and scheduler is None:
        for ri, k, fold, label in todo:
            rec = _train_fold(runs[ri], k, fold, label, progress, should_stop, log)
            log(_fold_done_line(label, rec))
            runs[ri].folds[k] = rec
    elif todo:
        from napari_ghanet.cohort.engine import run_tasks

        tasks = [(runs[ri].cfg.to_dict(), str(runs[ri].out), k, label)
                 for ri, k, _fold, label in todo]
        log(f"training {len(tasks)} fold(s) as parallel tasks")
        results = run_tasks(fold_task, tasks, cluster=cluster, scheduler=scheduler,
                            gpu=False if runs[0].device.type == "cpu" else None,
                            progress=False, unit="fold")
        failed = []
        for (ri, k, _fold, label), res in zip(todo, results):
            if res.status != "done":
                failed.append(f"{label}: {res.error}")
                continue
            runs[ri].folds[k] = res.row["record"]
            log(_fold_done_line(label, res.row["record"]))
        if failed:
            raise RunError("training failed (finished folds are kept; continue with "
                           "--resume): " + "; ".join(failed))
    return [_finish_run(run, log) for run in runs]


def _finish_run(run: _Run, log) -> dict:
    cfg, out, cohort, device = run.cfg, run.out, run.cohort, run.device
    folds = [run.folds[k] for k, _ in run.resolved]
    summary = M.summarize(folds)
    skipped_counts: dict[str, int] = {}
    for f in folds:
        for reason, ids in (f.get("skipped") or {}).items():
            skipped_counts[reason] = max(skipped_counts.get(reason, 0), len(ids))
    results = {
        "model": cfg.model,
        "cohort_name": Path(cfg.cohort).name,
        "selection": "epoch chosen on inner validation" if cfg.train.selection == "inner"
        else "model at the end of training",
        "c_index_mean": summary.pop("c_index_mean"),
        "c_index_std": summary.pop("c_index_std"),
        **summary,
        "folds": folds,
        "n_folds": len(folds),
        "skipped_counts": skipped_counts,
        "cohort": describe(cohort),
        "run": cfg.to_dict(),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "seconds_this_session": time.perf_counter() - run.t_start,
    }
    # D-calibration of each held-out fold's survival curves, calibration_fold_K.png
    results["calibration"] = write_calibration(folds, out, cfg.model)
    M.atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=1))
    M.atomic_write_text(out / "metrics.md", M.markdown_table(results))
    M.write_plots(results, out)
    log(f"{cfg.model}: c-index {_f(results['c_index_mean'])} ± {_f(results['c_index_std'])} "
        f"(optimistic {_f(results['c_index_optimistic_mean'])}); results in {out / RESULTS_FILE}")
    return results


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
