"""The streamed CSV and GeoJSON writers at a few thousand patches: the same text as the
csv and json modules write (one and two slides, names to escape), written atomically."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from _large_prediction import large_prediction
from _plugin_helpers import SIZES
from napari_ghanet.inference import exports

#: category names the formats must escape: non-ASCII, quotes, a backslash, a comma
ODD_NAMES = ["Tumör suppression", 'The "oncogenes"', "Kinases \\ phosphatases",
             "Differentiation, cell", "Transcription – factors", "Cytokines/growth"]


@pytest.fixture(scope="module")
def one_slide(tmp_path_factory):
    categories = [{"name": name, "genes": [f"G{i}{j}" for j in range(s)]}
                  for i, (name, s) in enumerate(zip(ODD_NAMES, SIZES))]
    return large_prediction(tmp_path_factory.mktemp("one"), 3000, categories=categories)


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory):
    p = large_prediction(tmp_path_factory.mktemp("two"), 1500, slides=2, seed=1)
    p.slides[1]["name"] = 'second "ß" slide.svs'
    return p


def _reference_csv(p) -> str:
    """The per-patch CSV as the csv module wrote it before streaming."""
    names, table = exports.patch_table(p)
    n_att = 1 + len(p.category_names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in table:
        writer.writerow([str(int(v)) for v in row[:4]]
                        + [f"{float(v):.9g}" for v in row[4 : 4 + n_att]]
                        + [str(int(v)) for v in row[4 + n_att :]])
    return buf.getvalue()


@pytest.mark.parametrize("which", ["one_slide", "two_slides"])
def test_geojson_is_json_dumps_of_geojson_dict(which, request, tmp_path):
    p = request.getfixturevalue(which)
    assert p.n_patches >= 3000
    path = exports.write_geojson(p, tmp_path / "p.geojson")
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(exports.geojson_dict(p), allow_nan=False) + "\n"
    features = json.loads(text)["features"]
    assert len(features) == p.n_patches
    # a known patch: its ring in level-0 pixels and its attentions
    i = p.top_regions[0].index
    x, y = (int(v) for v in p.coords[i])
    size = int(p.patch_sizes_level0()[i])
    assert features[i]["geometry"]["coordinates"][0][2] == [x + size, y + size]
    m = features[i]["properties"]["measurements"]
    assert m["Morphology attention"] == float(p.morphology_attention[i])
    assert m["Morphology attention percentile"] == 100.0
    name = p.category_names[1]
    assert m[f"Genome attention: {name}"] == float(p.genome_attention[1, i])
    if p.n_slides > 1:
        last = features[-1]["properties"]
        assert last["slide"] == 1 and last["slideName"] == 'second "ß" slide.svs'
    detection = tmp_path / "d.geojson"
    exports.write_geojson(p, detection, "detection")
    assert detection.read_text(encoding="utf-8") == json.dumps(
        exports.geojson_dict(p, "detection")) + "\n"


@pytest.mark.parametrize("which", ["one_slide", "two_slides"])
def test_csv_is_what_csv_writer_writes(which, request, tmp_path):
    p = request.getfixturevalue(which)
    path = exports.write_patch_csv(p, tmp_path / "p.csv")
    text = path.read_text(encoding="utf-8")
    assert text == _reference_csv(p)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == p.n_patches
    i = p.top_regions[0].index
    assert (int(rows[i]["x"]), int(rows[i]["y"])) == tuple(int(v) for v in p.coords[i])
    assert float(rows[i]["morphology_attention"]) == pytest.approx(
        float(p.morphology_attention[i]), rel=1e-8)
    assert ("slide" in rows[0]) == (p.n_slides > 1)


def test_streamed_writes_are_atomic(one_slide, tmp_path, monkeypatch):
    target = tmp_path / "p.geojson"
    target.write_text("old\n")
    real = exports.geojson_lines

    def failing(prediction, object_type="tile"):
        lines = real(prediction, object_type)
        yield next(lines)
        yield next(lines)
        raise OSError("disk full")

    monkeypatch.setattr(exports, "geojson_lines", failing)
    with pytest.raises(OSError, match="disk full"):
        exports.write_geojson(one_slide, target)
    assert target.read_text() == "old\n"  # the old file, whole
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.geojson"]  # no temporary left
    monkeypatch.undo()
    with pytest.raises(ValueError, match="object_type"):
        exports.write_geojson(one_slide, target, "cell")
    assert target.read_text() == "old\n"
    bad = one_slide.morphology_attention.copy()
    bad[5] = np.nan
    broken = type(one_slide)(**{**one_slide.__dict__, "morphology_attention": bad})
    with pytest.raises(Exception, match="(?i)finite|nan"):
        exports.write_patch_csv(broken, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
