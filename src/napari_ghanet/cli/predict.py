"""``ghanet predict``: the headless prediction, with the same exports as the dock widget.

A thin layer over :func:`~napari_ghanet.inference.predict.predict_slide` (one slide),
:func:`~napari_ghanet.inference.predict.predict_patient` (several slides with
``--patient``) and :func:`~napari_ghanet.inference.export_registry.export_all` (the
kinds of the export registry; ``--export KIND`` chooses them). Regions of
interest (``--roi`` / ``--exclude`` QuPath GeoJSON), artifact QC (``--qc`` / ``--no-qc`` and
its thresholds) and overlapping heatmaps (``--heatmap-overlap``) map onto the library's
``regions``, ``qc`` and ``heatmap_overlap`` arguments. ``--spatialdata OUT.zarr`` also
writes the prediction as a SpatialData store
(:func:`~napari_ghanet.inference.spatialdata_export.write_spatialdata`; the ``spatial``
extra), after the other exports.

Several slides (without ``--patient``), folders, glob patterns, ``--manifest`` or any cohort
option (``--cluster``, ``--scheduler``, ``--survival``) make a cohort run:
:func:`~napari_ghanet.cohort.predict_cohort`, each slide's (or patient's) exports in
``OUT/<name>/`` plus ``OUT/summary.csv``, ``OUT/cohort.csv`` and, with ``--survival``, the
external-validation report. QC and heatmap options apply there too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from napari_ghanet.cli._cohort import add_cohort_options
from napari_ghanet.cli._dicomweb import add_dicomweb_arguments, dicom_outputs, setup_dicomweb
from napari_ghanet.cli._inputs import resolve_slides
from napari_ghanet.cli._options import (
    UsageError,
    command,
    flag_error,
    group_from_args,
    output_folder,
)
from napari_ghanet.cli._progress import CohortProgress, TerminalProgress
from napari_ghanet.cli._report import load_model, report_lines, write_exports
from napari_ghanet.cohort.inputs import SlideItem, is_pattern
from napari_ghanet.errors import BundleError, GHANetError, UnsafeNameError
from napari_ghanet.io.atomic import interrupted_folder
from napari_ghanet.io.names import check_name_fits, name_problem, safe_name
from napari_ghanet.options import (
    CacheOptions,
    ConsoleOptions,
    DistributionOptions,
    EmbedOptions,
    ExecutionOptions,
    GridOptions,
    HeatmapOptions,
    OptionError,
    PredictOptions,
    QCOptions,
    RegionOptions,
    ReportOptions,
    add_arguments,
)

__all__ = ["DEMO_BANNER", "add_parser", "check_before_work", "options_from_args",
           "report_lines", "run"]

#: the line ``ghanet predict`` starts with when no ``--model`` is given
DEMO_BANNER = (
    "warning: no --model given: scoring with the bundled DEMONSTRATION model, trained on "
    "synthetic slides; its numbers say nothing about a real patient (give --model BUNDLE)"
)


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
    add_arguments(p, ConsoleOptions, group=False)
    p.add_argument(
        "--progressive", action="store_true",
        help="one slide or patient: while patches are embedded, print a preliminary risk "
             "from the patches embedded so far (bootstrap interval, risk group) to stderr, "
             "refined as embedding proceeds; the final result is the same as without it",
    )
    p.add_argument(
        "--spatialdata", type=Path, default=None, metavar="OUT.zarr",
        help="one slide or patient: also write the prediction as a SpatialData store "
             "(patch squares in level-0 px, attention table, QC-flagged patches, the report) "
             "for napari-spatialdata and LazySlide; needs pip install 'napari-ghanet[spatial]'",
    )
    add_export_argument(p)
    add_arguments(p, GridOptions)
    add_arguments(p, EmbedOptions)
    add_arguments(p, RegionOptions)
    add_arguments(p, QCOptions)
    add_arguments(p, HeatmapOptions)
    add_arguments(p, ReportOptions)
    add_arguments(p, DistributionOptions)
    add_arguments(p, CacheOptions)
    add_cohort_options(p, predict=True)
    add_dicomweb_arguments(p)
    p.set_defaults(func=run)
    return p


def add_export_argument(p: argparse.ArgumentParser) -> None:
    """``--export KIND`` (repeatable), its choices and help read from the export registry
    (:mod:`napari_ghanet.inference.export_registry`): every kind written from a prediction."""
    from napari_ghanet.inference.export_registry import export_formats

    kinds = export_formats(source="prediction")
    listed = "; ".join(
        f"{f.key}: {f.label} (<name>{f.suffix}"
        + (f", needs pip install 'napari-ghanet[{f.extra}]'" if f.extra else "") + ")"
        for f in kinds)
    default = ", ".join(f.key for f in kinds if f.default)
    p.add_argument(
        "--export", action="append", default=None, metavar="KIND",
        choices=[f.key for f in kinds],
        help=f"what to write into OUT, repeatable (default: {default}): {listed}",
    )


def options_from_args(args: argparse.Namespace) -> PredictOptions:
    """The :class:`~napari_ghanet.options.PredictOptions` of the command line; a value
    outside its declared range is a usage error naming the flag."""
    return PredictOptions(
        grid=group_from_args(GridOptions, args), embed=group_from_args(EmbedOptions, args),
        qc=group_from_args(QCOptions, args), heatmap=group_from_args(HeatmapOptions, args),
        report=group_from_args(ReportOptions, args), cache=group_from_args(CacheOptions, args),
        distribution=group_from_args(DistributionOptions, args),
    )


def is_cohort(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a cohort run: several inputs, a folder or glob
    pattern, ``--manifest``, ``--cluster``, ``--scheduler`` or ``--survival``."""

    if any(getattr(args, k, None) is not None
           for k in ("manifest", "cluster", "scheduler", "survival")):
        return True
    if len(args.slides) != 1:
        return True
    one = Path(args.slides[0])
    return one.is_dir() or (not one.exists() and is_pattern(args.slides[0]))


