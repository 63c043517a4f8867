"""``ghanet-train bundle``: from a cross-validated run to the plugin's model bundle.

Modes:

* ``final`` (default): retrain on all of the run's patients with the run's recipe (when
  the run chose epochs on inner validation, the median chosen epoch is used); bin edges,
  genomic scaling and reconstruction genes are fitted on all of them. The run's
  cross-validated metrics describe how well this recipe generalises.
* ``fold``: one fold's model, as trained and evaluated in the run.
* ``ensemble``: the average of the fold models (``napari_ghanet.models.bundle.EnsembleModel``).
  The members must share one architecture, so the run must have reconstructed the same
  genes in every fold (``--recon-genes all``) or be a model without reconstruction.

The bundle holds the weights and JSON metadata: model config, the encoder spec read from
the features' attributes, gene names per category, genomic normalisation statistics of
the reconstructed genes, survival bin edges in months, the cohort's risk quantiles (the
bundled model's risks on the run's patients, for percentiles) and their tertiles (the
low / intermediate / high risk groups), the 90th percentile of the patients' follow-up in
months (the survival plot's horizon), the run's metrics and provenance, an intended-use
text, and the training-distribution summary (:func:`training_summary`: what the training
slides looked like, so a prediction can say whether a new slide is like them).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari_ghanet.training.cohort import (
    FeatureStore,
    FoldData,
    _read_features,
    describe,
    read_cohort,
    read_splits,
    resolve_fold,
)
from napari_ghanet.training.cv import (
    RESULTS_FILE,
    RUN_FILE,
    RunConfig,
    RunError,
    load_fold_checkpoint,
    prepare_fold,
)
from napari_ghanet.training.labels import survival_bin_edges
from napari_ghanet.training.trainer import fit, predict, seed_everything

from napari_ghanet._version import __version__
from napari_ghanet.models.baselines import build_model, model_inputs
from napari_ghanet.models.bundle import EncoderSpec, EnsembleModel, save_bundle
from napari_ghanet.models.distribution_summary import build_summary
from napari_ghanet.models.risk import followup_p90, risk_groups_metadata

__all__ = ["make_bundle", "encoder_spec_from_attrs", "training_summary", "INTENDED_USE"]

INTENDED_USE = (
    "Research use only. Not a medical device and not for clinical decision making. "
    "Estimates a risk score, a survival curve over {bins} time bins and reconstructed "
    "gene-category profiles from the patch features of one H&E whole-slide image, as "
    "learned from the {n} patients of {cohort}. Predictions are only meaningful for slides "
    "like the training cohort's (same cancer type, staining, scanner range) and features "
    "made with the encoder named in this bundle. Cross-validated performance: "
    "c-index {c}."
)


def encoder_spec_from_attrs(attrs: dict, feature_dim: int, encoder: str | None = None) -> dict:
    """The bundle's encoder entry from a feature file's attributes.

    Uses the ``encoder_spec`` JSON attribute when present, else ``encoder``,
    ``patch_size`` and ``target_mpp``; ``encoder`` names it when the files carry no
    attributes (CLAM ``.pt``). Raises RunError when nothing names the encoder.
    """
    spec: dict = {}
    raw = attrs.get("encoder_spec")
    if raw:
        try:
            spec = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise RunError(f"the features' encoder_spec attribute is not valid JSON: {exc}") from exc
    name = encoder or spec.get("name") or attrs.get("encoder")
    if not name and attrs.get("encoder_unresolved"):  # another tool's unknown name
        raise RunError(f"{attrs['encoder_unresolved']} with --encoder")
    if not name:
        raise RunError(
            "the features carry no encoder attributes (e.g. CLAM .pt files): name the "
            "encoder that made them with --encoder (e.g. resnet50_trunc)"
        )
    spec["name"] = str(name)
    spec["dim"] = int(spec.get("dim") or attrs.get("feature_dim") or feature_dim)
    if "patch_px" not in spec and attrs.get("patch_size"):
        spec["patch_px"] = int(attrs["patch_size"])
    if "target_mpp" not in spec and attrs.get("target_mpp"):
        spec["target_mpp"] = float(attrs["target_mpp"])
    if spec["dim"] != feature_dim:
        raise RunError(f"encoder spec says {spec['dim']}-d features but the files hold {feature_dim}-d")
    return EncoderSpec.from_dict(spec).to_dict()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quantiles(risks: np.ndarray) -> dict:
    probs = np.linspace(0.0, 1.0, 101)
    return {"probs": probs.tolist(), "values": np.quantile(risks, probs).tolist()}


@dataclass
class _Bundled:
    """What a mode puts in the bundle: the model and the numbers fitted with it."""

    model: Any  # nn.Module (one model, or an EnsembleModel of the fold models)
    edges: np.ndarray  # survival bin edges in months, (n_bins + 1,)
    categories: list[dict]  # {"name", "genes"} per category
    stats: dict  # {"mean": [...], "std": [...]} of the reconstructed genes per category
    data: Any  # the run's patients as the model reads them (risk quantiles, groups)
    provenance: dict = field(default_factory=dict)


def _read_run(run_dir: Path, mode: str) -> tuple[RunConfig, dict]:
    """The finished run's config and results; RunError when it cannot be bundled."""
    if not (run_dir / RUN_FILE).is_file():
        raise RunError(f"{run_dir} is not a ghanet-train cv run (no {RUN_FILE})")
    if not (run_dir / RESULTS_FILE).is_file():
        raise RunError(f"{run_dir}: the run has not finished (no {RESULTS_FILE}); "
                       "complete it with `ghanet-train cv ... --resume`")
    cfg = RunConfig.from_dict(json.loads((run_dir / RUN_FILE).read_text()))
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    if cfg.model != "ghanet":
        why = ("reads genomics at inference, and the plugin predicts from the slide alone"
               if "omics" in model_inputs(cfg.model) else
               "has no reconstruction or genome-informed attention, which the plugin shows")
        raise RunError(f"model {cfg.model!r} {why}: only ghanet runs can be bundled")
    if mode not in ("final", "fold", "ensemble"):
        raise RunError(f"unknown bundle mode {mode!r}")
    return cfg, results


