"""A prediction written back as DICOM objects (highdicom), for the archive the slide came from.

:func:`dicom_results` builds, for a prediction of a DICOM slide (a DICOMweb series URL or
local DICOM-WSI files):

* a **Comprehensive SR** (:func:`build_report`): risk score, percentile and risk group, the
  survival probability at each bin edge, the patch and QC counts, the slide's identifiers,
  the model's provenance (name, version, SHA-256 of the bundle) and "research use only".
  Its content is built from the prediction's dict by the functions in
  :data:`SR_SECTIONS` (append one to add a section, e.g. an out-of-distribution verdict);
* a **Parametric Map** of the morphology attention on the patch grid (one pixel per grid
  cell: pixel spacing = the grid step, origin = the grid's first cell in the slide's
  frame of reference), one further channel per genome-informed attention category;
* **Microscopy Bulk Simple Annotations** of the top regions (rectangles in level-0 pixels)
  with their rank, attention, attention percentile and strongest category (its index in
  the SR's category list) as measurements;
* a binary **Segmentation** of the tissue mask (and the QC-flagged patches) where QC ran.

Every object belongs to the slide's study, references the source series and instances,
uses the slide's frame of reference, has a new series of its own, and says "research use
only" and the model (name, version, bundle SHA-256) in its content and series description.
:func:`check_object` validates each with highdicom (read back by highdicom's own parser,
identity and references checked) before anything is written or stored; :func:`write_dicom`
writes them atomically, :func:`store_dicom` stores them with STOW-RS (all or none).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet._version import __version__
from napari_ghanet.errors import PredictionError
from napari_ghanet.io.atomic import atomic_path
from napari_ghanet.io.dicomweb import (
    DicomWebClient,
    DicomWebError,
    is_dicomweb_url,
    parse_url,
    value,
)
from napari_ghanet.io.names import make_safe_name

logger = logging.getLogger(__name__)

__all__ = [
    "SR_SECTIONS",
    "build_report",
    "check_object",
    "dicom_results",
    "source_datasets",
    "store_dicom",
    "write_dicom",
]

SCHEME = "99GHANET"  # private coding scheme of the concepts DICOM has no code for
RESEARCH_ONLY = "research use only"
MANUFACTURER = "napari-ghanet"


def _code(value_: str, meaning: str, scheme: str = SCHEME):
    from highdicom.sr import CodedConcept

    return CodedConcept(value_, scheme, meaning[:64])


def _unit(ucum: str, meaning: str):
    return _code(ucum, meaning, "UCUM")


# --------------------------------------------------------------------------- sources


def _bulk(*_args) -> bytes:
    return b""


def source_datasets(slide_path: str) -> list:
    """The slide's level-0 DICOM image datasets (pixel data left out), from the DICOMweb
    metadata of a series URL or from the DICOM files beside a local ``.dcm`` slide."""
    import pydicom

    text = str(slide_path)
    if is_dicomweb_url(text):
        ref = parse_url(text)
        meta = DicomWebClient(ref.root).series_metadata(ref.study, ref.series or "")
        sets = [pydicom.Dataset.from_json(m, bulk_data_uri_handler=_bulk) for m in meta]
    else:
        path = Path(text)
        if path.suffix.lower() != ".dcm":
            raise PredictionError(
                f"{path.name}: DICOM results need a DICOM slide (a DICOMweb series URL or "
                "DICOM-WSI files); this slide is not DICOM, so there is no study to add them to"
            )
        sets = []
        for f in sorted(path.parent.glob("*.dcm")):
            try:
                sets.append(pydicom.dcmread(f, stop_before_pixels=True))
            except Exception:  # noqa: BLE001 - not every .dcm beside it need be ours
                continue
        first = pydicom.dcmread(path, stop_before_pixels=True)
        sets = [d for d in sets if d.get("SeriesInstanceUID") == first.SeriesInstanceUID]
    vols = [d for d in sets if len(d.get("ImageType", [])) >= 3 and d.ImageType[2] == "VOLUME"
            and "TotalPixelMatrixColumns" in d]
    if not vols:
        raise PredictionError(f"{text}: the series holds no slide-microscopy VOLUME image")
    widest = max(int(d.TotalPixelMatrixColumns) for d in vols)
    return [d for d in vols if int(d.TotalPixelMatrixColumns) == widest]


def bundle_sha256(model: dict) -> str:
    """SHA-256 (hex) of the model bundle file named in the prediction ("unknown" if gone)."""
    path = model.get("path")
    if not path or not os.path.isfile(path):
        return "unknown"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def _provenance(report: dict) -> dict[str, str]:
    model = report.get("model") or {}
    prov = model.get("provenance") or {}
    version = str(model.get("version") or prov.get("version") or model.get("package_version")
                  or "unversioned")
    return {"name": str(model.get("name") or "model"), "version": version,
            "sha256": str(model.get("sha256") or bundle_sha256(model))}


def _describe(kind: str, prov: dict[str, str]) -> str:
    """A series description (LO, at most 64 characters)."""
    tail = f", {RESEARCH_ONLY}"
    head = f"{kind}: {prov['name']} {prov['version']} {prov['sha256'][:8]}"
    return head[: 64 - len(tail)] + tail


# --------------------------------------------------------------------------- SR


def _num(name: str, meaning: str, number: float, unit=None):
    from highdicom.sr import NumContentItem

    return NumContentItem(name=_code(name, meaning), value=float(number),
                          unit=unit or _unit("1", "no units"), relationship_type="CONTAINS")


def _text(name: str, meaning: str, text: str):
    from highdicom.sr import TextContentItem

    return TextContentItem(name=_code(name, meaning), value=str(text)[:1024] or "-",
                           relationship_type="CONTAINS")


def _container(name: str, meaning: str, items: list):
    from highdicom.sr import ContainerContentItem

    c = ContainerContentItem(name=_code(name, meaning), relationship_type="CONTAINS")
    c.ContentSequence = items
    return c


def _sr_use(report: dict, prov: dict) -> list:
    return [_text("USE", "Intended use", f"{RESEARCH_ONLY}; {report.get('intended_use', '')}")]


def _sr_model(report: dict, prov: dict) -> list:
    model = report.get("model") or {}
    enc = (model.get("encoder") or {}).get("name", "")
    return [_container("MODEL", "Model", [
        _text("MODEL-NAME", "Model name", prov["name"]),
        _text("MODEL-VERSION", "Model version", prov["version"]),
        _text("MODEL-SHA256", "Model bundle SHA-256", prov["sha256"]),
        _text("MODEL-ARCH", "Model architecture", model.get("architecture", "")),
        _text("MODEL-ENCODER", "Patch encoder", enc),
        _text("SOFTWARE", "Software", f"{MANUFACTURER} {report.get('package_version', __version__)}"),
    ])]


def _sr_slide(report: dict, prov: dict) -> list:
    slide = report.get("slide") or {}
    return [_container("SLIDE", "Slide", [
        _text("SLIDE-NAME", "Slide", slide.get("path") or slide.get("name", "")),
        _num("SLIDE-MPP", "Microns per pixel at level 0", slide.get("mpp") or 0.0,
             _unit("um/{pixel}", "micrometer per pixel")),
    ])]


def _sr_prediction(report: dict, prov: dict) -> list:
    p = report.get("prediction") or {}
    items = [
        _num("RISK", "Risk score", p["risk"]),
        _num("RISK-PCT", "Percentile in training cohort",
             p.get("percentile_in_training_cohort", float("nan")), _unit("%", "percent")),
        _text("RISK-GROUP", "Risk group", p.get("risk_group", "")),
        _text("RISK-DEF", "Risk definition", p.get("risk_definition", "")),
    ]
    edges = list(p.get("survival_bins_months") or [])
    surv = list(p.get("survival") or [])
    curve = []
    for k, s in enumerate(surv):
        edge = edges[k + 1] if k + 1 < len(edges) else None
        if edge is None or not math.isfinite(float(edge)):
            curve.append(_num("SURV-LAST", "Survival probability at the end of the last bin", s))
        else:
            curve.append(_num(f"SURV-{float(edge):g}", f"Survival probability at {float(edge):g} "
                                                       "months", s))
    items.append(_container("SURVIVAL", "Survival probability at each bin edge", curve))
    return items


def _sr_counts(report: dict, prov: dict) -> list:
    patches = report.get("patches") or {}
    items = [_num("N-PATCHES", "Patches scored", patches.get("count", 0),
                  _unit("{patches}", "patches"))]
    qc = report.get("qc")
    if qc:
        flagged = qc.get("flagged") or {}
        items.append(_num("QC-N", "Patches checked by QC", qc.get("n_patches", 0),
                          _unit("{patches}", "patches")))
        for key in ("total", "pen", "fold", "blur"):
            items.append(_num(f"QC-{key.upper()}", f"Patches flagged by QC ({key})",
                              flagged.get(key, 0), _unit("{patches}", "patches")))
    cats = [c.get("category", "") for c in report.get("pathways") or []]
    if cats:
        items.append(_text("CATEGORIES", "Genome categories (index order)",
                           "; ".join(f"{i}: {c}" for i, c in enumerate(cats, start=1))))
    return [_container("COUNTS", "Counts", items)]


def _sr_distribution(report: dict, prov: dict) -> list:
    """The out-of-distribution verdict (whether the slide is like the model's training
    slides), where the prediction has one."""
    dist = report.get("distribution")
    if not isinstance(dist, dict) or not dist.get("verdict"):
        return []
    items = [_text("OOD-VERDICT", "Training-distribution verdict", dist["verdict"])]
    reasons = dist.get("reasons") or []
    if reasons:
        items.append(_text("OOD-REASONS", "Training-distribution reasons",
                           "; ".join(str(r) for r in reasons)))
    if dist.get("note"):
        items.append(_text("OOD-NOTE", "Training-distribution note", dist["note"]))
    return [_container("OOD", "Training distribution", items)]


#: the sections of the SR, in order; each takes (the prediction's report dict, the model
#: provenance dict) and returns content items. Append a function to add a section.
SR_SECTIONS: list[Callable[[dict, dict], list]] = [
    _sr_use, _sr_model, _sr_slide, _sr_prediction, _sr_counts, _sr_distribution,
]


def build_report(report: dict, sources: list, series_uid: str | None = None):
    """The Comprehensive SR of a prediction's report dict (see the module docstring)."""
    import highdicom as hd
    from highdicom.sr import ContainerContentItem

    prov = _provenance(report)
    root = ContainerContentItem(name=_code("GHANET-REPORT", "G-HANet prognosis report"))
    items = []
    for section in SR_SECTIONS:
        items += section(report, prov)
    root.ContentSequence = items
    sr = hd.sr.ComprehensiveSR(
        evidence=sources, content=root, series_instance_uid=series_uid or hd.UID(),
        series_number=9001, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True,
    )
    sr.SeriesDescription = _describe("SR", prov)
    return sr


