"""``ghanet-train demo``: build the plugin's demonstration model, end to end.

One command runs the real pipeline on a synthetic cohort, so the demo model is made the
way a researcher makes a real one:

1. draw each synthetic patient's six pathway activities, their genomic profile (genes of
   category k read activity k) and their survival (log-hazard linear in the activities);
2. render one synthetic H&E-like slide per patient whose morphology follows the same
   activities (:func:`napari_ghanet.datasets.synthetic.write_synthetic_cohort_slides`);
3. embed every slide with the morphometric encoder
   (:func:`napari_ghanet.inference.stages.embed_to_file`, what ``ghanet embed`` runs);
4. cross-validate G-HANet (:func:`napari_ghanet.training.cv.run_cv`, what
   ``ghanet-train cv`` runs) on the cohort table, signatures and patient-level splits,
   written in the TCGA formats;
5. write the bundle (:func:`napari_ghanet.training.bundle_cmd.make_bundle`, what
   ``ghanet-train bundle`` runs: a final model on all patients), with an intended-use
   text that says plainly that it is a synthetic demonstration model.

Everything is seeded: the same recipe gives the same bundle up to floating-point noise of
the CPU kernels.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import napari_ghanet
from napari_ghanet.errors import TrainingError
from napari_ghanet.io.atomic import atomic_path, atomic_write
from napari_ghanet.options import add_arguments, from_args
from napari_ghanet.options.training import DemoOptions

if TYPE_CHECKING:
    import pandas as pd

# The recipe's steps (the synthetic slides, the encoders, the pipeline, training: torch,
# pandas) are imported by the functions that run them: `ghanet-train demo --help` reads
# only this module's options.

__all__ = ["DEFAULT_OUT", "DemoRecipe", "DEMO_INTENDED_USE", "check_out", "configure_parser",
           "make_demo_cohort", "run_demo_recipe"]

log = logging.getLogger(__name__)

CATEGORIES = (
    "Tumor Suppressor Genes",
    "Oncogenes",
    "Protein Kinases",
    "Cell Differentiation Markers",
    "Transcription Factors",
    "Cytokines and Growth Factors",
)
# Synthetic gene symbols, one prefix per category: they name no real gene on purpose.
_GENE_PREFIX = ("SYNTSG", "SYNONC", "SYNKIN", "SYNDIF", "SYNTF", "SYNCYT")

DEMO_INTENDED_USE = (
    "DEMONSTRATION MODEL - NOT FOR CLINICAL USE. This G-HANet model was trained on "
    "synthetic H&E-like slides whose survival was simulated from made-up pathway "
    "activities (napari-ghanet's demo recipe). It exists to demonstrate the software and "
    "is for research and demonstration only. Its risk scores, percentiles, survival curves "
    "and pathway profiles carry no information about real patients and must never inform "
    "diagnosis, prognosis or treatment."
)


@dataclass
class DemoRecipe:
    """Sizes and seeds of the demo cohort and model (defaults: the shipped model)."""

    # the command-line sizes: declared (with units and ranges) in DemoOptions
    patients: int = DemoOptions.patients
    slide_shape: tuple[int, int] = (DemoOptions.slide_px, DemoOptions.slide_px)
    genes_per_category: int = 10
    folds: int = DemoOptions.folds
    seed: int = DemoOptions.seed
    # log-hazard weights of the six activities (centred at 0.5), see ACTIVITY_TRAITS
    beta: tuple[float, ...] = (2.4, 1.2, 1.6, 0.8, 0.6, -1.0)
    censoring: float = 0.3
    epochs: int = DemoOptions.epochs
    lr: float = 5e-4
    accumulation: int = 16
    batch_size: int = 16
    model_config: dict = field(
        default_factory=lambda: {
            "width": 64, "heads": 2, "dim_head": 32, "gate_dim": 32, "compress_dim": 32,
            "ffn_mult": 2, "dropout": 0.1,
        }
    )


def _atomic_csv(df: pd.DataFrame, path: Path, **kwargs) -> None:
    """``df.to_csv(path, **kwargs)`` through a temporary file (io.atomic)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)


def _activities(rng: np.random.Generator, n: int) -> np.ndarray:
    from napari_ghanet.datasets.synthetic import ACTIVITY_TRAITS

    # A shared "aggressiveness" factor makes the six activities correlate, as pathways
    # of one tumour do; the logistic keeps them in (0, 1).
    shared = rng.normal(size=(n, 1))
    own = rng.normal(size=(n, len(ACTIVITY_TRAITS)))
    return 1.0 / (1.0 + np.exp(-(0.9 * shared + 0.8 * own)))