def _final_model(cfg: RunConfig, results: dict, cohort, all_fold: FoldData, features,
                 progress=None) -> _Bundled:
    """Mode ``final``: retrain on all patients with the run's recipe (the median epoch
    chosen on inner validation, when the run chose that way)."""
    provenance: dict = {}
    final_cfg = copy.deepcopy(cfg)
    final_cfg.inner_val = 0.0
    if cfg.train.selection == "inner":
        chosen = [f["selected_epoch"] for f in results["folds"]]
        final_cfg.train = final_cfg.train.replace(
            epochs=max(1, int(round(statistics.median(chosen)))))
        provenance["epochs_from_inner_validation"] = chosen
    final_cfg.train = final_cfg.train.replace(selection="last")
    setup = prepare_fold(cohort, all_fold, final_cfg, features)
    seed_everything(final_cfg.train.seed)
    model = build_model(cfg.model, **setup.model_config)
    _log(f"training the final {cfg.model} on all {len(all_fold.train)} patients "
         f"({final_cfg.train.epochs} epochs)")

    def row_log(row):
        (progress or (lambda r: _log(f"final model epoch {r['epoch']}/{r['epochs']} "
                                      f"loss {r.get('train_loss', float('nan')):.4f}")))(row)

    fit(model, setup.train, final_cfg.train, progress=row_log)
    categories = [{"name": n, "genes": g} for n, g in zip(cohort.categories, setup.recon_genes)]
    mean, std = setup.scaler.mean, setup.scaler.std
    stats = {
        "mean": [mean[ix[m]].tolist() for ix, m in zip(cohort.category_index, setup.recon_masks)],
        "std": [std[ix[m]].tolist() for ix, m in zip(cohort.category_index, setup.recon_masks)],
    }
    return _Bundled(model, setup.bin_edges, categories, stats, setup.test, provenance)


def _fold_checkpoints(run_dir: Path, mode: str, fold: int | None) -> list[tuple]:
    """The fold models a ``fold`` / ``ensemble`` bundle is made of, loaded; the ensemble's
    members must share one architecture and gene list."""
    fold_ckpts = sorted(run_dir.glob("fold_*.safetensors"),
                        key=lambda p: int(p.stem.split("_")[1]))
    if not fold_ckpts:
        raise RunError(f"{run_dir} holds no fold checkpoints")
    if mode == "fold":
        k = 0 if fold is None else fold
        path = run_dir / f"fold_{k}.safetensors"
        if not path.is_file():
            raise RunError(f"{path} not found: the run has folds "
                           f"{[int(p.stem.split('_')[1]) for p in fold_ckpts]}")
        return [load_fold_checkpoint(path)]
    loaded = [load_fold_checkpoint(p) for p in fold_ckpts]
    configs = {json.dumps(h["model_config"], sort_keys=True) for _, h in loaded}
    genes = {json.dumps(h["categories"]) for _, h in loaded}
    if len(configs) > 1 or len(genes) > 1:
        raise RunError(
            "the fold models differ in architecture (each fold reconstructs the genes "
            "significant on its own training patients), so they cannot be averaged: "
            "use --mode final, or run cv with --recon-genes all for an ensemble"
        )
    return loaded