# --------------------------------------------------------------------------- images


def _geometry(source, x0: float, y0: float, spacing_px: float, mpp: float):
    """Plane position, orientation and pixel measures of an image whose first pixel covers
    the level-0 pixels from (x0, y0) and whose pixels are ``spacing_px`` level-0 pixels
    wide, in the source's frame of reference (positions are of pixel centres)."""
    import highdicom as hd

    orient = [float(v) for v in source.ImageOrientationSlide]
    origin = source.TotalPixelMatrixOriginSequence[0]
    ox, oy = float(origin.XOffsetInSlideCoordinateSystem), float(origin.YOffsetInSlideCoordinateSystem)
    spacing = [float(v) for v in source.SharedFunctionalGroupsSequence[0]
               .PixelMeasuresSequence[0].PixelSpacing]  # mm: row, column
    # DICOM positions are pixel centres: the first map pixel's centre in level-0 pixels
    cx, cy = x0 + (spacing_px - 1) / 2.0, y0 + (spacing_px - 1) / 2.0
    # level-0 pixel (column, row) -> slide (mm): origin + column * row cosines * column
    # spacing + row * column cosines * row spacing
    x = ox + cx * orient[0] * spacing[1] + cy * orient[3] * spacing[0]
    y = oy + cx * orient[1] * spacing[1] + cy * orient[4] * spacing[0]
    thickness = None
    try:
        thickness = float(source.SharedFunctionalGroupsSequence[0]
                          .PixelMeasuresSequence[0].SliceThickness)
    except (AttributeError, IndexError, TypeError, ValueError):
        thickness = None
    step_mm = spacing_px * mpp / 1000.0
    return (
        [hd.PlanePositionSequence("SLIDE", (x, y, 0.0), pixel_matrix_position=(1, 1))],
        hd.PlaneOrientationSequence("SLIDE", orient),
        hd.PixelMeasuresSequence((step_mm, step_mm), thickness),
    )


