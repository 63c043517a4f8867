"""Synthetic feature cohorts for testing the training module (test data, not biology).

``ghanet-train synth --out DIR`` writes a cohort in exactly the formats of a real one:

* ``features/<slide>.h5``: per-slide patch features (``features`` float32 N x D,
  ``coords`` int64 N x 2 level-0 top-left corners on a 256-px grid) with the feature
  cache's attributes (``encoder`` = ``synthetic``);
* ``cohort.csv``: ``case_id``, ``slide_id``, ``survival_months``, ``censorship``
  (1 = censored) and gene columns suffixed ``_rnaseq`` / ``_cnv``;
* ``signatures.csv``: six functional categories of (synthetic) gene symbols;
* ``splits/splits_K.csv``: patient-level K-fold splits (``train``, ``val``);
* ``latent.csv``: each patient's true pathway activities and risk (for tests only);
* ``README.md``: the generative model below.

Generative model. Each patient has six pathway activities a ~ N(0, I). Genes of
category k read a_k with a gene-specific loading plus noise (some genes do not respond).
The log-hazard is beta . a with beta non-zero for the first three pathways only, event
times are exponential, censoring uniform. Slides are bags of patches: most patches are
background tissue; a small share belongs to a pathway's "morphology" (its own mean in
feature space) and carries s * a_k along a direction of its own, under patch noise as
strong as the signal; every slide also has a small stain/scanner offset. So the
survival-relevant information in a slide is faint and scattered (5% of the patches per
pathway, each with its own morphology and direction): survival labels alone (ABMIL) find
it less well than a model also taught to reconstruct the genomic profiles (G-HANet), and
a model that reads the genomics at test time (ABMIL+SNN) does best.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from napari_ghanet.errors import CohortError
from napari_ghanet.io.atomic import atomic_path, atomic_write
from napari_ghanet.options import add_arguments, from_args
from napari_ghanet.options.training import SynthOptions

__all__ = ["SynthConfig", "write_synthetic_cohort", "configure_parser", "SYNTH_RECIPE"]

N_CATEGORIES = 6
CATEGORY_NAMES = (
    "Tumor Suppressor Genes",
    "Oncogenes",
    "Protein Kinases",
    "Cell Differentiation Markers",
    "Transcription Factors",
    "Cytokines and Growth Factors",
)
ENCODER_NAME = "synthetic"

# Model sizes and recipe that suit the synthetic cohort's 32-d features (CPU-friendly).
SYNTH_RECIPE = {
    "model_config": {
        "ghanet": {"width": 64, "heads": 2, "dim_head": 32, "gate_dim": 32,
                   "compress_dim": 32, "ffn_mult": 2},
        "abmil": {"hidden": 64, "attn_dim": 32},
        "snn": {"hidden": 64},
        "abmil_snn": {"hidden": 64, "attn_dim": 32, "omic_hidden": 64, "fusion_dim": 64},
    },
    "train": {"epochs": 20, "lr": 1e-3, "accumulation": 32, "batch_size": 32},
}


@dataclass
class SynthConfig:
    """Size and difficulty of the synthetic cohort. See the module docstring."""

    # the command-line sizes: declared (with units and ranges) in SynthOptions
    patients: int = SynthOptions.patients
    folds: int = SynthOptions.folds
    feature_dim: int = SynthOptions.feature_dim
    patches_min: int = SynthOptions.patches_min
    patches_max: int = SynthOptions.patches_max
    second_slide_fraction: float = 0.1
    genes_per_category: tuple[int, ...] = (24, 30, 30, 28, 40, 28)
    cnv_fraction: float = 0.25
    responsive_fraction: float = 0.7
    gene_noise: float = 0.6
    beta: tuple[float, ...] = (1.0, -0.8, 0.7, 0.0, 0.0, 0.0)
    pathway_patch_fraction: float = 0.05
    signal_strength: float = 1.0
    type_separation: float = 2.5
    patch_noise: float = 1.0
    nuisance: float = 0.1
    median_survival_months: float = 30.0
    censoring_months: float = 60.0
    seed: int = SynthOptions.seed


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _write_h5(path: Path, features: np.ndarray, coords: np.ndarray, attrs: dict) -> None:
    from napari_ghanet.io.features import PatchFeatures, save_features

    save_features(path, PatchFeatures(features=features, coords=coords, attrs=attrs))


def _gene_names(cfg: SynthConfig) -> list[list[str]]:
    prefixes = ("TSG", "ONC", "PKN", "CDM", "TFX", "CGF")
    return [[f"{prefixes[k]}{j + 1:03d}" for j in range(n)] for k, n in enumerate(cfg.genes_per_category)]


def write_synthetic_cohort(out_dir: str | os.PathLike, cfg: SynthConfig | None = None) -> dict:
    """Write the synthetic cohort to ``out_dir`` (see module docstring); returns the paths.

    Deterministic for a given config (seeded). Existing files of a previous cohort in
    ``out_dir`` are replaced.
    """
    cfg = cfg or SynthConfig()
    _check_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    out = Path(out_dir)
    feat_dir = out / "features"
    split_dir = out / "splits"
    for d in (feat_dir, split_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)

    # the random draws in their fixed order: the same config gives the same cohort
    n = cfg.patients
    activity = rng.standard_normal((n, N_CATEGORIES))
    log_hazard = activity @ np.asarray(cfg.beta)
    genes = _gene_names(cfg)
    columns = _genomics(cfg, rng, activity, genes)
    months, censorship = _survival(cfg, rng, log_hazard)
    case_ids = [f"SYN-{i:04d}" for i in range(n)]
    rows = _write_slide_features(cfg, rng, activity, case_ids, feat_dir)

    table = pd.DataFrame(rows)
    per_patient = pd.DataFrame(
        {"case_id": case_ids, "survival_months": months, "censorship": censorship, **columns}
    )
    table = table.merge(per_patient, on="case_id", how="left")
    _atomic_csv(table, out / "cohort.csv")

    sig = pd.DataFrame({name: pd.Series(g) for name, g in zip(CATEGORY_NAMES, genes)})
    _atomic_csv(sig, out / "signatures.csv")
    _write_splits(cfg, rng, case_ids, censorship, split_dir)

    latent = pd.DataFrame(activity, columns=[f"activity_{k}" for k in range(N_CATEGORIES)])
    latent.insert(0, "case_id", case_ids)
    latent["log_hazard"] = log_hazard
    _atomic_csv(latent, out / "latent.csv")

    atomic_write(out / "README.md", _readme(cfg, int(censorship.sum()), len(rows)))
    return {
        "cohort": out / "cohort.csv",
        "signatures": out / "signatures.csv",
        "splits": split_dir,
        "features": feat_dir,
        "latent": out / "latent.csv",
    }


def _check_config(cfg: SynthConfig) -> None:
    """A CohortError for a configuration that cannot make a cohort."""
    if len(cfg.genes_per_category) != N_CATEGORIES or len(cfg.beta) != N_CATEGORIES:
        raise CohortError(f"genes_per_category and beta need {N_CATEGORIES} entries")
    if not 0 < cfg.pathway_patch_fraction * N_CATEGORIES < 1:
        raise CohortError("pathway_patch_fraction x 6 must be in (0, 1)")
    if cfg.feature_dim < 2 * N_CATEGORIES + 2:
        raise CohortError(f"feature_dim {cfg.feature_dim} is too small: the synthetic feature "
                          f"space needs at least {2 * N_CATEGORIES + 2} dimensions (6 pathway "
                          "signals, 6 pathway and 2 background tissue types)")
    if cfg.patients < 5 * cfg.folds:
        raise CohortError(f"{cfg.patients} patients are too few for {cfg.folds} folds")


def _genomics(cfg: SynthConfig, rng: np.random.Generator, activity: np.ndarray,
              genes: list[list[str]]) -> dict[str, np.ndarray]:
    """Genomic columns: responsive genes read their category's activity (CNV as integers
    in [-2, 2], RNA-seq rounded to 4 digits)."""
    n = len(activity)
    columns: dict[str, np.ndarray] = {}
    for k, names in enumerate(genes):
        n_cnv = int(round(len(names) * cfg.cnv_fraction))
        for j, g in enumerate(names):
            responsive = rng.random() < cfg.responsive_fraction
            loading = rng.uniform(0.5, 1.5) * rng.choice([-1.0, 1.0]) if responsive else 0.0
            value = loading * activity[:, k] + cfg.gene_noise * rng.standard_normal(n)
            if j < n_cnv:
                columns[f"{g}_cnv"] = np.clip(np.round(value), -2, 2).astype(np.int64)
            else:
                columns[f"{g}_rnaseq"] = np.round(value, 4)
    return columns


def _survival(cfg: SynthConfig, rng: np.random.Generator,
              log_hazard: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exponential event times with hazard exp(beta . a), uniform censoring: (months,
    censorship with 1 = censored)."""
    n = len(log_hazard)
    base_rate = np.log(2) / cfg.median_survival_months
    event_time = rng.exponential(1.0 / (base_rate * np.exp(log_hazard)))
    censor_time = rng.uniform(1.0, cfg.censoring_months, n)
    months = np.round(np.minimum(event_time, censor_time), 2).clip(0.1)
    censorship = (event_time > censor_time).astype(np.int64)
    return months, censorship