def make_demo_cohort(out: Path, recipe: DemoRecipe, *, device: str = DemoOptions.device,
                     workers: int = DemoOptions.workers) -> dict[str, Path]:
    """Write the synthetic cohort in TCGA formats and embed its slides.

    Returns paths: ``cohort`` (CSV), ``signatures``, ``splits`` (folder), ``slides``,
    ``features`` (folder of per-slide .h5).
    """
    import pandas as pd

    from napari_ghanet.datasets.synthetic import ACTIVITY_TRAITS, write_synthetic_cohort_slides
    from napari_ghanet.encoders import create_encoder
    from napari_ghanet.inference.stages import embed_to_file

    rng = np.random.default_rng(recipe.seed)
    n = recipe.patients
    act = _activities(rng, n)

    log_hazard = (act - 0.5) @ np.asarray(recipe.beta, dtype=float)
    event_time = rng.exponential(scale=40.0 * np.exp(-log_hazard))  # months
    censor_time = rng.uniform(6.0, 240.0, size=n)
    censor_time = np.where(rng.random(n) < recipe.censoring, censor_time, np.inf)
    months = np.minimum(event_time, censor_time).clip(0.5, None)
    censorship = (censor_time < event_time).astype(int)

    case_ids = [f"DEMO-{i:04d}" for i in range(n)]
    slide_ids = [f"{c}-01" for c in case_ids]
    table = {
        "case_id": case_ids,
        "slide_id": slide_ids,
        "survival_months": np.round(months, 2),
        "censorship": censorship,
    }
    signatures = {}
    for k, (cat, prefix) in enumerate(zip(CATEGORIES, _GENE_PREFIX)):
        genes = [f"{prefix}{j + 1:02d}" for j in range(recipe.genes_per_category)]
        signatures[cat] = genes
        loading = rng.uniform(0.6, 1.4, size=len(genes)) * rng.choice([-1, 1], size=len(genes))
        for g, w in zip(genes, loading):
            expr = 3.0 * w * (act[:, k] - 0.5) + rng.normal(scale=0.5, size=n)
            table[f"{g}_rnaseq"] = np.round(expr, 4)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "cohort": out / "cohort.csv",
        "signatures": out / "signatures.csv",
        "splits": out / "splits",
        "slides": out / "slides",
        "features": out / "features",
    }
    _atomic_csv(pd.DataFrame(table), paths["cohort"], index=False)
    _atomic_csv(pd.DataFrame(signatures), paths["signatures"], index=False)
    _atomic_csv(
        pd.DataFrame(act, columns=list(ACTIVITY_TRAITS)).assign(case_id=case_ids),
        out / "activities.csv",
        index=False,
    )

    paths["splits"].mkdir(exist_ok=True)
    order = rng.permutation(n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % recipe.folds
    for k in range(recipe.folds):
        train = [case_ids[i] for i in range(n) if fold_of[i] != k]
        val = [case_ids[i] for i in range(n) if fold_of[i] == k]
        split = pd.DataFrame({"train": pd.Series(train), "val": pd.Series(val)})
        _atomic_csv(split, paths["splits"] / f"splits_{k}.csv")

    def progress(done: int, total: int, slide_id: str) -> None:
        if done == total or done % 10 == 0:
            log.info("rendered %d/%d synthetic slides", done, total)

    write_synthetic_cohort_slides(
        paths["slides"],
        {s: tuple(a) for s, a in zip(slide_ids, act)},
        shape_hw=recipe.slide_shape,
        seed=recipe.seed,
        progress=progress,
    )
    slides = sorted(paths["slides"].glob("*.tiff"))
    # the encoder's own patch geometry and the declared batch size: what ghanet embed runs
    encoder = create_encoder("morphometric")
    failed = []
    for k, slide in enumerate(slides):
        outcome = embed_to_file(slide, paths["features"], encoder, device=device,
                                workers=workers)
        if not outcome.ok:
            log.error("%s", outcome.summary())
            failed.append(slide.name)
        elif (k + 1) % 10 == 0 or k + 1 == len(slides):
            log.info("embedded %d/%d synthetic slides", k + 1, len(slides))
    if failed:
        raise TrainingError(f"embedding {len(failed)} demo slide(s) failed: {', '.join(failed)}")
    return paths


def run_demo_recipe(out_bundle: Path, work_dir: Path, recipe: DemoRecipe | None = None, *,
                    device: str = DemoOptions.device,
                    workers: int = DemoOptions.workers) -> Path:
    """Run the whole recipe; the run (metrics, plots, fold checkpoints) stays in work_dir."""
    from napari_ghanet.training.bundle_cmd import make_bundle
    from napari_ghanet.training.cv import RunConfig, run_cv
    from napari_ghanet.training.trainer import TrainConfig

    recipe = recipe or DemoRecipe()
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(work_dir / "recipe.json", json.dumps(asdict(recipe), indent=2))
    paths = make_demo_cohort(work_dir / "cohort", recipe, device=device, workers=workers)
    run_dir = work_dir / "run"
    # the recipe's own sizes; everything else is the declared (the paper's) default
    train = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, accumulation=recipe.accumulation,
                        batch_size=recipe.batch_size, seed=recipe.seed, device=device)
    config = RunConfig(
        model="ghanet", cohort=str(paths["cohort"]), signatures=str(paths["signatures"]),
        splits=str(paths["splits"]), features=str(paths["features"]), recon_genes="all",
        model_config=dict(recipe.model_config), train=train,
    )
    run_cv(config, run_dir, resume=False, overwrite=True)
    out_bundle.parent.mkdir(parents=True, exist_ok=True)
    # paths recorded relative to the work folder: a shipped bundle names no builder's folder
    make_bundle(run_dir, out_bundle, name="G-HANet demo model (synthetic data)",
                intended_use=DEMO_INTENDED_USE, relative_to=work_dir)  # a final model
    return out_bundle