def grid_image(coords: np.ndarray, step: float, values_: np.ndarray, fill: float = 0.0):
    """Per-patch values on the patch grid: (ny, nx[, C]) float32 and the grid origin
    (level-0 px of the first cell's top-left corner).

    Examples
    --------
    >>> img, origin = grid_image(np.array([[256, 0], [0, 256]]), 256, np.array([1.0, 2.0]))
    >>> img.tolist(), origin
    ([[0.0, 1.0], [2.0, 0.0]], (0, 0))
    """
    coords = np.asarray(coords, dtype=np.int64)
    x0, y0 = int(coords[:, 0].min()), int(coords[:, 1].min())
    x0, y0 = x0 % int(step) if x0 >= step else x0, y0 % int(step) if y0 >= step else y0
    ix = np.round((coords[:, 0] - x0) / step).astype(np.int64)
    iy = np.round((coords[:, 1] - y0) / step).astype(np.int64)
    shape = (int(iy.max()) + 1, int(ix.max()) + 1) + tuple(np.shape(values_)[1:])
    img = np.full(shape, fill, dtype=np.float32)
    img[iy, ix] = values_
    return img, (x0, y0)


def _equipment(prov: dict) -> dict[str, Any]:
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": f"{prov['name']} {prov['version']}"[:64],
            "software_versions": __version__, "device_serial_number": prov["sha256"][:64]}


