"""``ghanet predict``: the headless prediction, with the same exports as the dock widget.

A thin layer over :func:`~napari_ghanet.inference.predict.predict_slide` (one slide),
:func:`~napari_ghanet.inference.predict.predict_patient` (several slides with
``--patient``) and :func:`~napari_ghanet.inference.exports.export_all`. Regions of
interest (``--roi`` / ``--exclude`` QuPath GeoJSON), artifact QC (``--qc`` / ``--no-qc`` and
its thresholds) and overlapping heatmaps (``--heatmap-overlap``) map onto the library's
``regions``, ``qc`` and ``heatmap_overlap`` arguments.

Several slides (without ``--patient``), folders, glob patterns, ``--manifest`` or any cohort
option (``--cluster``, ``--scheduler``, ``--survival``) make a cohort run:
:func:`~napari_ghanet.cohort.predict_cohort`, each slide's (or patient's) exports in
``OUT/<name>/`` plus ``OUT/summary.csv``, ``OUT/cohort.csv`` and, with ``--survival``, the
external-validation report. QC and heatmap options apply there too.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from napari_ghanet.cli._cohort import add_cohort_options
from napari_ghanet.cli._options import (
    UsageError,
    add_shared_options,
    at_least,
    command,
    output_folder,
)
from napari_ghanet.cli._progress import CohortProgress, TerminalProgress
from napari_ghanet.cli.embed import resolve_slides
from napari_ghanet.cohort import predict_cohort
from napari_ghanet.cohort.inputs import _GLOB_CHARS
from napari_ghanet.device import resolve_device
from napari_ghanet.errors import BundleError, PredictionError
from napari_ghanet.inference.exports import export_all
from napari_ghanet.inference.predict import predict_patient, predict_slide
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle
from napari_ghanet.models.risk import risk_text
from napari_ghanet.preprocessing.qc import REASONS, QCParams
from napari_ghanet.preprocessing.roi import Regions

__all__ = ["add_parser", "add_region_qc_options", "encoder_kwargs", "qc_params", "regions_from_args",
           "report_lines", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet predict`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "predict",
        help="predict prognosis for a whole-slide image, one patient's slides or a cohort "
             "(research use only)",
        description=(
            "Predict the risk, survival curve and reconstructed pathway profile of a slide "
            "with a G-HANet model bundle, and write the JSON report, per-patch CSV and "
            "GeoJSON (QuPath measurement map) into OUT."
        ),
    )
    p.add_argument(
        "slides", nargs="*", metavar="SLIDE",
        help="whole-slide image(s) (.svs, .ndpi, .tif, ...), folders (searched recursively) "
             "or glob patterns; several slides of one patient with --patient",
    )
    p.add_argument(
        "--patient", default=None, metavar="NAME",
        help="score the slides as one patient (their patches form one bag): one report "
             "named NAME whose per-patch exports name each patch's slide",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model bundle (.safetensors); default: the bundled demonstration model",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument(
        "--top-k", type=int, default=10, help="number of top-attention regions to report"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="patch-feature cache folder (default: the user cache folder)",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="neither read nor write cached features"
    )
    p.add_argument(
        "--encoder-weights", type=Path, default=None, metavar="FILE",
        help="weights of the patch encoder the model was trained with, when they are not "
             "found on this machine (e.g. UNI's pytorch_model.bin, a ResNet50 .pth, a "
             "TorchScript file); `ghanet encoders` lists what is found",
    )
    add_region_qc_options(p)
    add_shared_options(p)
    add_cohort_options(p, predict=True)
    p.set_defaults(func=run)
    return p


def add_region_qc_options(p: argparse.ArgumentParser) -> None:
    """--roi, --exclude, --qc/--no-qc and its thresholds, --heatmap-overlap."""
    d = QCParams()
    g = p.add_argument_group("regions of interest (level-0 pixels, QuPath GeoJSON export)")
    g.add_argument(
        "--roi", type=Path, action="append", default=[], metavar="FILE.geojson",
        help="include regions: keep only patches whose centre lies inside one of their "
             "polygons (repeatable; default: all tissue)",
    )
    g.add_argument(
        "--exclude", type=Path, action="append", default=[], metavar="FILE.geojson",
        help="exclude regions: drop patches whose centre lies inside (repeatable)",
    )
    q = p.add_argument_group("artifact QC (flagged patches leave the bag; docs/regions-and-qc.md)")
    q.add_argument(
        "--qc", action=argparse.BooleanOptionalAction, default=True,
        help="flag pen marks, dark folds and blurred patches and leave them out (default: on)",
    )
    q.add_argument(
        "--qc-pen-fraction", type=float, default=d.pen_min_fraction, metavar="F",
        help="pen: least fraction (0-1) of a patch's pixels in saturated green/blue or black "
             f"ink hues to flag it (default {d.pen_min_fraction:g})",
    )
    q.add_argument(
        "--qc-fold-fraction", type=float, default=d.fold_min_fraction, metavar="F",
        help="fold: least fraction (0-1) of a patch's pixels darker than --qc-fold-od to "
             f"flag it (default {d.fold_min_fraction:g})",
    )
    q.add_argument(
        "--qc-fold-od", type=float, default=d.fold_od, metavar="OD",
        help="fold: optical density (log10 units, mean of R, G, B; 1.0 = 10%% "
             f"transmission) above which a pixel is dark (default {d.fold_od:g})",
    )
    q.add_argument(
        "--qc-blur-ratio", type=float, default=d.blur_fraction, metavar="R",
        help="blur: flag a patch whose Laplacian energy is below R times the slide's median "
             f"(unitless, 0-1; default {d.blur_fraction:g})",
    )
    q.add_argument(
        "--qc-detectors", default=",".join(d.detect), metavar="LIST",
        help=f"comma-separated detectors to run among {', '.join(REASONS)} "
             f"(default {','.join(d.detect)})",
    )
    p.add_argument(
        "--heatmap-overlap", type=float, choices=(0.0, 0.5, 0.75), default=0.0,
        help="smooth attention maps from overlapping patches (0.5 or 0.75); the prediction "
             "is unchanged but about 3x (0.5) or 15x (0.75) more patches are embedded",
    )


def qc_params(args: argparse.Namespace) -> QCParams | None:
    """The QCParams of the command line (None with --no-qc); a bad value is a usage error."""
    if not args.qc:
        return None
    detect = tuple(v.strip() for v in str(args.qc_detectors).split(",") if v.strip())
    params = QCParams(
        detect=detect,
        pen_min_fraction=args.qc_pen_fraction,
        fold_min_fraction=args.qc_fold_fraction,
        fold_od=args.qc_fold_od,
        blur_fraction=args.qc_blur_ratio,
    )
    try:
        params.validate()
    except ValueError as e:
        raise UsageError(f"QC option: {e}") from None
    return params


def regions_from_args(args: argparse.Namespace) -> Regions | None:
    """Include/exclude Regions read from --roi / --exclude (None when neither is given)."""
    if not args.roi and not args.exclude:
        return None
    return Regions.from_files(args.roi, args.exclude)


def report_lines(r: dict) -> list[str]:
    """The lines every text report shows (CLI summary and ``ghanet demo --headless``):
    risk group wording, survival horizon, QC counts and the regions used."""
    p = r.get("prediction", {})
    group = p.get("risk_group", "?")
    lines = [
        f"{risk_text(group, p.get('percentile_in_training_cohort'))}; "
        f"risk {p.get('risk', float('nan')):.4f}",
    ]
    if r.get("horizon_note"):
        lines.append(str(r["horizon_note"]))
    qc = r.get("qc")
    if qc:
        f = qc.get("flagged", {})
        lines.append(
            f"QC: {f.get('total', 0)} of {qc.get('n_patches', 0)} patches flagged and left out"
            f" (pen {f.get('pen', 0)}, fold {f.get('fold', 0)}, blur {f.get('blur', 0)})"
            + (f"; {qc['note']}" if qc.get("note") else "")
        )
    else:
        lines.append("QC: off")
    regs = r.get("regions")
    for k, reg in enumerate(regs if isinstance(regs, list) else [regs]):
        if not reg:
            continue
        where = f"slide {k}: " if isinstance(regs, list) else ""
        lines.append(
            f"regions: {where}{reg['n_include_regions']} include "
            f"({reg['include_area_mm2']:.2f} mm^2), {reg['n_exclude_regions']} exclude "
            f"({reg['exclude_area_mm2']:.2f} mm^2); {reg['n_kept']} of {reg['n_patches']} "
            f"patches kept ({reg['n_outside_include']} outside the include regions, "
            f"{reg['n_excluded']} excluded)"
        )
    return lines


def load_model(path: Path | None):
    """The bundle at ``path``, or the bundled demo model; a BundleError names which."""
    try:
        return load_bundle(path if path is not None else demo_bundle_path())
    except BundleError as e:
        hint = "" if path is not None else " (the bundled demo model is missing)"
        raise BundleError(f"cannot load the model{hint}: {e}") from e


def write_exports(prediction, out: Path) -> dict[str, Path]:
    """:func:`export_all`, with an unwritable folder as a PredictionError."""
    try:
        return export_all(prediction, out)
    except OSError as e:
        raise PredictionError(f"cannot write the results to {out}: {e}") from e


def is_cohort(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a cohort run: several inputs, a folder or glob
    pattern, ``--manifest``, ``--cluster``, ``--scheduler`` or ``--survival``."""

    if any(getattr(args, k, None) is not None
           for k in ("manifest", "cluster", "scheduler", "survival")):
        return True
    if len(args.slides) != 1:
        return True
    one = Path(args.slides[0])
    return one.is_dir() or (not one.exists() and bool(_GLOB_CHARS.search(args.slides[0])))