def _fold_model(run_dir: Path, cfg: RunConfig, mode: str, fold: int | None, cohort,
                all_fold: FoldData, features) -> _Bundled:
    """Modes ``fold`` (one fold's model as trained) and ``ensemble`` (the fold models
    averaged, with the cohort's bin edges and the members' mean gene statistics)."""
    loaded = _fold_checkpoints(run_dir, mode, fold)
    header = loaded[0][1]
    model = loaded[0][0] if mode == "fold" else EnsembleModel([m for m, _ in loaded])
    categories = header["categories"]
    provenance: dict = {}
    if mode == "fold":
        edges = np.asarray(header["bin_edges_months"])
        stats = {"mean": [s["mean"] for s in header["recon_stats"]],
                 "std": [s["std"] for s in header["recon_stats"]]}
        provenance["fold"] = header["fold"]
    else:
        # Members were trained on their folds' bins; the bundle states the cohort's.
        all_idx = all_fold.train
        edges = survival_bin_edges(cohort.months[all_idx], cohort.censorship[all_idx], cfg.n_bins)
        stats = {
            key: [np.mean([h["recon_stats"][c][key] for _, h in loaded], axis=0).tolist()
                  for c in range(len(categories))]
            for key in ("mean", "std")
        }
        provenance["member_bin_edges_months"] = [h["bin_edges_months"] for _, h in loaded]
    setup = prepare_fold(cohort, all_fold, cfg if cfg.inner_val == 0 else _no_inner(cfg), features)
    return _Bundled(model, edges, categories, stats, setup.test, provenance)


def _metadata(cfg: RunConfig, results: dict, made: _Bundled, risks: np.ndarray, spec: dict,
              cohort, all_idx: np.ndarray, *, run_dir: Path, mode: str, name: str | None,
              intended_use: str | None) -> dict:
    """The bundle's JSON metadata (see the module docstring)."""
    n_trained = len(all_idx)
    metrics = {k: results.get(k) for k in (
        "c_index_mean", "c_index_std", "c_index_optimistic_mean", "c_index_optimistic_std",
        "uno_c_index_mean", "uno_c_index_std", "auc_mean_mean", "ibs_mean", "km")}
    metrics["folds"] = [
        {"fold": f["fold"], "c_index": f["c_index"], "c_index_optimistic": f["c_index_optimistic"],
         "n_train": f["n_train"], "n_test": f["n_test"]}
        for f in results["folds"]
    ]
    cohort_name = Path(cfg.cohort).name
    c_text = (f"{results['c_index_mean']:.3f} ± {results['c_index_std']:.3f} over "
              f"{len(results['folds'])} folds" if results.get("c_index_mean") is not None else "n/a")
    use = intended_use or INTENDED_USE.format(bins=len(made.edges) - 1, n=n_trained,
                                              cohort=cohort_name, c=c_text)
    meta = {
        "name": name or f"{cfg.model} {Path(cfg.cohort).stem.split('.')[0]} ({mode})",
        "encoder": spec,
        "categories": made.categories,
        "survival_bins_months": [float(e) for e in made.edges],
        "risk_quantiles": {**_quantiles(risks), "source": "the bundled model's risks on the "
                           f"run's {len(risks)} patients (mostly seen in training)"},
        "risk_groups": risk_groups_metadata(risks),
        "followup_p90_months": followup_p90(cohort.months[all_idx]),
        "intended_use": use,
        "metrics": metrics,
        "provenance": {
            "mode": mode,
            "n_patients": n_trained,
            "cohort": describe(cohort),
            "splits": cfg.splits,
            "features": cfg.features,
            "run": cfg.to_dict(),
            "run_dir": str(run_dir),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "package_version": __version__,
            **made.provenance,
        },
    }
    meta["genomic_stats"] = made.stats
    return meta