def run_cohort(args: argparse.Namespace, options: PredictOptions) -> int:
    """The cohort path of ``ghanet predict`` (see the module docstring)."""
    from napari_ghanet.cohort import predict_cohort

    kinds = checked_kinds(args)  # an unknown kind or a missing package: before any work
    items = resolve_slides(args)
    execution = group_from_args(ExecutionOptions, args)
    # predict_cohort checks the device and the bundle's header once, before any task;
    # each worker loads the weights once
    with CohortProgress(len(items), quiet=args.quiet) as progress:
        try:
            summary = predict_cohort(
                items, args.out, args.model, options, execution=execution,
                survival=args.survival, exports=kinds, progress=progress, say=progress.say,
            )
        except BundleError as e:
            hint = "" if args.model is not None else " (the bundled demo model is missing)"
            raise BundleError(f"cannot load the model{hint}: {e}") from e
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
    if not args.slides and args.manifest is None:
        raise UsageError("no slide given: give a slide (or folders, glob patterns, or --manifest FILE)")
    setup_dicomweb(args)  # credentials checked, study URLs / server queries -> series URLs
    if args.patient is not None:  # names the output files: refused before any work
        try:
            safe_name(args.patient, "--patient")
        except UnsafeNameError as e:
            raise UsageError(str(e)) from None
    options = options_from_args(args)
    regions = group_from_args(RegionOptions, args)
    if args.model is None:  # a warning, not progress: shown even with --quiet
        print(DEMO_BANNER, file=sys.stderr, flush=True)
    if not args.patient and is_cohort(args):
        if getattr(args, "spatialdata", None) is not None:
            raise UsageError(
                "--spatialdata writes one slide's (or one patient's) store: give one slide, "
                "or the patient's slides with --patient"
            )
        if getattr(args, "progressive", False):
            raise UsageError(
                "--progressive shows one slide's (or one patient's) preliminary risk: give "
                "one slide, or the patient's slides with --patient"
            )
        if not regions.empty:
            raise UsageError(
                "--roi / --exclude are in one slide's level-0 pixels: give them with one slide"
            )
        with output_folder(args.out):
            return run_cohort(args, options)
    if len(args.slides) > 1 and not regions.empty:
        raise UsageError(
            "--roi / --exclude are in one slide's level-0 pixels: give them with one slide"
        )
    check_before_work(args, regions)
    with output_folder(args.out):
        return _predict(args, options, regions)


def check_before_work(args: argparse.Namespace, regions: RegionOptions) -> None:
    """Everything one slide's (or patient's) prediction reads or writes, checked before any
    work, so that nothing fails after the slide was embedded: the output names fit the
    output folder's file system (:func:`~napari_ghanet.io.names.check_name_fits`), the
    region files parse (:func:`~napari_ghanet.preprocessing.roi.read_geojson`) and the
    ``--spatialdata`` location can take the store (:func:`check_spatialdata`)."""
    stem, what = ((args.patient, "--patient") if args.patient  # a URL: its series UID
                  else (SlideItem(str(args.slides[0])).stem, "the slide's name"))
    try:
        check_name_fits(args.out, stem, what)
    except UnsafeNameError as e:
        raise UsageError(f"{e} (it names the files in --out)") from None
    regions.regions()  # parsed now; a bad file is one line before the slide is opened
    check_spatialdata(args)
    store = getattr(args, "spatialdata", None)
    if store is not None:  # the store must not take the name of an export it sits beside
        from napari_ghanet.inference.export_registry import export_formats

        taken = {Path(args.out) / f"{stem}{f.suffix}" for f in export_formats()}
        if Path(os.path.abspath(store)) in {Path(os.path.abspath(t)) for t in taken}:
            raise UsageError(f"--spatialdata {store}: is the name of one of the exports "
                             "written into --out; give the store another name")