def predict_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``predict_slide`` / ``predict_patient`` beyond the ones both
    paths pass explicitly: QC and heatmap overlap, for the cohort path's
    ``predict_cohort(**predict_options)``. Regions are in one slide's level-0 pixels, so a
    cohort run takes none."""
    return {"qc": qc_params(args), "heatmap_overlap": args.heatmap_overlap,
            "encoder_kwargs": encoder_kwargs(args)}


def encoder_kwargs(args: argparse.Namespace) -> dict | None:
    """``--encoder-weights`` as the encoder override ``predict_slide`` takes."""
    return None if args.encoder_weights is None else {"weights": args.encoder_weights}


def run_cohort(args: argparse.Namespace) -> int:
    """The cohort path of ``ghanet predict`` (see the module docstring)."""
    items = resolve_slides(args)
    resolve_device(args.device)
    if args.model is None:
        load_model(None)  # names the missing demo model
    with CohortProgress(len(items), quiet=args.quiet) as progress:
        try:
            summary = predict_cohort(
                items, args.out, args.model, survival=args.survival, mpp=args.mpp,
                device=args.device, batch_size=args.batch_size, workers=args.workers,
                cache_dir=args.cache_dir, use_cache=not args.no_cache, top_k=args.top_k,
                cluster=args.cluster, scheduler=args.scheduler, progress=progress, say=progress.say,
                **predict_options(args),
            )
        except BundleError as e:
            raise BundleError(f"cannot load the model: {e}") from e
    for key in ("cohort", "validation_json", "validation_png"):
        if key in summary.extra:
            print(summary.extra[key])
    print(f"summary: {summary.summary_path}", file=sys.stderr)
    print(summary.line, file=sys.stderr, flush=True)
    return summary.exit_code


@command
def run(args: argparse.Namespace) -> int:
    """Run ``ghanet predict``; returns the exit code (0 ok, 1 failed, 2 bad option,
    130 interrupted)."""
    at_least("--batch-size", args.batch_size, 1)
    at_least("--workers", args.workers, 0)
    at_least("--top-k", args.top_k, 0)
    if not args.slides and args.manifest is None:
        raise UsageError("no slide given: give a slide (or folders, glob patterns, or --manifest FILE)")
    if not args.patient and is_cohort(args):
        if args.roi or args.exclude:
            raise UsageError(
                "--roi / --exclude are in one slide's level-0 pixels: give them with one slide"
            )
        with output_folder(args.out):
            return run_cohort(args)
    if len(args.slides) > 1 and (args.roi or args.exclude):
        raise UsageError(
            "--roi / --exclude are in one slide's level-0 pixels: give them with one slide"
        )
    qc = qc_params(args)
    with output_folder(args.out):
        return _predict(args, qc)


def _predict(args: argparse.Namespace, qc: QCParams | None) -> int:
    regions = regions_from_args(args)
    bundle = load_model(args.model)
    cancel = threading.Event()
    common = dict(
        device=args.device,
        mpp=args.mpp,
        batch_size=args.batch_size,
        workers=args.workers,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        top_k=args.top_k,
        qc=qc,
        heatmap_overlap=args.heatmap_overlap,
        encoder_kwargs=encoder_kwargs(args),
        cancel=cancel,
    )
    try:
        with TerminalProgress(quiet=args.quiet) as progress:
            if args.patient:
                prediction = predict_patient(
                    args.slides, bundle, patient=args.patient, progress=progress, **common
                )
            else:
                prediction = predict_slide(
                    args.slides[0], bundle, regions=regions, progress=progress, **common
                )
    except KeyboardInterrupt:
        cancel.set()
        raise
    written = write_exports(prediction, args.out)

    p = prediction
    for w in p.warnings:
        print(f"warning: {' '.join(str(w).split())}", file=sys.stderr)
    cached = "cached features" if p.features_cached else "features computed"
    name = args.patient or Path(args.slides[0]).name
    print(
        f"{name}: {p.n_patches} patches ({cached}) in {p.timings.get('total', 0.0):.1f} s",
        file=sys.stderr,
    )
    for line in report_lines(p.to_dict()):
        print(f"  {line}", file=sys.stderr)
    for path in written.values():
        print(path)
    print(f"note: {p.intended_use}", file=sys.stderr)
    return 0