def build_attention_map(prediction, report: dict, sources: list):
    """The Parametric Map of the morphology attention (channel 1) and the genome-informed
    attention of each category (further channels) on the patch grid."""
    import highdicom as hd

    prov = _provenance(report)
    step = float(prediction.step_level0)
    values_ = np.column_stack([prediction.morphology_attention,
                               np.asarray(prediction.genome_attention).T])
    img, (x0, y0) = grid_image(prediction.coords, step, values_)
    positions, orientation, measures = _geometry(sources[0], x0, y0, step,
                                                 float(report["slide"]["mpp"]))
    names = ["morphology attention"] + [f"genome attention: {c}" for c in
                                        prediction.category_names]
    maps = []
    for k, name in enumerate(names):
        hi = float(np.max(img[..., k])) if img.size else 1.0
        maps.append([hd.pm.RealWorldValueMapping(
            lut_label=("morphology" if k == 0 else f"genome {k}")[:16],
            lut_explanation=name[:64], unit=_unit("1", "no units"),
            value_range=(0.0, max(hi, 1e-12)), slope=1.0, intercept=0.0,
        )])
    pm = hd.pm.ParametricMap(
        source_images=sources, pixel_array=img[None], series_instance_uid=hd.UID(),
        series_number=9002, sop_instance_uid=hd.UID(), instance_number=1,
        contains_recognizable_visual_features=False, real_world_value_mappings=maps,
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=float(np.max(img[..., 0])) / 2 or 0.5,
            window_width=float(np.max(img[..., 0])) or 1.0)],
        pixel_measures=measures, plane_orientation=orientation, plane_positions=positions,
        content_label="ATTENTION", content_description=f"attention map, {RESEARCH_ONLY}",
        **_equipment(prov),
    )
    pm.SeriesDescription = _describe("attention", prov)
    return pm


