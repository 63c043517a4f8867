"""The training options of ``ghanet-train cv`` (and ``bundle``'s final model), declared once.

:class:`TrainOptions` is the optimisation recipe (the trainer's ``TrainConfig``: epochs,
learning rate, weight decay, gradient accumulation, batch size, patches per bag, loss
weights, seed, device, mixed precision, model selection); :class:`CVOptions` what a
cross-validated run evaluates and how it treats its run folder. Defaults are the G-HANet
paper's. The flags and ``--help`` of ``ghanet-train cv`` and the tables of
``docs/options.md`` come from these declarations (:mod:`napari_ghanet.options.cli`); the
training package imports them, never the reverse. No torch, napari or Qt import here.

Examples
--------
>>> TrainOptions().epochs, TrainOptions(lr=1e-3).lr
(20, 0.001)
>>> TrainOptions(selection="best")
Traceback (most recent call last):
...
napari_ghanet.options.OptionError: selection must be one of last, inner (...), got best
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from napari_ghanet.options.declare import OptionError, OptionGroup, option

__all__ = ["MODEL_CHOICES", "TRAINING_GROUPS", "BundleOptions", "CVOptions", "DemoOptions",
           "SynthOptions", "TrainOptions"]

#: the models ``ghanet-train cv`` trains (``napari_ghanet.models.baselines.MODEL_NAMES``;
#: spelled here so that ``ghanet-train --help`` imports no torch, checked by a test)
MODEL_CHOICES = ("ghanet", "abmil", "snn", "abmil_snn", "amil", "deepattnmisl", "transmil",
                 "mcat", "survpath", "ghanet-no-recon", "ghanet-no-genome", "ghanet-no-hyper")


@dataclass(frozen=True)
class TrainOptions(OptionGroup):
    """The optimisation recipe (defaults: the paper's Adam, lr 2e-4, weight decay 1e-5,
    20 epochs, 32 bags per step, loss NLL + 0.3 (SCE + MSE), alpha 0).

    ``batch_size`` changes only speed and memory; ``init_hazards`` starts the survival
    head's bias at the training patients' discrete hazards (Kaplan-Meier per bin), so an
    untrained model predicts the cohort's curve rather than a hazard of 0.5 per bin.
    """

    group: ClassVar[str] = "train"
    title: ClassVar[str] = "training recipe (defaults: the paper's)"

    epochs: int = option(20, "passes over the training patients per fold", unit="epochs",
                         low=1, high=100000, metavar="N")
    lr: float = option(2e-4, "Adam learning rate", low=0.0, low_open=True, high=1.0,
                       metavar="LR")
    weight_decay: float = option(1e-5, "Adam L2 weight decay", low=0.0, high=1.0,
                                 metavar="WD")
    accumulation: int = option(32, "bags per optimizer step (gradient accumulation)",
                               unit="bags", low=1, high=100000, metavar="N")
    batch_size: int = option(16, "bags per forward pass (speed and memory only)",
                             unit="bags", low=1, high=100000, metavar="N")
    max_patches: int | None = option(
        None, "patches sampled per bag and epoch in training", unit="patches", low=1,
        high=10_000_000, none="all", metavar="N")
    recon_weight: float = option(0.3, "weight of the SCE + MSE reconstruction losses "
                                 "(G-HANet)", unit="ratio", low=0.0, high=100.0, metavar="W")
    alpha_surv: float = option(0.0, "extra weight of uncensored patients in the NLL",
                               unit="ratio", low=0.0, high=1.0, metavar="A")
    seed: int = option(1, "random seed of initialisation, sampling and dropout", low=0,
                       high=2**32 - 1, metavar="N")
    device: str = option("auto", "where training runs: auto (CUDA when available), cpu, "
                         "cuda or cuda:N", metavar="DEVICE")
    amp: bool = option(True, "mixed precision on CUDA", negate="--no-amp",
                       negate_help="disable mixed precision on CUDA (default: on)")
    eval_max_tokens: int = option(400_000, "patches per evaluation forward pass (bags are "
                                  "never cut)", unit="patches", low=1, cli=False)
    selection: str = option(
        "last", "which epoch's model is scored", choices=("last", "inner"),
        notes=("the model at the end of training",
               "the epoch with the best inner-validation c-index (needs --inner-val)"))
    init_hazards: bool = option(
        True, "start the survival head at the training patients' hazards",
        negate="--no-init-hazards",
        negate_help="start the survival head at a hazard of 0.5 per bin (the paper's "
                    "initialisation) instead of the training patients' hazards (default: the "
                    "training patients' hazards)")


@dataclass(frozen=True)
class CVOptions(OptionGroup):
    """What a cross-validated run evaluates, and what it does with an existing run folder."""

    group: ClassVar[str] = "cv"
    title: ClassVar[str] = "cross-validation"

    model: tuple[str, ...] = option(
        (), "model(s); several are trained side by side into OUT/<model>/ and compared in "
        "OUT/comparison.csv/.md (see docs/training-guide.md)", choices=MODEL_CHOICES,
        many=True, required=True, metavar="MODEL")
    topk_ratio: tuple[float, ...] = option(
        (), "add one G-HANet run per top-k ratio R, named ghanet@R (plain ghanet keeps the "
        "paper's 0.2)", unit="ratio", low=0.0, low_open=True, high=1.0, many=True,
        none="none", metavar="R")
    pathways: Path | None = option(
        None, "SurvPath's pathway gene sets (signatures format: one column per pathway, "
        "matched to the table's _rnaseq columns)", none="the signature categories",
        metavar="CSV")
    folds: tuple[int, ...] = option(
        (), "run only these folds", low=0, high=1000, many=True,
        none="every split in --splits", metavar="K")
    recon_genes: str = option(
        "significant", "genes G-HANet reconstructs", choices=("significant", "all"),
        notes=("Welch t-test p below --p-threshold between low- and high-risk training "
               "patients", "every gene of the signatures"))
    p_threshold: float = option(0.05, "p-value below which a gene counts as significant for "
                                "--recon-genes significant", low=0.0, low_open=True,
                                high=1.0, metavar="P")
    n_bins: int = option(4, "survival time bins (quantiles of the uncensored training "
                         "patients' times)", unit="bins", low=1, high=100, metavar="N")
    inner_val: float = option(0.0, "fraction of each fold's training patients held out as "
                              "inner validation (0: none)", unit="fraction", low=0.0,
                              high=0.9, metavar="F")
    allow_missing: bool = option(False, "skip split cases absent from the table and slides "
                                 "without features (counts recorded) instead of stopping")
    cache_gb: float = option(4.0, "memory for cached feature bags", unit="GB", low=0.0,
                             high=65536.0, metavar="GB")
    resume: bool = option(False, "continue an interrupted run in --out")
    overwrite: bool = option(False, "discard a previous run in --out")


@dataclass(frozen=True)
class BundleOptions(OptionGroup):
    """How ``ghanet-train bundle`` turns a cross-validated run into a plugin model bundle."""

    group: ClassVar[str] = "bundle"
    title: ClassVar[str] = "model bundle"

    mode: str = option(
        "final", "which model the bundle holds", choices=("final", "ensemble", "fold"),
        notes=("retrain on all patients with the run's recipe",
               "average the fold models", "one fold's model (--fold K)"))
    fold: int | None = option(None, "fold index for --mode fold", low=0, high=1000,
                              none="none (required with --mode fold)", metavar="K")
    name: str | None = option(None, "model name shown in the plugin",
                              none="MODEL COHORT (MODE), e.g. 'ghanet tcga_luad (final)'",
                              metavar="NAME")
    encoder: str | None = option(
        None, "encoder name when the features carry no encoder attributes (CLAM)",
        none="read from the features", metavar="NAME")
    intended_use: str | None = option(
        None, "replace the intended-use text", none="a research-use-only text naming the "
        "cohort, the patients and the c-index", metavar="TEXT")


@dataclass(frozen=True)
class SynthOptions(OptionGroup):
    """The size of a synthetic feature cohort (``ghanet-train synth``; test data only)."""

    group: ClassVar[str] = "synth"
    title: ClassVar[str] = "synthetic cohort"

    patients: int = option(400, "patients", unit="patients", low=1, high=1_000_000,
                           metavar="N")
    folds: int = option(5, "patient-level cross-validation splits", unit="folds", low=1,
                        high=100, metavar="K")
    feature_dim: int = option(32, "dimension of each patch feature", unit="numbers", low=1,
                              high=65536, metavar="D")
    patches_min: int = option(80, "fewest patches per slide", unit="patches", low=1,
                              high=1_000_000, metavar="N")
    patches_max: int = option(240, "most patches per slide", unit="patches", low=1,
                              high=1_000_000, metavar="N")
    seed: int = option(0, "seed of the cohort's random draws", low=0, high=2**32 - 1,
                       metavar="N")

    def check(self) -> None:
        if self.patches_max < self.patches_min:
            raise OptionError("patches_max", f"must be >= the fewest patches per slide "
                              f"({self.patches_min}), got {self.patches_max}")


@dataclass(frozen=True)
class DemoOptions(OptionGroup):
    """The size and seed of the demonstration model's synthetic cohort and its training
    (``ghanet-train demo``; defaults: the shipped model's)."""

    group: ClassVar[str] = "demo"
    title: ClassVar[str] = "demo recipe"

    patients: int = option(120, "synthetic patients (one slide each)", unit="patients",
                           low=4, high=100_000, metavar="N")
    slide_px: int = option(3072, "side of each square synthetic slide in pixels at "
                           "0.5 µm/px", unit="px", low=256, high=65536, metavar="PX")
    epochs: int = option(30, "training epochs per fold and for the final model",
                         unit="epochs", low=1, high=100_000, metavar="N")
    folds: int = option(5, "cross-validation folds (patient-level)", unit="folds", low=2,
                        high=100, metavar="K")
    seed: int = option(2026, "seed of the cohort, the slides and the training", low=0,
                       high=2**32 - 1, metavar="N")
    device: str = option("auto", "where embedding and training run: auto (CUDA when "
                         "available), cpu, cuda or cuda:N", metavar="DEVICE")
    workers: int = option(2, "slide-reading threads", unit="threads", low=0, high=256,
                          metavar="N")


#: the training groups, in the order of the docs' tables
TRAINING_GROUPS: tuple[type[OptionGroup], ...] = (TrainOptions, CVOptions, BundleOptions,
                                                  SynthOptions, DemoOptions)
