"""``ghanet-train``: cross-validated training, model bundles and synthetic test cohorts.

The parser's texts are plain text (no reST markup), every option has a help line and
:class:`HelpFormatter` adds each option's default to it.

A face: the training code (torch, the cohort reader) is imported when a command runs, and
the ``synth`` / ``demo`` options only when that command is the one asked for, so
``ghanet-train --help``, ``cv --help``, ``bundle --help`` and their argument errors start
without torch (``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_ghanet.errors import Cancelled, GHANetError

__all__ = ["main", "build_parser", "HelpFormatter", "DESCRIPTION"]

#: commands whose options live in their own module: name -> help line
_MODULE_COMMANDS = {
    "synth": "write a synthetic feature cohort (test data)",
    "demo": "rebuild the plugin's demonstration model from a synthetic cohort",
}


def _configure(name: str, p: argparse.ArgumentParser) -> None:
    """Add the options of command ``name`` (one of :data:`_MODULE_COMMANDS`) to ``p``."""
    if name == "synth":
        from napari_ghanet.training import synth

        synth.configure_parser(p)
    else:
        from napari_ghanet.training import demo_recipe

        demo_recipe.configure_parser(p)

DESCRIPTION = """\
Cross-validated training, plugin model bundles and synthetic test cohorts.

  ghanet-train cv --cohort CSV --signatures CSV --splits DIR [--features DIR]
                  --model {ghanet,abmil,snn,abmil_snn} --out DIR [options]
  ghanet-train bundle RUN_DIR --out MODEL.safetensors [--mode final|ensemble|fold]
  ghanet-train synth --out DIR [--patients N ...]
  ghanet-train demo [--out MODEL.safetensors] [--work-dir DIR ...]

Run "ghanet-train COMMAND --help" for a command's options."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (line breaks kept); each option's help ends with its
    default, unless the help already says it or there is none to say (a flag, a
    required option, a default of None explained in the help)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default == argparse.SUPPRESS or action.required or not action.option_strings):
            return text
        if isinstance(default, list | tuple):
            shown = " ".join(str(v) for v in default)
        elif isinstance(default, dict):
            shown = json.dumps(default) if default else "none"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _model_config(text: str) -> dict:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--model-config must be a JSON object: {exc}") from exc
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("--model-config must be a JSON object")
    return d


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training recipe (defaults: the paper's)")
    g.add_argument("--epochs", type=_positive_int, default=20,
                   help="passes over the training patients per fold")
    g.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-5,
                   help="Adam L2 weight decay")
    g.add_argument("--accumulation", type=_positive_int, default=32,
                   help="bags per optimizer step (gradient accumulation)")
    g.add_argument("--batch-size", type=_positive_int, default=16,
                   help="bags per forward pass (speed/memory only)")
    g.add_argument("--max-patches", type=_positive_int, default=None,
                   help="patches sampled per bag and epoch in training (default: all)")
    g.add_argument("--recon-weight", type=float, default=0.3,
                   help="weight of SCE + MSE reconstruction losses (G-HANet)")
    g.add_argument("--alpha-surv", type=float, default=0.0,
                   help="extra weight of uncensored patients in the NLL")
    g.add_argument("--seed", type=int, default=1,
                   help="random seed of initialisation, sampling and dropout")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    g.add_argument("--no-init-hazards", action="store_true",
                   help="start the survival head at a hazard of 0.5 per bin (the paper's "
                        "initialisation) instead of the training patients' hazards")
    g.add_argument("--selection", choices=["last", "inner"], default="last",
                   help="score the model at the last epoch, or at the epoch with the best "
                        "inner-validation c-index (needs --inner-val)")
    g.add_argument("--inner-val", type=float, default=0.0,
                   help="fraction of each fold's training patients held out as inner "
                        "validation (0 = none)")
    g.add_argument("--model-config", type=_model_config, default={},
                   help='model size overrides as JSON, e.g. \'{"width": 256, "dropout": 0.5}\' '
                        "(default: none, the model's own sizes)")


def _add_cv(sub) -> None:
    p = sub.add_parser("cv", help="cross-validated training and honest evaluation",
                       formatter_class=HelpFormatter,
                       description="Train and evaluate a model on each split; writes "
                                   "results.json, metrics.md, plots and fold checkpoints.")
    p.add_argument("--cohort", required=True, help="cohort table CSV (may be .zip)")
    p.add_argument("--signatures", required=True, help="signatures.csv (one column per category)")
    p.add_argument("--splits", required=True, help="folder of splits_K.csv")
    p.add_argument("--features", default=None,
                   help="folder of per-slide .h5/.pt features (not needed for --model snn)")
    p.add_argument("--model", required=True, nargs="+",
                   choices=["ghanet", "abmil", "snn", "abmil_snn"],
                   help="model(s); several are trained side by side into OUT/<model>/")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--folds", type=int, nargs="+", default=None,
                   help="run only these folds (default: every split in --splits)")
    p.add_argument("--recon-genes", choices=["significant", "all"], default="significant",
                   help="genes G-HANet reconstructs: Welch t-test p < 0.05 between low- and "
                        "high-risk training patients, or all")
    p.add_argument("--p-threshold", type=float, default=0.05,
                   help="p-value below which a gene counts as significant for "
                        "--recon-genes significant")
    p.add_argument("--n-bins", type=_positive_int, default=4,
                   help="survival time bins (quantiles of the uncensored training patients' "
                        "times)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip split cases absent from the table and slides without features "
                        "(counts recorded) instead of stopping")
    p.add_argument("--cache-gb", type=float, default=4.0, help="memory for cached feature bags")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run in --out")
    _add_train_options(p)
    g = p.add_argument_group("execution (default: folds one after another in this process)")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--cluster", default=None, metavar="local:N",
                   help="train the folds (of every model) as parallel tasks on a Dask "
                        "LocalCluster of N worker processes (local:gpus: one per GPU)")
    m.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="train the folds as tasks on an existing Dask scheduler")
    p.set_defaults(func=_run_cv)