def build_top_regions(prediction, report: dict, sources: list):
    """Microscopy Bulk Simple Annotations of the top regions (rectangles, level-0 px)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    prov = _provenance(report)
    regions = report.get("top_regions") or []
    if not regions:
        return None
    cats = [c.get("category", "") for c in report.get("pathways") or []] or list(
        prediction.category_names)
    rects = [np.array([[r["x"], r["y"]], [r["x"] + r["width"], r["y"]],
                       [r["x"] + r["width"], r["y"] + r["height"]],
                       [r["x"], r["y"] + r["height"]]], dtype=np.float64) for r in regions]
    index = [float(cats.index(r["strongest_category"]) + 1) if r.get("strongest_category") in cats
             else 0.0 for r in regions]
    measurements = [
        hd.ann.Measurements(_code("RANK", "Rank by attention"),
                            np.array([r["rank"] for r in regions], float), _unit("1", "no units")),
        hd.ann.Measurements(_code("ATTN", "Morphology attention"),
                            np.array([r["morphology_attention"] for r in regions], float),
                            _unit("1", "no units")),
        hd.ann.Measurements(_code("ATTN-PCT", "Attention percentile"),
                            np.array([r.get("attention_percentile", np.nan) for r in regions],
                                     float), _unit("%", "percent")),
        hd.ann.Measurements(_code("CAT-IDX", "Strongest category index"), np.array(index),
                            _unit("1", "no units")),
    ]
    algo = hd.AlgorithmIdentificationSequence(
        name=prov["name"][:64], family=codes.cid7162.ArtificialIntelligence,
        version=prov["version"][:64], parameters={"bundle_sha256": prov["sha256"]})
    group = hd.ann.AnnotationGroup(
        number=1, uid=hd.UID(), label="top regions",
        annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        annotated_property_type=codes.SCT.Tissue,
        graphic_type="POLYGON", graphic_data=rects, algorithm_type="AUTOMATIC",
        algorithm_identification=algo, measurements=measurements,
        description=("strongest category index: "
                     + "; ".join(f"{i}={c}" for i, c in enumerate(cats, start=1)))[:1024],
    )
    ann = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=sources, annotation_coordinate_type="2D", annotation_groups=[group],
        series_instance_uid=hd.UID(), series_number=9003, sop_instance_uid=hd.UID(),
        instance_number=1, content_label="TOPREGIONS",
        content_description=f"top regions, {RESEARCH_ONLY}", **_equipment(prov),
    )
    ann.SeriesDescription = _describe("regions", prov)
    return ann


def build_qc_segmentation(prediction, report: dict, sources: list):
    """Binary Segmentation of the tissue mask (segment 1) and the QC-flagged patches
    (segment 2, when any) at the tissue mask's resolution; None without QC."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    prov = _provenance(report)
    if not report.get("qc") or prediction.tissue_mask is None:
        return None
    tissue = np.asarray(prediction.tissue_mask, dtype=bool)
    ds = float(prediction.tissue_downsample)
    flagged = np.zeros_like(tissue)
    qc = np.asarray(prediction.qc_coords).reshape(-1, 2)
    size = float(prediction.patch_size_level0)
    for x, y in qc:
        r0, c0 = int(y // ds), int(x // ds)
        flagged[r0: int(math.ceil((y + size) / ds)), c0: int(math.ceil((x + size) / ds))] = True
    algo = hd.AlgorithmIdentificationSequence(
        name=prov["name"][:64], family=codes.cid7162.ArtificialIntelligence,
        version=prov["version"][:64], parameters={"bundle_sha256": prov["sha256"]})
    descs = [hd.seg.SegmentDescription(
        segment_number=1, segment_label="tissue", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type="AUTOMATIC",
        algorithm_identification=algo)]
    arr = tissue[None, :, :, None].astype(np.uint8)
    if flagged.any():
        descs.append(hd.seg.SegmentDescription(
            segment_number=2, segment_label="QC flagged",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Artifact if hasattr(codes.SCT, "Artifact")
            else codes.SCT.MorphologicallyAbnormalStructure,
            algorithm_type="AUTOMATIC", algorithm_identification=algo))
        arr = np.stack([tissue, flagged], axis=-1)[None].astype(np.uint8)
    positions, orientation, measures = _geometry(sources[0], 0.0, 0.0, ds,
                                                 float(report["slide"]["mpp"]))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=arr, segmentation_type="BINARY",
        segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=9004,
        sop_instance_uid=hd.UID(), instance_number=1, pixel_measures=measures,
        plane_orientation=orientation, plane_positions=positions, omit_empty_frames=False,
        content_label="TISSUEQC", content_description=f"tissue and QC, {RESEARCH_ONLY}",
        **_equipment(prov),
    )
    seg.SeriesDescription = _describe("tissue/QC", prov)
    return seg


