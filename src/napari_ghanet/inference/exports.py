"""Exports of a :class:`~napari_ghanet.inference.result.Prediction`: the JSON report, the
per-patch CSV and the QuPath GeoJSON, each written atomically.

Each writer is registered once in :mod:`.export_registry` (its key, default file name and
options), which the dock, ``ghanet predict`` and the cohort runs read.
Coordinates are level-0 pixels, (x, y) top-left corners. A several-slide (patient)
prediction adds a ``slide`` column to the CSV and a ``slide`` property to the GeoJSON.

The CSV and GeoJSON of a whole slide (20,000-150,000 patches) are formatted a block of
rows at a time from numpy columns (one ``%`` template per row, numbers as ``csv`` and
``json`` would write them: the files are byte-identical to ``csv.writer`` and
``json.dumps(geojson_dict(...))``) and streamed into the temporary file that replaces
the target at the end, so a GeoJSON of 20,000 patches takes about a tenth of a second and
no whole-file string is held in memory.

Examples
--------
>>> from napari_ghanet.inference.exports import _column_name
>>> _column_name("Cytokines and Growth Factors")
'Cytokines_and_Growth_Factors'
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.errors import ArgumentError
from napari_ghanet.inference.checks import check_prediction_finite
from napari_ghanet.inference.overlays import percentile_normalise
from napari_ghanet.inference.result import Prediction
from napari_ghanet.io.atomic import atomic_path, atomic_write
from napari_ghanet.io.features import json_default

__all__ = [
    "geojson_dict",
    "geojson_lines",
    "patch_table",
    "write_geojson",
    "strict_json",
    "write_patch_csv",
    "write_report_json",
]


def strict_json(obj):
    """``obj`` with non-finite floats (an infinite last bin edge, a NaN) replaced by None,
    so ``json.dumps(..., allow_nan=False)`` writes standard JSON.

    >>> strict_json({"edges": [0.0, float("inf")], "p": float("nan")})
    {'edges': [0.0, None], 'p': None}
    """
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report_json(prediction: Prediction, path: str | os.PathLike) -> Path:
    """The JSON report (all numbers, model provenance, intended use), written atomically."""
    check_prediction_finite(prediction)  # refuse non-finite numbers before writing
    report = json.loads(json.dumps(prediction.to_dict(), default=json_default))
    text = json.dumps(strict_json(report), indent=2, allow_nan=False)
    return atomic_write(path, text + "\n")


def patch_table(prediction: Prediction) -> tuple[list[str], np.ndarray]:
    """Column names and a float64 (N, 5 + T) table: x, y, width, height, morphology
    attention and one genome-informed attention column per category (and, for several
    slides, the patch's slide index last)."""
    names = ["x", "y", "width", "height", "morphology_attention"] + [
        f"genome_attention_{_column_name(c)}" for c in prediction.category_names
    ]
    size = prediction.patch_sizes_level0()
    columns = [
        prediction.coords[:, 0],
        prediction.coords[:, 1],
        size,
        size,
        prediction.morphology_attention,
        prediction.genome_attention.T,
    ]
    if prediction.n_slides > 1:
        names.append("slide")
        columns.append(prediction.slide_index)
    return names, np.column_stack(columns).astype(np.float64)


def _column_name(name: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in name.strip())
    return "_".join(p for p in out.split("_") if p) or "category"


def write_patch_csv(prediction: Prediction, path: str | os.PathLike) -> Path:
    """Per-patch CSV: x, y, width, height (level-0 px), morphology attention and the
    genome-informed attention of each category; written atomically.

    Integers as written by ``str(int)``, attentions as ``%.9g``, rows ending in ``\\n``
    (what ``csv.writer(lineterminator="\\n")`` writes for these names and numbers)."""
    check_prediction_finite(prediction)  # refuse non-finite numbers before writing
    names, table = patch_table(prediction)
    n_att = 1 + len(prediction.category_names)
    n_int_after = table.shape[1] - 4 - n_att  # the slide column of several slides
    row = ",".join(["%d"] * 4 + ["%.9g"] * n_att + ["%d"] * n_int_after) + "\n"
    header = ",".join(_csv_field(n) for n in names) + "\n"

    def chunks() -> Iterator[str]:
        yield header
        for lo in range(0, len(table), _BLOCK):
            yield "".join(row % tuple(r) for r in table[lo : lo + _BLOCK].tolist())

    return _write_chunks(path, chunks())


#: rows formatted per block when streaming the CSV and GeoJSON files
_BLOCK = 4096


def _csv_field(text: str) -> str:
    """``text`` as the csv module's default dialect writes one field."""
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _write_chunks(path: str | os.PathLike, chunks) -> Path:
    """Write the text ``chunks`` (UTF-8) to ``path`` atomically, flushed to disk."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    return path


def geojson_dict(prediction: Prediction, object_type: str = "tile") -> dict[str, Any]:
    """GeoJSON FeatureCollection of the patch tiles (level-0 pixel coordinates) with
    their attentions as QuPath ``measurements`` (QuPath >= 0.4 layout)."""
    if object_type not in ("tile", "detection", "annotation"):
        raise ArgumentError(f"object_type must be tile, detection or annotation, got {object_type}")
    names, table = patch_table(prediction)
    measure_names = ["Morphology attention"] + [
        f"Genome attention: {c}" for c in prediction.category_names
    ]
    pct = 100.0 * percentile_normalise(prediction.morphology_attention)
    several = prediction.n_slides > 1
    features = []
    for i, row in enumerate(table):
        x, y, w, h = (int(v) for v in row[:4])
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        measurements = {m: float(v) for m, v in zip(measure_names, row[4:])}
        measurements["Morphology attention percentile"] = float(pct[i])
        extra = {}
        if several:
            s = int(prediction.slide_index[i])
            extra = {"slide": s, "slideName": prediction.slides[s].get("name", str(s))}
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.UUID(int=i + 1)),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": object_type,
                    "isLocked": True,
                    "name": f"patch {i}",
                    "measurements": measurements,
                }
                | extra,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _feature_id(n: int) -> str:
    """``str(uuid.UUID(int=n))``, fast for n < 16**12."""
    return f"00000000-0000-0000-0000-{n:012x}" if n < 16**12 else str(uuid.UUID(int=n))


def geojson_lines(prediction: Prediction, object_type: str = "tile") -> Iterator[str]:
    """The text of ``json.dumps(geojson_dict(prediction, object_type))``, in pieces (one
    block of features each), formatted from numpy columns: equal, character for
    character, to the ``json`` module's output (ints as ``int.__repr__``, floats as
    ``float.__repr__``, strings escaped by ``json.dumps``)."""
    if object_type not in ("tile", "detection", "annotation"):
        raise ArgumentError(f"object_type must be tile, detection or annotation, got {object_type}")
    names, table = patch_table(prediction)
    n_att = 1 + len(prediction.category_names)
    measure_names = ["Morphology attention"] + [
        f"Genome attention: {c}" for c in prediction.category_names
    ] + ["Morphology attention percentile"]
    pct = 100.0 * percentile_normalise(prediction.morphology_attention)
    several = prediction.n_slides > 1
    # one template per feature: "%s" slots for the id, the ring, the name and the numbers
    measurements = ", ".join(f"{json.dumps(m)}: %s" for m in measure_names)
    extra = ', "slide": %s, "slideName": %s' if several else ""
    template = (
        '{"type": "Feature", "id": "%s", "geometry": {"type": "Polygon", "coordinates": '
        '[[[%d, %d], [%d, %d], [%d, %d], [%d, %d], [%d, %d]]]}, "properties": {"objectType": '
        + json.dumps(object_type) + ', "isLocked": true, "name": "patch %d", "measurements": {'
        + measurements + "}" + extra + "}}"
    )
    slide_names = [json.dumps(s.get("name", str(k))) for k, s in enumerate(prediction.slides)]
    xywh = table[:, :4].astype(np.int64)
    values = np.concatenate([table[:, 4 : 4 + n_att], pct.astype(np.float64)[:, None]], axis=1)
    slide_index = np.asarray(prediction.slide_index, np.int64)
    yield '{"type": "FeatureCollection", "features": ['
    for lo in range(0, len(table), _BLOCK):
        parts = []
        block = zip(xywh[lo : lo + _BLOCK].tolist(), values[lo : lo + _BLOCK].tolist(),
                    slide_index[lo : lo + _BLOCK].tolist())
        for i, ((x, y, w, h), vals, s) in enumerate(block, start=lo):
            ring = (x, y, x + w, y, x + w, y + h, x, y + h, x, y)
            numbers = tuple(map(float.__repr__, vals))
            tail = (s, slide_names[s]) if several else ()
            parts.append(template % ((_feature_id(i + 1),) + ring + (i,) + numbers + tail))
        yield (", " if lo else "") + ", ".join(parts)
    yield "]}"


def write_geojson(
    prediction: Prediction, path: str | os.PathLike, object_type: str = "tile"
) -> Path:
    """GeoJSON of the patch tiles with attention measurements, which QuPath imports
    (File > Import objects, or drag and drop) and shows as a measurement map
    (Measure > Show measurement maps). Written atomically, streamed a block of features
    at a time (:func:`geojson_lines`: the text ``json.dumps(geojson_dict(...))`` gives)."""
    check_prediction_finite(prediction)  # refuse non-finite numbers before writing
    lines = geojson_lines(prediction, object_type)
    return _write_chunks(path, _then(lines, "\n"))


def _then(chunks: Iterator[str], last: str) -> Iterator[str]:
    yield from chunks
    yield last