def _write_slide_features(cfg: SynthConfig, rng: np.random.Generator, activity: np.ndarray,
                          case_ids: list[str], feat_dir: Path) -> list[dict]:
    """One or two feature files per patient in ``feat_dir``; their (case_id, slide_id)
    rows.

    The feature space: orthonormal directions for the signals, the tissue types (6
    pathway + 2 background) and the nuisances; each patch is its tissue type's mean plus
    noise and the slide's nuisance, and a pathway patch also carries its category's
    activity."""
    d = cfg.feature_dim
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    n_sig = N_CATEGORIES
    signal_dirs = basis[:, :n_sig]
    type_means = cfg.type_separation * basis[:, n_sig : 2 * n_sig + 2].T  # 6 pathway + 2 background
    free = basis[:, 2 * n_sig + 2 :]
    nuisance_dirs = free if free.shape[1] else basis
    rows = []
    attrs = {
        "encoder": ENCODER_NAME,
        "feature_dim": d,
        "patch_size": 256,
        "patch_size_level0": 256,
        "target_mpp": 0.5,
        "slide_mpp": 0.5,
        "encoder_spec": {"name": ENCODER_NAME, "dim": d, "patch_px": 256, "target_mpp": 0.5},
    }
    for i, case in enumerate(case_ids):
        n_slides = 2 if rng.random() < cfg.second_slide_fraction else 1
        for s in range(n_slides):
            nuisance = cfg.nuisance * rng.standard_normal(nuisance_dirs.shape[1]) @ nuisance_dirs.T
            n_patches = int(rng.integers(cfg.patches_min, cfg.patches_max + 1))
            # Tissue type per patch: each pathway's morphology at pathway_patch_fraction,
            # the rest background of two kinds.
            p_sig = cfg.pathway_patch_fraction
            probs = np.array([p_sig] * n_sig + [(1 - n_sig * p_sig) / 2] * 2)
            types = rng.choice(len(probs), n_patches, p=probs)
            x = type_means[types] + cfg.patch_noise * rng.standard_normal((n_patches, d))
            x += nuisance
            sig = types < n_sig
            x[sig] += cfg.signal_strength * activity[i, types[sig]][:, None] * signal_dirs[:, types[sig]].T
            side = int(np.ceil(np.sqrt(n_patches)))
            grid = np.stack(np.unravel_index(rng.permutation(side * side)[:n_patches], (side, side)), 1)
            coords = (grid[:, ::-1] * 256).astype(np.int64)
            slide_id = f"{case}-01Z-00-DX{s + 1}.svs"
            _write_h5(feat_dir / f"{slide_id[:-4]}.h5", x.astype(np.float32), coords, attrs)
            rows.append({"case_id": case, "slide_id": slide_id})
    return rows