# --------------------------------------------------------------------------- checks


def _reread(ds):
    import pydicom

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), pydicom.dcmread(io.BytesIO(buf.getvalue()))


def check_object(ds, sources: list) -> bytes:
    """Validate one result object with highdicom and return its Part-10 bytes.

    The object is written, read back and parsed by highdicom's reader for its kind (SR,
    Segmentation, Bulk Annotations, Parametric Map); it must belong to the slide's study,
    use its frame of reference (images) and reference its source instance."""
    import highdicom as hd

    data, back = _reread(ds)
    src = sources[0]
    kind = str(back.SOPClassUID)
    try:
        if kind in hd.ann.SOP_CLASS_UIDS if hasattr(hd.ann, "SOP_CLASS_UIDS") else False:
            hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(back)
        elif back.Modality == "SR":
            hd.sr.ComprehensiveSR.from_dataset(back)
        elif back.Modality == "SEG":
            hd.seg.Segmentation.from_dataset(back)
        else:
            hd.pm.ParametricMap.from_dataset(back) if hasattr(hd.pm.ParametricMap,
                                                             "from_dataset") else None
    except Exception as exc:
        raise PredictionError(f"the DICOM {back.Modality} result does not pass highdicom's "
                              f"checks: {type(exc).__name__}: {exc}") from exc
    problems = []
    if back.StudyInstanceUID != src.StudyInstanceUID:
        problems.append("not in the slide's study")
    if back.SeriesInstanceUID == src.SeriesInstanceUID:
        problems.append("in the slide's own series")
    # (2D bulk annotations are in the source image's pixels: their link is the reference)
    spatial = back.Modality in ("SEG", "OT", "PMAP") or "FrameOfReferenceUID" in back
    if spatial and back.get("FrameOfReferenceUID") != src.FrameOfReferenceUID:
        problems.append("not in the slide's frame of reference")
    if src.SOPInstanceUID not in data.decode("latin-1"):
        problems.append("no reference to the source instance")
    if problems:
        raise PredictionError(f"the DICOM {back.Modality} result is {', '.join(problems)}")
    return data


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays, paths and the rest as JSON values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def dicom_results(prediction, sources: list | None = None) -> list[tuple[str, Any, bytes]]:
    """(kind, dataset, Part-10 bytes) of every result object, each validated.

    ``sources``: the slide's level-0 DICOM datasets (default: :func:`source_datasets` of
    the prediction's slide)."""
    import json

    if getattr(prediction, "n_slides", 1) > 1:
        raise PredictionError("DICOM results are written for one slide at a time; a patient's "
                              "several slides have several studies or series")
    report = json.loads(json.dumps(prediction.to_dict(), default=_plain))
    if sources is None:
        sources = source_datasets(report["slide"]["path"])
    built = [("report", build_report(report, sources)),
             ("attention", build_attention_map(prediction, report, sources)),
             ("top_regions", build_top_regions(prediction, report, sources)),
             ("tissue_qc", build_qc_segmentation(prediction, report, sources))]
    return [(kind, ds, check_object(ds, sources)) for kind, ds in built if ds is not None]


