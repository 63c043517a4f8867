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
from napari_ghanet.options import (
    TRAINING_GROUPS,
    BundleOptions,
    CVOptions,
    ExecutionOptions,
    OptionError,
    TrainOptions,
    add_arguments,
    fields_of,
    from_args,
)

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
                  --model MODEL [MODEL ...] [--topk-ratio R ...] --out DIR [options]
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


def _model_config(text: str) -> dict:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--model-config must be a JSON object: {exc}") from exc
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("--model-config must be a JSON object")
    return d


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """The recipe's flags, from :class:`~napari_ghanet.options.TrainOptions`, and the
    model sizes."""
    add_arguments(p, TrainOptions)
    p.add_argument("--model-config", type=_model_config, default={},
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
    p.add_argument("--out", required=True, help="run folder")
    add_arguments(p, CVOptions, group=False)
    _add_train_options(p)
    add_arguments(p, ExecutionOptions, only=("cluster", "scheduler"),
                  exclusive=("cluster", "scheduler"))
    p.set_defaults(func=_run_cv)


def train_config_from_args(args):
    """The :class:`~napari_ghanet.training.trainer.TrainConfig` (the declared
    :class:`~napari_ghanet.options.TrainOptions`) of the parsed options."""
    return from_args(TrainOptions, args)


def _run_cv(args) -> int:
    from napari_ghanet.training.compare import expand_models, write_comparison
    from napari_ghanet.training.cv import RunConfig, run_cv_many

    cv = from_args(CVOptions, args)
    execution = from_args(ExecutionOptions, args)
    train = train_config_from_args(args)
    try:
        models = expand_models(list(cv.model), list(cv.topk_ratio))
    except ValueError as exc:
        print(f"ghanet-train cv: error: {exc}", file=sys.stderr)
        return 2
    evaluated = {k: v for k, v in cv.to_dict().items()
                 if k not in ("resume", "overwrite", "model", "topk_ratio")}
    evaluated["folds"] = list(cv.folds) or None
    cfgs = [RunConfig(
        model=model, cohort=args.cohort, signatures=args.signatures, splits=args.splits,
        features=args.features, model_config=args.model_config, train=train, **evaluated,
    ) for model in models]
    outs = [args.out] if len(models) == 1 else [str(Path(args.out) / m) for m in models]
    results = run_cv_many(cfgs, outs, resume=cv.resume, overwrite=cv.overwrite,
                          cluster=execution.cluster, scheduler=execution.scheduler)
    if len(results) > 1:
        write_comparison(results, args.out)
        print(f"comparison of {len(results)} models: {Path(args.out) / 'comparison.md'}",
              file=sys.stderr)
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
    add_arguments(p, BundleOptions, group=False)
    p.set_defaults(func=_run_bundle)


def _run_bundle(args) -> int:
    from napari_ghanet.training.bundle_cmd import make_bundle

    o = from_args(BundleOptions, args)
    path = make_bundle(args.run_dir, args.out, mode=o.mode, fold=o.fold, name=o.name,
                       encoder=o.encoder, intended_use=o.intended_use)
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
    except OptionError as exc:  # a value outside its declaration: name the flag
        groups = (*TRAINING_GROUPS, ExecutionOptions)
        flag = next((f.info.negate or f.flag for g in groups for f in fields_of(g)
                     if f.name == exc.name), exc.name)
        print(f"ghanet-train {args.command}: error: {flag} {exc.reason}", file=sys.stderr)
        return 2
    except (GHANetError, OSError) as exc:
        print(f"ghanet-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ghanet-train {args.command}: interrupted; finished folds are kept "
              "(continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