def check_spatialdata(args: argparse.Namespace) -> None:
    """Before any work: ``--spatialdata`` needs the spatialdata package and a location that
    can take the store: not the ``--out`` folder nor a folder holding it (replacing the
    store would delete the exports), a free name (or ``--overwrite`` of an earlier store;
    a file or a folder that is no store is never replaced), a name that fits its file
    system, and a writable folder (the nearest existing one) with at least
    :data:`SPATIALDATA_MIN_FREE` bytes free."""
    store = getattr(args, "spatialdata", None)
    if store is None:
        return
    if importlib.util.find_spec("spatialdata") is None:
        raise UsageError(
            "--spatialdata needs the spatialdata package, which is not installed: "
            "pip install 'napari-ghanet[spatial]'"
        )
    problem = spatialdata_location_problem(Path(store), Path(args.out),
                                           bool(getattr(args, "overwrite", False)))
    if problem:
        raise UsageError(f"--spatialdata {store}: {problem}")


#: free space the ``--spatialdata`` store's disk must have before any work (bytes)
SPATIALDATA_MIN_FREE = 64 * 1024 * 1024


def _is_store(path: Path) -> bool:
    return any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs"))


def spatialdata_location_problem(store: Path, out: Path, overwrite: bool) -> str | None:
    """Why ``store`` cannot take a SpatialData store next to the exports in ``out`` (see
    :func:`check_spatialdata`), or None."""
    s, o = Path(os.path.abspath(store.expanduser())), Path(os.path.abspath(out.expanduser()))
    if s == o:
        return "is the --out folder; give the store its own name, e.g. OUT/slide.ghanet.zarr"
    if o.is_relative_to(s):
        return "holds the --out folder; replacing the store would delete the exports"
    name = s.name
    if name_problem(name) is not None:
        return f"cannot be a store's name: {name_problem(name)}"
    if s.is_symlink() or s.exists():
        if not overwrite and not interrupted_folder(s):  # a killed run's store: replaced
            return "already exists: choose another name or pass --overwrite to replace it"
        if not s.is_dir() or s.is_symlink():
            return "exists and is not a SpatialData store; it is never replaced: choose another name"
        if not _is_store(s):
            return ("is a folder that holds no SpatialData store; it is never replaced: "
                    "choose another name")
    parent = s.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its folder {parent} is not writable (read-only?); choose another location"
    try:
        check_name_fits(parent, name, "the store's name", suffix_bytes=0)
    except UnsafeNameError as e:
        return str(e)
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        free = None
    if free is not None and free < SPATIALDATA_MIN_FREE:
        return (f"only {free / 2**20:.1f} MiB free on the disk of {parent}; free some "
                f"space (at least {SPATIALDATA_MIN_FREE // 2**20} MiB) or choose another disk")
    return None


def write_spatialdata_store(prediction, args: argparse.Namespace) -> Path:
    """The ``--spatialdata`` store, written after the other exports (a failure names
    the flag; the command's error policy then words it for the command line)."""
    from napari_ghanet.inference.spatialdata_export import write_spatialdata

    try:
        return write_spatialdata(prediction, args.spatialdata,
                                 overwrite=bool(getattr(args, "overwrite", False)))
    except GHANetError as e:
        raise GHANetError(f"--spatialdata: {e}") from e


def checked_kinds(args: argparse.Namespace) -> list[str] | None:
    """The ``--export`` kinds (None: the default kinds), checked before any work: an
    unknown kind or a missing optional package is a usage error (exit 2)."""
    from napari_ghanet.inference.export_registry import check_kinds

    kinds = getattr(args, "export", None)
    try:
        check_kinds(kinds)
    except GHANetError as e:
        raise UsageError(f"--export: {e}") from None
    return kinds


def _predict(args: argparse.Namespace, options: PredictOptions, regions: RegionOptions) -> int:
    from napari_ghanet.inference.session import PredictionSession, SlideInput

    kinds = checked_kinds(args)
    session = PredictionSession(load_model(args.model), options)
    if args.patient:
        session.choose_slides(args.slides, patient=args.patient)
    else:
        session.choose_slides([SlideInput(args.slides[0], regions=regions.regions())])
    try:
        with TerminalProgress(quiet=args.quiet) as progress:
            preliminary = None
            if getattr(args, "progressive", False):
                def preliminary(est):
                    progress.say(("final: " if est.final else "preliminary: ")
                                 + est.describe())
            prediction = session.run(progress=progress, preliminary=preliminary)
    except KeyboardInterrupt:
        session.cancel()
        raise
    except OptionError as e:
        raise flag_error(e) from None
    written = write_exports(prediction, args.out, kinds)
    written.update(dicom_outputs(prediction, args))  # --dicom-out / --stow
    if getattr(args, "spatialdata", None) is not None:
        written["spatialdata"] = write_spatialdata_store(prediction, args)

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