def train_config_from_args(args):
    """The :class:`~napari_ghanet.training.trainer.TrainConfig` of the parsed options."""
    from napari_ghanet.training.trainer import TrainConfig

    return TrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        accumulation=args.accumulation, batch_size=args.batch_size,
        max_patches=args.max_patches, recon_weight=args.recon_weight,
        alpha_surv=args.alpha_surv, seed=args.seed, device=args.device,
        amp=not args.no_amp, selection=args.selection, init_hazards=not args.no_init_hazards,
    )


def _run_cv(args) -> int:
    from napari_ghanet.training.cv import RunConfig, run_cv_many

    models = list(dict.fromkeys(args.model))
    cfgs = [RunConfig(
        model=model, cohort=args.cohort, signatures=args.signatures, splits=args.splits,
        features=args.features, recon_genes=args.recon_genes, p_threshold=args.p_threshold,
        n_bins=args.n_bins, inner_val=args.inner_val, allow_missing=args.allow_missing,
        folds=args.folds, cache_gb=args.cache_gb, model_config=args.model_config,
        train=train_config_from_args(args),
    ) for model in models]
    outs = [args.out] if len(models) == 1 else [str(Path(args.out) / m) for m in models]
    if args.cluster is not None:
        from napari_ghanet.cohort.engine import parse_cluster

        parse_cluster(args.cluster)  # a CohortError (exit 2) for a bad value
    results = run_cv_many(cfgs, outs, resume=args.resume, overwrite=args.overwrite,
                          cluster=args.cluster, scheduler=args.scheduler)
    for res in results:
        print(json.dumps({k: res[k] for k in ("model", "c_index_mean", "c_index_std",
                                              "c_index_optimistic_mean", "uno_c_index_mean")}))
    return 0


def _add_bundle(sub) -> None:
    p = sub.add_parser("bundle", help="turn a cross-validated run into a plugin model bundle",
                       formatter_class=HelpFormatter,
                       description="Write the .safetensors bundle the napari plugin opens.")
    p.add_argument("run_dir", help='folder of a finished "ghanet-train cv" run')
    p.add_argument("--out", required=True, help="bundle path (.safetensors)")
    p.add_argument("--mode", choices=["final", "ensemble", "fold"], default="final",
                   help="final: retrain on all patients with the run's recipe (default); "
                        "ensemble: average the fold models; fold: one fold's model")
    p.add_argument("--fold", type=int, default=None,
                   help="fold index for --mode fold (required there)")
    p.add_argument("--name", default=None,
                   help="model name shown in the plugin (default: MODEL COHORT (MODE), e.g. "
                        "'ghanet tcga_luad (final)')")
    p.add_argument("--encoder", default=None,
                   help="encoder name when the features carry no encoder attributes (CLAM) "
                        "(default: read from the features)")
    p.add_argument("--intended-use", default=None,
                   help="replace the default intended-use text (default: a research-use-only "
                        "text naming the cohort, the patients and the c-index)")
    p.set_defaults(func=_run_bundle)


def _run_bundle(args) -> int:
    from napari_ghanet.training.bundle_cmd import make_bundle

    path = make_bundle(args.run_dir, args.out, mode=args.mode, fold=args.fold, name=args.name,
                       encoder=args.encoder, intended_use=args.intended_use)
    print(str(path))
    return 0


def _command(argv: list[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``ghanet-train`` parser. With ``argv``, the ``synth`` / ``demo`` options are
    added only when ``argv`` names that command (the others keep their help line, so
    ``ghanet-train --help`` lists them); without, every command is complete."""
    parser = argparse.ArgumentParser(prog="ghanet-train", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_cv(sub)
    _add_bundle(sub)
    wanted = None if argv is None else _command(argv)
    for name, help_line in _MODULE_COMMANDS.items():
        p = sub.add_parser(name, help=help_line, formatter_class=HelpFormatter)
        if argv is None or wanted == name:
            _configure(name, p)
    for command in sub.choices.values():  # every command: plain help with defaults
        command.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print(f"ghanet-train {args.command}: cancelled", file=sys.stderr)
        return 130
    # GHANetError covers every bad input (cohort, run, training, bundle errors); OSError
    # a file that cannot be read or written.
    except (GHANetError, OSError) as exc:
        print(f"ghanet-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ghanet-train {args.command}: interrupted; finished folds are kept "
              "(continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