def make_bundle(
    run_dir: str | Path,
    out: str | Path,
    mode: str = "final",
    fold: int | None = None,
    name: str | None = None,
    encoder: str | None = None,
    intended_use: str | None = None,
    progress=None,
    relative_to: str | Path | None = None,
) -> Path:
    """Write the bundle of a finished run; returns its path. See module docstring.

    ``relative_to``: a folder (the demo recipe's temporary work folder) whose paths the
    metadata records relative to it (``cohort/cohort.csv``, ``run``), so that no
    builder's machine-specific path ends up in a shipped bundle.

    The steps: read and check the run; read the cohort, its features and all of the run's
    patients (one split's train + held-out sets); make the model of ``mode``
    (:func:`_final_model` or :func:`_fold_model`); predict every patient's risk (risk
    quantiles and groups); name the encoder from the features' attributes (or
    ``encoder``); write the weights and :func:`_metadata` with
    :func:`~napari_ghanet.models.bundle.save_bundle`.
    """
    run_dir = Path(run_dir)
    cfg, results = _read_run(run_dir, mode)
    cohort = read_cohort(cfg.cohort, cfg.signatures)
    features = FeatureStore(cohort, cfg.features, cache_bytes=int(cfg.cache_gb * (1 << 30)))
    splits = read_splits(cfg.splits)
    # All of the run's patients: one split's train + held-out sets.
    everyone = resolve_fold(cohort, splits[0], features, cfg.allow_missing)
    all_idx = np.sort(np.concatenate([everyone.train, everyone.test]))
    all_fold = FoldData("all", all_idx, all_idx, everyone.skipped)
    if mode == "final":
        made = _final_model(cfg, results, cohort, all_fold, features, progress)
    else:
        made = _fold_model(run_dir, cfg, mode, fold, cohort, all_fold, features)

    risks = predict(made.model, made.data, cfg.train)["risk"]
    spec = encoder_spec_from_attrs(features.attrs(), features.feature_dim, encoder)
    meta = _metadata(cfg, results, made, risks, spec, cohort, all_idx, run_dir=run_dir,
                     mode=mode, name=name, intended_use=intended_use)
    summary = training_summary(cohort, features, all_idx, spec)
    if summary is not None:
        meta["distribution"] = summary
    if relative_to is not None:
        meta = relative_paths(meta, Path(relative_to))
    path = save_bundle(out, made.model.cpu().eval(), meta)
    _log(f"bundle written: {path}")
    return path


def relative_paths(obj: Any, root: Path) -> Any:
    """``obj`` (JSON-like) with every string that is ``root`` or a path inside it written
    relative to ``root`` (``"."`` for ``root`` itself), with ``/`` separators.

    Examples
    --------
    >>> relative_paths({"run": "/tmp/w/run", "n": 3, "x": ["/tmp/w", "/etc"]}, Path("/tmp/w"))
    {'run': 'run', 'n': 3, 'x': ['.', '/etc']}
    """
    if isinstance(obj, dict):
        return {k: relative_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [relative_paths(v, root) for v in obj]
    if isinstance(obj, str):
        # the folder as given, made absolute and with links resolved (/tmp -> /private/tmp)
        for base in dict.fromkeys((str(root), str(root.absolute()), str(root.resolve()))):
            if obj == base or obj.startswith(base.rstrip("/") + "/"):
                return Path(obj).relative_to(base).as_posix()
    return obj


def training_summary(cohort, features: FeatureStore, index: np.ndarray, spec: dict,
                     max_patches: int = 400) -> dict | None:
    """The training-distribution summary of the patients ``index``
    (:func:`napari_ghanet.models.distribution_summary.build_summary`): each slide's mean
    patch feature, a random sample of at most ``max_patches`` of its patches and the
    acquisition its features file recorded (``ghanet embed`` files; other tools' files
    leave the stain, resolution and tissue checks out). None, with a message, when fewer
    than 5 slides have features."""
    rng = np.random.default_rng(0)
    samples, means, acquisition = [], [], []
    for i in index:
        for slide_id in cohort.patients.at[int(i), "slide_ids"]:
            path = features.slide_path(slide_id)
            if path is None:
                continue
            feats, attrs = _read_features(path)
            if not len(feats):
                continue
            means.append(feats.mean(axis=0, dtype=np.float64))
            if len(feats) > max_patches:
                feats = feats[np.sort(rng.choice(len(feats), max_patches, replace=False))]
            samples.append(np.asarray(feats, np.float32))
            acq = attrs.get("acquisition")
            acquisition.append(acq if isinstance(acq, dict) else None)
    if len(samples) < 5:
        _log(f"no training-distribution summary: {len(samples)} slide(s) with features "
             "(at least 5 needed)")
        return None
    summary = build_summary(samples, acquisition, encoder=spec["name"],
                            target_mpp=spec.get("target_mpp"), means=means)
    _log(f"training-distribution summary of {len(samples)} slides: checks "
         f"{', '.join(summary['checks'])}")
    return summary


def _no_inner(cfg: RunConfig) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.inner_val = 0.0
    return c