#: where ``ghanet-train demo`` writes its bundle unless told (the current folder)
DEFAULT_OUT = "ghanet-demo-model.safetensors"
#: the demo model shipped with the package (``models.bundle.demo_bundle_path()``, found
#: here without importing torch: ``ghanet-train demo --help`` stays light)
SHIPPED_MODEL = (Path(napari_ghanet.__file__).resolve().parent / "data"
                 / "demo_model.safetensors")

DEMO_DESCRIPTION = """\
Build the plugin's demonstration model end to end, the way a researcher makes a real one:
draw synthetic patients (pathway activities, genomic profile, survival), render one
synthetic H&E-like slide per patient, embed the slides with the morphometric encoder
(what "ghanet embed" runs), cross-validate G-HANet (what "ghanet-train cv" runs) and
write the bundle with a final model on all patients (what "ghanet-train bundle" runs).
Everything is seeded: the same options give the same bundle up to floating-point noise.
Research and demonstration only: the model carries no information about real patients."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    """The options of ``ghanet-train demo`` on its (sub)parser ``p``."""
    p.description = DEMO_DESCRIPTION
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"bundle to write (default: {DEFAULT_OUT} in the current folder; the "
                        "package's own demo model only with --replace-shipped)")
    p.add_argument("--replace-shipped", action="store_true",
                   help="allow --out to be the demo model shipped with the package (its "
                        "maintainers' rebuild)")
    p.add_argument("--work-dir", default=None,
                   help="keep the cohort, features and run here (default: a temporary folder)")
    add_arguments(p, DemoOptions, group=False)
    p.set_defaults(func=_run)


def check_out(out: Path, replace_shipped: bool = False) -> Path:
    """``out`` unless it is the demo model shipped with the package and
    ``replace_shipped`` is not set: then a :class:`~napari_ghanet.errors.TrainingError`
    before any work (rebuilding it takes minutes and changes every demo result).

    Examples
    --------
    >>> from napari_ghanet.models.bundle import demo_bundle_path
    >>> check_out(Path("my-demo.safetensors")).name
    'my-demo.safetensors'
    >>> check_out(demo_bundle_path())
    Traceback (most recent call last):
    ...
    napari_ghanet.errors.TrainingError: --out ... is the demo model shipped with the package: give another --out, or pass --replace-shipped to rebuild the shipped model
    """
    if not replace_shipped and Path(os.path.abspath(out)).resolve() == SHIPPED_MODEL:
        raise TrainingError(
            f"--out {out} is the demo model shipped with the package: give another --out, "
            "or pass --replace-shipped to rebuild the shipped model")
    return out


def _run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_out(Path(args.out), bool(getattr(args, "replace_shipped", False)))
    o = from_args(DemoOptions, args)
    recipe = DemoRecipe(patients=o.patients, slide_shape=(o.slide_px, o.slide_px),
                        epochs=o.epochs, folds=o.folds, seed=o.seed)
    out = Path(args.out)
    if args.work_dir:
        run_demo_recipe(out, Path(args.work_dir), recipe, device=o.device,
                        workers=o.workers)
    else:
        with tempfile.TemporaryDirectory(prefix="ghanet-demo-") as tmp:
            run_demo_recipe(out, Path(tmp), recipe, device=o.device, workers=o.workers)
    print(f"demo bundle written: {out} ({os.path.getsize(out) / 2**20:.1f} MB)")
    return 0