def write_dicom(results: list[tuple[str, Any, bytes]], folder: str | os.PathLike,
                stem: str) -> dict[str, Path]:
    """Write the results as ``FOLDER/<stem>.<kind>.dcm`` (atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = make_safe_name(stem)
    written = {}
    for kind, _, data in results:
        path = folder / f"{stem}.{kind}.dcm"
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        written[f"dicom_{kind}"] = path
    return written


def store_dicom(results: list[tuple[str, Any, bytes]], root: str,
                client: DicomWebClient | None = None) -> list[str]:
    """Store the results on a DICOMweb server (STOW-RS) as one set: all or none.

    After storing, each object is looked for with QIDO-RS; when some are missing (or the
    store failed part-way), the stored ones are deleted where the server allows it, else
    the error lists exactly which objects are on the server. Returns the stored series
    URLs."""
    client = client or DicomWebClient(root)
    study = str(results[0][1].StudyInstanceUID)
    expected = {str(ds.SOPInstanceUID): (str(ds.SeriesInstanceUID), kind)
                for kind, ds, _ in results}
    error: DicomWebError | None = None
    try:
        client.stow([data for _, _, data in results], study=study)
    except DicomWebError as exc:
        error = exc
    present = _present(client, study, expected)
    if error is None and len(present) == len(expected):
        return sorted({f"{client.root}/studies/{study}/series/{s}" for s, _ in expected.values()})
    why = str(error) if error else (f"{len(expected) - len(present)} of {len(expected)} "
                                    "objects are missing after the store")
    removed = all(client.delete_series(study, s) for s in {expected[u][0] for u in present})
    left = _present(client, study, expected) if present else set()
    if not left:
        raise DicomWebError(f"{client.server}: storing the results failed ({why}); "
                            "nothing of them is left on the server")
    names = ", ".join(f"{expected[u][1]} (series {expected[u][0]}, instance {u})"
                      for u in sorted(left))
    raise DicomWebError(f"{client.server}: storing the results failed ({why}); "
                        f"{'some could not be deleted' if removed else 'the server does not allow deleting them'}"
                        f"; on the server now: {names}")


def _present(client: DicomWebClient, study: str, expected: dict) -> set[str]:
    """The expected SOP Instance UIDs the server lists (QIDO-RS)."""
    found: set[str] = set()
    for series in sorted({s for s, _ in expected.values()}):
        try:
            rows = client.search_instances(study, series)
        except DicomWebError:
            continue
        found |= {str(value(r, "00080018")) for r in rows}
    return found & set(expected)


def write_dicom_folder(prediction, path: str | os.PathLike) -> Path:
    """The export registry's ``dicom`` kind: the validated results as
    ``PATH/<stem>.<kind>.dcm`` (``PATH`` is ``<stem>.dicom``)."""
    path = Path(path)
    stem = path.name[: -len(".dicom")] if path.name.endswith(".dicom") else path.name
    write_dicom(dicom_results(prediction), path, stem or "slide")
    return path