def _write_splits(cfg: SynthConfig, rng: np.random.Generator, case_ids: list[str],
                  censorship: np.ndarray, split_dir: Path) -> None:
    """Patient-level folds stratified by censorship: ``split_dir/splits_K.csv``."""
    n = len(case_ids)
    order = np.concatenate([rng.permutation(np.flatnonzero(censorship == v)) for v in (0, 1)])
    fold_of = np.empty(n, np.int64)
    fold_of[order] = np.arange(n) % cfg.folds
    for k in range(cfg.folds):
        train = [case_ids[i] for i in np.flatnonzero(fold_of != k)]
        test = [case_ids[i] for i in np.flatnonzero(fold_of == k)]
        _atomic_csv(pd.DataFrame({"train": pd.Series(train), "val": pd.Series(test)}),
                    split_dir / f"splits_{k}.csv")


def _readme(cfg: SynthConfig, n_censored: int, n_slides: int) -> str:
    doc = (__doc__ or "").split("Generative model.")[-1].strip()
    return (
        "# Synthetic G-HANet test cohort\n\n"
        "TEST DATA, made by `ghanet-train synth`: no patient, no biology. It exists to check "
        "that training, evaluation and bundles work and that distillation helps where it "
        "should.\n\n"
        f"{cfg.patients} patients, {n_slides} slides, {n_censored} censored; "
        f"{cfg.feature_dim}-d patch features (encoder name `{ENCODER_NAME}`).\n\n"
        f"Generative model. {doc}\n\n"
        "Recommended model sizes and recipe for this cohort:\n\n"
        f"```json\n{json.dumps(SYNTH_RECIPE, indent=2)}\n```\n\n"
        f"Config:\n\n```json\n{json.dumps(asdict(cfg), indent=2)}\n```\n"
    )


def configure_parser(p) -> None:
    """The options of ``ghanet-train synth`` on its (sub)parser ``p``."""
    p.description = ("Write a synthetic cohort (features, table, signatures, splits) in the "
                     "formats of a real one. Test data only.")
    p.add_argument("--out", required=True, help="output folder")
    add_arguments(p, SynthOptions, group=False)
    p.set_defaults(func=_run)


def _run(args) -> int:
    cfg = SynthConfig(**from_args(SynthOptions, args).to_dict())
    paths = write_synthetic_cohort(args.out, cfg)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
    return 0
