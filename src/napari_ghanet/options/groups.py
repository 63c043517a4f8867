"""The option groups: every run option with its type, default, unit, range and help.

:class:`GridOptions` (which pixels become patches), :class:`EmbedOptions` (how patches
become features), :class:`QCOptions` (artifact QC), :class:`HeatmapOptions`,
:class:`ReportOptions`, :class:`CacheOptions`, :class:`RegionOptions` (include / exclude
files, level-0 pixels) and :class:`ExecutionOptions` (where a cohort runs), in the order
of :data:`ALL_GROUPS` (the order of ``docs/options.md``). Resolutions are µm/px, patch
sides px, fractions 0-1. No torch, napari or Qt import here.

Examples
--------
>>> GridOptions(mpp=0.25).mpp, QCOptions(enabled=False).params() is None
(0.25, True)
>>> parse_cluster("local:2")
('local', 2)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from napari_ghanet.io.slide import MAX_MPP
from napari_ghanet.options.declare import OptionError, OptionGroup, option
from napari_ghanet.preprocessing.qc import REASONS, QCParams

__all__ = ["ALL_GROUPS", "CPU_READERS", "CacheOptions", "ConsoleOptions", "EmbedOptions",
           "DicomWebOptions", "EncoderOptions",
           "ExecutionOptions", "GridOptions", "HeatmapOptions", "QCOptions", "RegionOptions",
           "ReportOptions", "parse_cluster"]

#: patch reader threads on the CPU when the workers option is left to its default
CPU_READERS = 4

@dataclass(frozen=True)
class GridOptions(OptionGroup):
    """Which pixels become patches: level-0 resolution, patch geometry, tissue."""

    group: ClassVar[str] = "grid"
    title: ClassVar[str] = "patch grid"

    mpp: float | None = option(
        None, "microns per pixel of level 0, for slides whose file does not record it",
        unit="µm/px", low=0.0, low_open=True, high=MAX_MPP, none="read from the slide",
        metavar="UM",
    )
    patch_px: int | None = option(
        None, "patch side in pixels at the patch resolution", unit="px", low=16,
        high=4096, none="the encoder's", label="Patch size (px)",
        metavar="PX",
    )
    target_mpp: float | None = option(
        None, "resolution the patches are read at (0.5 = 20x)", unit="µm/px", low=0.05,
        high=16.0, none="the encoder's", label="Patch resolution (µm/px)", metavar="UM",
    )
    min_tissue_fraction: float = option(
        0.5, "keep patches at least this fraction tissue", unit="fraction", low=0.0,
        high=1.0, flag="--min-tissue", metavar="F",
    )
    tissue_threshold: float | None = option(
        None, "HSV saturation above which a pixel is tissue", unit="saturation", low=0.0,
        low_open=True, high=1.0, none="Otsu", label="Tissue threshold", metavar="S",
    )

    def tissue_params(self):
        """The :class:`~napari_ghanet.preprocessing.tissue.TissueParams` of these options
        (None: the defaults)."""
        if self.tissue_threshold is None:
            return None
        from napari_ghanet.preprocessing.tissue import TissueParams

        return TissueParams(saturation_threshold=self.tissue_threshold)


@dataclass(frozen=True)
class EncoderOptions(OptionGroup):
    """Which patch encoder ``ghanet embed`` runs (a prediction takes its bundle's)."""

    group: ClassVar[str] = "encoder"
    title: ClassVar[str] = "encoder"

    encoder: str = option(
        "resnet50_trunc", "patch encoder name (resnet50_trunc: the CLAM features the G-HANet "
        "paper's models were trained on); ghanet encoders lists them all and whether their "
        "weights are on this machine. Every encoder but morphometric needs a weights file, "
        "found in torch's or the Hugging Face hub cache or given with --encoder-weights FILE "
        "(torchscript: its model file; nothing is downloaded); morphometric is weight-free",
        metavar="NAME",
    )


@dataclass(frozen=True)
class ConsoleOptions(OptionGroup):
    """What a command prints while it works."""

    group: ClassVar[str] = "console"
    title: ClassVar[str] = "console"

    quiet: bool = option(False, "print no progress on stderr (errors and the final summary "
                                "still are)")


@dataclass(frozen=True)
class EmbedOptions(OptionGroup):
    """How patches become features: encoder weights, device, engine, batches, readers."""

    group: ClassVar[str] = "embed"
    title: ClassVar[str] = "patch encoder"

    weights: Path | None = option(
        None, "weights file of the patch encoder, when it is not found on this machine "
        "(a ResNet50 .pth, a foundation model's checkpoint, a TorchScript file)",
        flag="--encoder-weights", none="look in the usual caches", label="Encoder weights",
        metavar="FILE", persist=True, key="encoder_weights",
    )
    device: str = option(
        "auto", "where the encoder and the model run: auto (CUDA when available), cpu, "
        "cuda or cuda:N", metavar="DEVICE", persist=True,
    )
    backend: str = option(
        "auto", "CPU engine: auto (ONNX Runtime when the encoder supports it, else torch), "
        "onnx (insist), onnx-int8 (8-bit ONNX Runtime, only when asked), torch; no effect "
        "on CUDA", choices=("auto", "onnx", "onnx-int8", "torch"), label="CPU engine",
        persist=True,
    )
    batch_size: int = option(
        64, "patches per encoder batch", unit="patches", low=1, high=65536,
        label="Batch size", metavar="N", persist=True,
    )
    workers: int | None = option(
        None, "patch reader threads (0 reads on the calling thread)", unit="threads",
        low=0, high=256, none=f"{CPU_READERS} on the CPU, one per core on CUDA",
        metavar="N",
    )
    read_ahead: int = option(
        2, "least encoder batches read ahead of the encoder (more keeps the encoder fed "
        "from slow disks and network slides, at the memory of that many batches; more are "
        "read when the reader threads need them)", unit="batches", low=1, high=64,
        label="Read-ahead (batches)", persist=True, metavar="N",
    )
    compile: bool = option(
        False, "CUDA: run the encoder through torch.compile (slow first batch; pays off "
        "on whole cohorts with large ViTs)",
    )


@dataclass(frozen=True)
class QCOptions(OptionGroup):
    """Artifact QC: which detectors run and their main thresholds (the colour ranges of
    :class:`~napari_ghanet.preprocessing.qc.QCParams` keep their defaults)."""

    group: ClassVar[str] = "qc"
    title: ClassVar[str] = "artifact QC (flagged patches leave the bag; docs/regions-and-qc.md)"

    enabled: bool = option(
        True, "flag pen marks, dark folds and blurred patches and leave them out",
        flag="--qc", label="Artifact QC (pen, blur, folds)", persist=True, key="qc_on",
    )
    detect: tuple[str, ...] = option(
        QCParams.detect, "comma-separated detectors to run",
        choices=REASONS, flag="--qc-detectors", metavar="LIST",
    )
    pen_min_fraction: float = option(
        QCParams.pen_min_fraction, "pen: flag a patch when at least this fraction of its "
        "pixels are saturated green/blue or black ink hues", unit="fraction", low=0.0,
        high=1.0, flag="--qc-pen-fraction", label="Pen ink (fraction)", metavar="F",
        persist=True,
    )
    fold_od: float = option(
        QCParams.fold_od, "fold: optical density (mean of R, G, B; 1.0 = 10% transmission) above which "
        "a pixel is dark", unit="log10 OD", low=0.0, low_open=True, high=5.0,
        flag="--qc-fold-od", label="Fold OD (log10)", metavar="OD", persist=True,
    )
    fold_min_fraction: float = option(
        QCParams.fold_min_fraction, "fold: flag a patch when at least this fraction of its "
        "pixels are darker than the fold OD", unit="fraction", low=0.0, high=1.0,
        flag="--qc-fold-fraction", label="Fold dark (fraction)", metavar="F", persist=True,
    )
    blur_fraction: float = option(
        QCParams.blur_fraction, "blur: flag a patch whose Laplacian energy is below this ratio of the "
        "slide's median", unit="ratio", low=0.0, high=1.0, flag="--qc-blur-ratio",
        label="Blur (x median)", metavar="R", persist=True,
    )

    def params(self):
        """The :class:`~napari_ghanet.preprocessing.qc.QCParams` (None when QC is off)."""
        if not self.enabled:
            return None
        return QCParams(detect=self.detect, pen_min_fraction=self.pen_min_fraction,
                        fold_od=self.fold_od, fold_min_fraction=self.fold_min_fraction,
                        blur_fraction=self.blur_fraction)

    @classmethod
    def from_params(cls, qc) -> QCOptions:
        """From a :class:`~napari_ghanet.preprocessing.qc.QCParams` (None: QC off)."""
        if qc is None:
            return cls(enabled=False)
        return cls(detect=tuple(qc.detect), pen_min_fraction=qc.pen_min_fraction,
                   fold_od=qc.fold_od, fold_min_fraction=qc.fold_min_fraction,
                   blur_fraction=qc.blur_fraction)


@dataclass(frozen=True)
class HeatmapOptions(OptionGroup):
    """Smooth attention maps from overlapping patches."""

    group: ClassVar[str] = "heatmap"
    title: ClassVar[str] = "heatmaps"

    overlap: float = option(
        0.0, "overlap of extra shifted patch grids for smooth attention maps (the "
        "prediction is unchanged)", unit="fraction", choices=(0.0, 0.5, 0.75),
        notes=("patch grid only (no extra cost)", "smooth map: about 4x the patches to embed",
               "smoother map: about 16x the patches to embed"),
        flag="--heatmap-overlap", label="Heatmap overlap", persist=True, key="heatmap_overlap",
    )


@dataclass(frozen=True)
class ReportOptions(OptionGroup):
    """What the report lists."""

    group: ClassVar[str] = "report"
    title: ClassVar[str] = "report"

    top_k: int = option(10, "number of top-attention regions to report", unit="regions",
                        low=0, high=10000, metavar="K", label="Top regions", persist=True)
    top_genes: int = option(10, "genes listed per pathway category", unit="genes", low=0,
                            high=100000, metavar="N")


@dataclass(frozen=True)
class DistributionOptions(OptionGroup):
    """Is the slide like the model's training slides? (the verdict never changes the risk;
    docs/user-guide.md, "Can I trust this prediction?")"""

    group: ClassVar[str] = "distribution"
    title: ClassVar[str] = "training-distribution check (docs/user-guide.md)"

    distribution_check: bool = option(
        True, "compare the slide with the model's training slides (appearance, stain, "
        "resolution, tissue) and report in distribution / unusual / out of distribution",
        negate="--no-distribution-check",
    )
    unusual_margin: float = option(
        0.1, "a value beyond the training slides' range by more than this fraction of the "
        "range is unusual", unit="fraction of the range", low=0.0, high=10.0, metavar="F",
    )
    ood_margin: float = option(
        0.5, "a value beyond the training slides' range by more than this fraction of the "
        "range is out of distribution", unit="fraction of the range", low=0.0, high=100.0,
        metavar="F",
    )

    def check(self) -> None:
        if self.ood_margin < self.unusual_margin:
            raise OptionError("ood_margin", "must be at least the unusual margin")


@dataclass(frozen=True)
class CacheOptions(OptionGroup):
    """The patch-feature cache."""

    group: ClassVar[str] = "cache"
    title: ClassVar[str] = "feature cache"

    cache_dir: Path | None = option(
        None, "patch-feature cache folder", none="the user cache folder", metavar="DIR",
    )
    use_cache: bool = option(
        True, "read and write cached patch features", negate="--no-cache",
        negate_help="neither read nor write cached patch features (every patch is embedded "
        "again; default: cached features are reused and new ones kept)",
    )


@dataclass(frozen=True)
class RegionOptions(OptionGroup):
    """Include / exclude regions from QuPath GeoJSON files (level-0 pixels)."""

    group: ClassVar[str] = "regions"
    title: ClassVar[str] = "regions of interest (level-0 pixels, QuPath GeoJSON export)"

    roi: tuple[Path, ...] = option(
        (), "include regions: keep only patches whose centre lies inside one of their "
        "polygons (repeatable)", none="all tissue", metavar="FILE.geojson",
    )
    exclude: tuple[Path, ...] = option(
        (), "exclude regions: drop patches whose centre lies inside (repeatable)",
        metavar="FILE.geojson",
    )

    @property
    def empty(self) -> bool:
        return not self.roi and not self.exclude

    def regions(self):
        """The :class:`~napari_ghanet.preprocessing.roi.Regions` read from the files (None
        when there are none)."""
        if self.empty:
            return None
        from napari_ghanet.preprocessing.roi import Regions

        return Regions.from_files(list(self.roi), list(self.exclude))


@dataclass(frozen=True)
class ExecutionOptions(OptionGroup):
    """Where a cohort runs, and whether finished outputs are kept."""

    group: ClassVar[str] = "execution"
    title: ClassVar[str] = "execution (default: in this process)"

    cluster: str | None = option(
        None, "run one task per slide (ghanet-train cv: per fold) on a Dask cluster on "
        "this machine: N worker processes (torch threads split so workers x threads <= "
        "cores), or one worker per GPU", none="in this process",
        metavar="local:N|local:gpus",
    )
    scheduler: str | None = option(
        None, "run the tasks on an existing Dask scheduler, e.g. tcp://node01:8786; GPU "
        "workers should offer the resource GPU=1", none="none", metavar="ADDRESS",
    )
    overwrite: bool = option(
        False, "recompute outputs that already exist instead of keeping them and "
        "resuming",
    )

    def check(self) -> None:
        if self.cluster is not None and self.scheduler is not None:
            raise OptionError("scheduler", "cannot be combined with cluster: choose one")
        _ = self.cluster_plan  # a bad cluster fails here, when the options are made

    @functools.cached_property
    def cluster_plan(self) -> tuple[str, int | None]:
        """``cluster`` parsed, once per options object (:func:`parse_cluster`): what the
        cohort engine runs on.

        Examples
        --------
        >>> ExecutionOptions(cluster="local:2").cluster_plan
        ('local', 2)
        """
        return parse_cluster(self.cluster)


def parse_cluster(cluster: str | None) -> tuple[str, int | None]:
    """``None`` -> ("inprocess", None); ``"local:N"`` -> ("local", N);
    ``"local:gpus"`` -> ("gpus", None); anything else an :class:`OptionError`.

    Examples
    --------
    >>> parse_cluster("local:2"), parse_cluster("local:gpus"), parse_cluster(None)
    (('local', 2), ('gpus', None), ('inprocess', None))
    """
    if cluster is None or str(cluster).strip() in ("", "none"):
        return "inprocess", None
    text = str(cluster).strip().lower()
    kind, _, arg = text.partition(":")
    if kind == "local" and arg == "gpus":
        return "gpus", None
    if kind == "local" and arg.isdigit() and int(arg) >= 1:
        return "local", int(arg)
    raise OptionError(
        "cluster", f"{cluster!r} is not a cluster: use local:N (N worker processes on this "
        "machine, N >= 1) or local:gpus (one worker per GPU); for a running scheduler give "
        "its address as the scheduler instead"
    )


@dataclass(frozen=True)
class DicomWebOptions(OptionGroup):
    """Slides on a DICOMweb archive, and the prediction back as DICOM (docs/dicomweb.md)."""

    group: ClassVar[str] = "dicomweb"
    title: ClassVar[str] = "DICOMweb (slides on a DICOM archive; docs/dicomweb.md)"

    dicomweb_token_file: Path | None = option(
        None, "file holding the DICOMweb server's bearer token (or 'basic USER:PASSWORD')",
        none="the environment variable GHANET_DICOMWEB_TOKEN, else no credentials",
        metavar="FILE")
    dicomweb_query: str | None = option(
        None, "with a server root URL as SLIDE: QIDO-RS study search, e.g. "
        "'ModalitiesInStudy=SM&PatientID=X'; every slide-microscopy series found is one "
        "slide", none="none", metavar="QUERY")
    dicom_out: Path | None = option(
        None, "also write the result as DICOM (research use only): a Comprehensive SR, the "
        "attention Parametric Map, the top regions as bulk annotations and the tissue/QC "
        "Segmentation, in the slide's study (DICOM slides only)", none="none", metavar="DIR")
    stow: str | None = option(
        None, "store those DICOM objects with STOW-RS on the server the slide came from "
        "(--stow alone) or on the DICOMweb server URL; all or none of them",
        alone="same", none="not stored", metavar="URL")


#: every group, in the order of the docs' tables
ALL_GROUPS: tuple[type[OptionGroup], ...] = (
    GridOptions, EncoderOptions, EmbedOptions, QCOptions, HeatmapOptions, ReportOptions,
    CacheOptions, DistributionOptions, RegionOptions, ExecutionOptions, ConsoleOptions,
    DicomWebOptions,
)
