"""Hostile text inputs (issue 26): manifests, survival tables, ROI GeoJSON, files that are
not files, late failures made early, and what a newcomer trips over.

Each family has regression tests on crafted inputs (one clear line, never a traceback or a
hang) and a seeded property test (hypothesis, derandomized) that generates new variants:
whatever the bytes, the reader returns a checked result or raises the family's
``GHANetError`` subclass.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _plugin_helpers import FAST_ENCODER, make_bundle, need, tissue_rgb, write_tiff_slide
from napari_ghanet.cli import main
from napari_ghanet.cli import predict as cli_predict
from napari_ghanet.cohort import api as cohort_api
from napari_ghanet.cohort.inputs import SlideInputError, read_manifest, resolve_inputs
from napari_ghanet.cohort.report import read_survival
from napari_ghanet.errors import CohortError, GHANetError, NotWritableError, RegionError, SlideError
from napari_ghanet.inference.stages.assemble import DEMO_MODEL_WARNING
from napari_ghanet.io.names import check_name_fits
from napari_ghanet.io.safe_read import read_csv_rows
from napari_ghanet.io.slide import open_slide
from napari_ghanet.models.bundle import demo_bundle_path
from napari_ghanet.preprocessing.roi import read_geojson

#: seeded, bounded property tests: the same examples on every run, seconds in all
FUZZ = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
#: no surrogates (they cannot be written as UTF-8)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]


def _fifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (never read whole by the code)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)  # quotes any cell with \r or \n
    return buf.getvalue()


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------------------------------ manifests
@pytest.fixture
def slides(tmp_path) -> list[Path]:
    d = tmp_path / "slides"
    d.mkdir()
    out = []
    for n in ("a.svs", "b.tif"):
        (d / n).write_bytes(b"x")
        out.append(d / n)
    return out


def test_manifest_extra_columns_are_ignored_with_one_note(tmp_path, slides):
    man = tmp_path / "m.csv"
    man.write_text(_csv_text([["slide", "mpp", "Notes", "case_id", "scanner"],
                              [str(slides[0]), "0.25", "x, y", "P1", "GT450"],
                              [str(slides[1]), "", "", "P2", ""]]))
    notes = []
    items = read_manifest(man, notify=notes.append)
    assert [(i.name, i.mpp, i.case_id) for i in items] == [("a.svs", 0.25, "P1"),
                                                          ("b.tif", None, "P2")]
    assert len(notes) == 1 and "'Notes', 'scanner' ignored" in notes[0]


@pytest.mark.parametrize(("content", "match"), [
    (b"slide\na.svs,0.5\n", r"line 2 has 2 cells but the header names 1 column"),
    (b"slide,mpp\n\xff\xfe a.svs\n", r"is not UTF-8 text \(byte \d+\)"),
    (b"slide\n" + b"a" * 200_000 + b".svs\n", r"line 2: a field is longer than 131072"),
    (b"slide\na.svs\x00\n", r"line 2 holds a NUL byte"),
    (b"slide\n\"a.svs\n", r"line 2: not valid CSV"),
    (b"", r"is empty"),
    (b"slide,slide\na.svs,b.svs\n", r"names column 'slide' twice"),
    (b"slide,mpp\na.svs,1e-400\n", r"line 2: mpp "),
    (b"slide,mpp\na.svs,300\n", r"line 2: mpp "),
    (b"slide,mpp\na.svs," + b"9" * 5000 + b"x\n", r"mpp '9{60}\.\.\. \(5001 characters\)' is not a number"),
])
def test_manifest_crafted_bytes_are_one_line(tmp_path, content, match):
    man = tmp_path / "m.csv"
    man.write_bytes(content)
    (tmp_path / "a.svs").write_bytes(b"x")
    with pytest.raises(SlideInputError, match=match) as e:
        read_manifest(man)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600


def test_manifest_too_large_is_refused_before_it_is_read(tmp_path):
    big = _sparse(tmp_path / "big.csv", 100 * 2**20)
    with pytest.raises(SlideInputError, match=r"is 100.0 MiB, larger than the 64.0 MiB"):
        read_manifest(big)


def test_manifest_rows_naming_folders_or_fifos_say_what_they_are(tmp_path):
    (tmp_path / "dir.svs").mkdir()
    _fifo(tmp_path / "pipe.svs")
    man = tmp_path / "m.csv"
    man.write_text("slide\ndir.svs\npipe.svs\nmissing.svs\n")
    with pytest.raises(SlideInputError) as e:
        read_manifest(man)
    text = str(e.value)
    assert "3 slide(s)" in text and "dir.svs (is a folder, not a file)" in text
    assert "pipe.svs (is not a regular file" in text and "missing.svs (not found)" in text


@FUZZ
@given(extra=st.lists(TEXT.filter(lambda h: h.strip() not in ("", "slide", "mpp", "case_id")),
                      max_size=3, unique_by=str.strip),
       cells=st.lists(st.lists(TEXT, min_size=3, max_size=3), min_size=2, max_size=2))
def test_fuzz_manifest_extra_columns_never_change_the_slides(tmp_path, slides, extra, cells):
    if any("\0" in c for row in cells for c in row) or any("\0" in h for h in extra):
        return  # a NUL byte is refused as a whole (test above)
    header = ["slide", *extra, "case_id"]
    rows = [[str(s), *cells[k][:len(extra)], f"P{k}"] for k, s in enumerate(slides)]
    man = tmp_path / "fuzz.csv"
    man.write_text(_csv_text([header, *rows]), encoding="utf-8")
    notes = []
    items = read_manifest(man, notify=notes.append)
    assert [(i.name, i.case_id) for i in items] == [("a.svs", "P0"), ("b.tif", "P1")]
    assert len(notes) == (1 if any(h.strip() for h in extra) else 0)


@FUZZ
@given(data=st.binary(max_size=400) | st.builds(
    lambda rows: _csv_text(rows).encode("utf-8"),
    st.lists(st.lists(TEXT | st.sampled_from(["slide", "mpp", "case_id", "a.svs", "nan",
                                              "-1", "1e999", "../x", ""]),
                      max_size=4), max_size=5)))
def test_fuzz_manifest_bytes_give_items_or_one_line(tmp_path, data):
    (tmp_path / "a.svs").write_bytes(b"x")
    man = tmp_path / "fuzz.csv"
    man.write_bytes(data)
    try:
        items = read_manifest(man, notify=lambda s: None)
    except GHANetError as e:  # SlideInputError or an unsafe case_id
        assert str(e) and "Traceback" not in str(e)
        return
    for it in items:
        assert Path(it.path).is_file()
        assert it.mpp is None or 0 < it.mpp <= 20


# ------------------------------------------------------------------------ survival tables
HEADER = "case_id,survival_months,censorship\n"


def test_duplicate_patient_ids_are_refused_with_the_ids_named(tmp_path):
    # kept silently, the last row won: the c-index of the same risks flipped 0.0 -> 1.0
    p = tmp_path / "s.csv"
    p.write_text(HEADER + "P1,10,0\nP2,20,0\nP1,30,0\nP3,5,1\nP3 ,6,1\n")
    with pytest.raises(CohortError) as e:
        read_survival(p)
    text = str(e.value)
    assert "'P1' (lines 2, 4)" in text and "'P3' (lines 5, 6)" in text
    assert "keep one row per case_id" in text and "P2" not in text


@pytest.mark.parametrize(("row", "match"), [
    ("P1,-3,0", r"line 2: survival_months must be 0 or more months, found -3"),
    ("P1,inf,0", r"line 2: survival_months must be a finite number of months, found 'inf'"),
    ("P1,1e999,0", r"must be a finite number of months, found '1e999'"),
    ("P1,NaN,0", r"must be a finite number of months, found 'NaN'"),
    ("P1,twelve,0", r"must be a finite number of months, found 'twelve'"),
    ("P1,3650,0", r"survival_months 3650 is more than 150 years; are the times in days"),
    ("P1,1e308,0", r"survival_months 1e308 is more than 150 years"),
    ("P1,,0", r"line 2: survival_months is empty"),
    ("P1,12,2", r"censorship must be 0 \(event\) or 1 \(censored\), found '2'"),
    ("P1,12,yes", r"censorship must be 0 \(event\) or 1 \(censored\), found 'yes'"),
    ("P1,12,nan", r"found 'nan'"),
    (",12,1", r"line 2: the case_id is empty"),
    ("P1,12,1,extra", r"line 2 has 4 cells but the header names 3 columns"),
])
def test_survival_bad_values_are_one_line_naming_the_line(tmp_path, row, match):
    p = tmp_path / "s.csv"
    p.write_text(HEADER + row + "\n")
    with pytest.raises(CohortError, match=match):
        read_survival(p)


@pytest.mark.parametrize(("content", "match"), [
    (b"", r"is empty"),
    (HEADER.encode(), r"has a header but no rows"),
    (HEADER.encode() + b"P\xe91,12,0\n", r"is not UTF-8 text"),
    (b"id,months\nP1,3\n", r"needs a case_id or slide column.*missing: survival_months, "
                           r"censorship, case_id/slide"),
])
def test_survival_bad_files_are_one_line(tmp_path, content, match):
    p = tmp_path / "s.csv"
    p.write_bytes(content)
    with pytest.raises(CohortError, match=match):
        read_survival(p)


def test_survival_good_table_and_slide_key(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("\ufeffslide, survival_months ,censorship,age\ns1.svs,0,1\ns2.svs, 12.5 ,0.0,71\n")
    assert read_survival(p) == ("slide", {"s1.svs": (0.0, 1), "s2.svs": (12.5, 0)})


def _valid_time(t: str) -> bool:
    try:
        v = float(t)
    except ValueError:
        return False
    return math.isfinite(v) and 0 <= v <= 1800


def _valid_event(c: str) -> bool:
    try:
        return float(c) in (0.0, 1.0)
    except ValueError:
        return False


@FUZZ
@given(rows=st.lists(st.tuples(
    st.sampled_from(["P1", "P2", "P3", " P1", "", "P4"]) | TEXT,
    st.sampled_from(["0", "12.5", "-1", "inf", "nan", "1e999", "3", "", " 7 ", "1800",
                     "1800.5", "3650"]) | TEXT,
    st.sampled_from(["0", "1", "1.0", "2", "", "-0", "yes"]) | TEXT,
), min_size=1, max_size=6))
def test_fuzz_survival_tables_parse_exactly_or_refuse(tmp_path, rows):
    p = tmp_path / "fuzz.csv"
    p.write_text("case_id,survival_months,censorship\n" + _csv_text([list(r) for r in rows]),
                 encoding="utf-8")
    kept = [tuple(c.strip() for c in r) for r in rows]
    kept = [r for r in kept if any(r)]  # a blank line is no row
    ok = (not any("\0" in c for r in rows for c in r) and kept
          and all(r[0] and _valid_time(r[1]) and _valid_event(r[2]) for r in kept)
          and len({r[0] for r in kept}) == len(kept))
    try:
        key, table = read_survival(p)
    except CohortError as e:
        assert not ok, e
        assert "\n" not in str(e)
        return
    assert ok and key == "case_id"
    assert table == {r[0]: (float(r[1]), int(float(r[2]))) for r in kept}


# ----------------------------------------------------------------------------- ROI GeoJSON
def _roi(tmp_path, doc, name="roi.geojson") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _feature(coords, props=None) -> dict:
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "Polygon", "coordinates": [coords]}}


@pytest.mark.parametrize(("doc", "match"), [
    ("[" * 100_000 + "]" * 100_000, r"nested too deeply to be GeoJSON"),
    ({"type": "FeatureCollection", "features": json.loads("[" * 40 + "]" * 40)},
     r"lists nested more than 32 deep"),
    ({"type": "GeometryCollection", "geometries": 7}, r"'geometries' is a number, not a list"),
    ({"type": "FeatureCollection", "features": [5]}, r"is not GeoJSON.*found a number"),
    (_feature([[0, 0], [1e300, 0], [1e300, 1e300], [0, 1e300], [0, 0]]),
     r"feature 1 has a coordinate of 1e\+300 px, beyond any slide"),
    (_feature([[0, 0], ["a", 0], [1, 1], [0, 0]]), r"feature 1 has malformed Polygon"),
    ('{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
     '[[[0, 0], [NaN, 0], [1, 1], [0, 0]]]}}', r"non-finite coordinates"),
    ("{\"type\": ", r"is not a GeoJSON text file \(line 1"),
])
def test_roi_crafted_documents_are_one_line(tmp_path, doc, match):
    with pytest.raises(RegionError, match=match) as e:
        read_geojson(_roi(tmp_path, doc))
    assert "\n" not in str(e.value) and len(str(e.value)) < 600


@pytest.mark.parametrize("props", [["a", "b"], "tumour", 3, None, {"name": ["x"]},
                                   {"name": "n" * 10_000}, {"classification": 4}])
def test_roi_properties_of_any_type_give_a_plain_name(tmp_path, props):
    [region] = read_geojson(_roi(tmp_path, {"type": "FeatureCollection",
                                            "features": [_feature(SQUARE, props)]}))
    assert region.geometry.area == 10_000
    assert region.name in ("region 1", "n" * 197 + "...")


def test_roi_file_too_large_is_refused_before_it_is_read(tmp_path):
    big = _sparse(tmp_path / "big.geojson", 2 * 2**30)
    with pytest.raises(RegionError, match=r"is 2048.0 MiB, larger than the 256.0 MiB"):
        read_geojson(big)


def _json_values():
    keys = st.sampled_from(["type", "features", "geometry", "geometries", "properties",
                            "coordinates", "name", "classification"]) | TEXT
    types = st.sampled_from(["FeatureCollection", "Feature", "GeometryCollection", "Polygon",
                             "MultiPolygon", "Point", "LineString"])
    leaf = (st.none() | st.booleans() | st.integers() | types
            | st.floats(allow_nan=True, allow_infinity=True) | TEXT)
    return st.recursive(leaf, lambda ch: st.lists(ch, max_size=4)
                        | st.dictionaries(keys, ch, max_size=4), max_leaves=30)


_COORD = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**40, 2**40)


@FUZZ
@given(doc=_json_values() | st.builds(
    lambda rings, props: {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": props,
         "geometry": {"type": "Polygon", "coordinates": rings}}]},
    st.lists(st.lists(st.lists(_COORD, min_size=2, max_size=3), min_size=3, max_size=6),
             min_size=1, max_size=2),
    _json_values()))
def test_fuzz_roi_documents_give_regions_with_finite_areas_or_one_line(tmp_path, doc):
    p = tmp_path / "fuzz.geojson"
    p.write_text(json.dumps(doc))
    try:
        regions = read_geojson(p)
    except RegionError as e:
        assert "\n" not in str(e) and len(str(e)) < 2000
        return
    for r in regions:
        area = r.area_mm2(0.5)
        assert math.isfinite(area) and area > 0 and len(r.name) <= 200


# -------------------------------------------------- not a file: folders, devices, FIFOs
@pytest.mark.parametrize("kind", ["folder", "fifo", "/dev/zero"])
def test_files_that_are_not_files_say_what_they_are(tmp_path, kind):
    if kind == "folder":
        path, said = tmp_path / "x.csv", "is a folder, not a file"
        path.mkdir()
    elif kind == "fifo":
        path, said = _fifo(tmp_path / "x.csv"), "is not a regular file"
    else:
        path, said = Path("/dev/zero"), "is not a regular file"
        if not path.exists():
            pytest.skip("no /dev/zero")
    for reader, error in ((read_manifest, SlideInputError), (read_survival, CohortError),
                          (read_geojson, RegionError), (open_slide, SlideError)):
        with pytest.raises(error, match=said):
            reader(path)
    with pytest.raises(SlideInputError, match=said if kind != "folder" else "holds no slide"):
        resolve_inputs([path], notify=lambda s: None)


def test_cli_never_opens_a_fifo_given_as_slide_manifest_survival_or_roi(tmp_path):
    fifo = _fifo(tmp_path / "pipe.svs")
    slide = write_tiff_slide(tmp_path / "s.tif", tissue_rgb(256, 256), levels=1)
    out = tmp_path / "out"
    runs = [[str(fifo)], ["--manifest", str(fifo)], [str(slide), str(slide), "--survival",
                                                     str(fifo)],
            [str(slide), "--roi", str(fifo)]]
    script = ("import sys, json\nfrom napari_ghanet.cli import main\n"
              "for argv in json.loads(sys.argv[1]):\n"
              "    print('rc', main(['predict', *argv, '--out', sys.argv[2], '--quiet']),"
              " flush=True)\n")
    r = subprocess.run([sys.executable, "-c", script, json.dumps(runs), str(out)],
                       capture_output=True, text=True, timeout=240)
    codes = r.stdout.split()
    assert codes[::2] == ["rc"] * 4 and set(codes[1::2]) <= {"1", "2"}, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 4 and all("pipe.svs: is not a regular file" in e for e in errors)
    assert not out.exists()  # refused before any work: nothing created


# ----------------------------------------------------------------- late failures are early
@pytest.fixture(scope="module")
def fast_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    return write_tiff_slide(tmp_path_factory.mktemp("s") / "small.tif", tissue_rgb(512, 768))


def test_bad_survival_table_stops_the_cohort_before_any_slide(tmp_path, small_slide,
                                                              fast_bundle, capsys):
    bad = tmp_path / "s.csv"
    bad.write_text(HEADER + "small,12,0\nsmall,3,1\n")
    out = tmp_path / "out"
    with pytest.raises(CohortError, match="given on more than one line"):
        cohort_api.predict_cohort([small_slide], out, fast_bundle, survival=bad,
                                  device="cpu", progress=False)
    assert not out.exists()
    code = main(["predict", str(small_slide), str(small_slide.parent), "--model",
                 str(fast_bundle), "--out", str(out), "--survival", str(bad), "--quiet"])
    assert code == 1 and "more than one line" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_bad_roi_file_stops_before_the_slide_is_read(tmp_path, small_slide, fast_bundle,
                                                     capsys):
    roi = _roi(tmp_path, {"type": "GeometryCollection", "geometries": 3})
    out = tmp_path / "out"
    code = main(["predict", str(small_slide), "--model", str(fast_bundle), "--out", str(out),
                 "--roi", str(roi), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "'geometries' is a number" in _one_error_line(err)
    assert not out.exists() and "patches" not in err


def test_output_name_too_long_is_refused_before_any_work(tmp_path, fast_bundle, capsys):
    slide = write_tiff_slide(tmp_path / ("x" * 220 + ".tif"), tissue_rgb(256, 256), levels=1)
    out = tmp_path / "out"
    code = main(["predict", str(slide), "--model", str(fast_bundle), "--out", str(out)])
    assert code == 2
    assert "220 bytes long (at most 200)" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()
    # the file system's own limit, with the suffixes the package adds
    with pytest.raises(GHANetError, match=r"too long for a file name in .*: its file system "
                                          r"takes at most 55 bytes here, it has 60"):
        check_name_fits(tmp_path, "y" * 60, "slide name", suffix_bytes=200)


def test_cohort_names_are_checked_before_any_slide(tmp_path, fast_bundle):
    d = tmp_path / "slides"
    d.mkdir()
    write_tiff_slide(d / "-dash.tif", tissue_rgb(256, 256), levels=1)
    with pytest.raises(GHANetError, match=r"slide name '-dash' cannot be used as a file name"):
        cohort_api.predict_cohort([d], tmp_path / "out", fast_bundle, device="cpu",
                                  progress=False)
    assert not (tmp_path / "out" / "summary.csv").exists()
    with pytest.raises(GHANetError, match=r"slide name '-dash' cannot be used as a file name"):
        cohort_api.embed_cohort([d], tmp_path / "emb", "morphometric", device="cpu",
                                progress=False)
    assert not (tmp_path / "emb").exists()


def test_spatialdata_location_is_checked_before_any_work(tmp_path, small_slide, fast_bundle,
                                                         capsys, monkeypatch):
    need("spatialdata")
    out = tmp_path / "out"
    base = ["predict", str(small_slide), "--model", str(fast_bundle), "--out", str(out)]
    for store, more, said in [
        (out, [], "is the --out folder"),
        (tmp_path, [], "holds the --out folder"),
    ]:
        assert main([*base, "--spatialdata", str(store), *more]) == 2
        assert said in _one_error_line(capsys.readouterr().err)
        assert not out.exists()
    out.mkdir()
    assert main([*base, "--spatialdata", str(out / "small.ghanet.json")]) == 2
    assert "is the name of one of the exports" in _one_error_line(capsys.readouterr().err)
    assert list(out.iterdir()) == []
    problem = cli_predict.spatialdata_location_problem
    (tmp_path / "file.zarr").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert "never replaced" in problem(tmp_path / "file.zarr", out, True)
    assert "holds no SpatialData store; it is never replaced" in problem(tmp_path / "notes",
                                                                         out, True)
    assert "already exists" in problem(tmp_path / "notes", out, False)
    assert "is a file, not a folder" in problem(tmp_path / "file.zarr" / "s.zarr", out, False)
    assert problem(tmp_path / "new" / "s.zarr", out, False) is None
    assert problem(out / "s.zarr", out, False) is None  # beside the exports is fine
    monkeypatch.setattr(cli_predict.os, "access", lambda *a, **k: False)
    assert "is not writable (read-only?)" in problem(tmp_path / "s.zarr", out, False)
    monkeypatch.undo()
    monkeypatch.setattr(cli_predict.shutil, "disk_usage",
                        lambda p: type("U", (), {"free": 2**20})())
    assert "only 1.0 MiB free on the disk" in problem(tmp_path / "s.zarr", out, False)


_PART = st.sampled_from(["a", "b", "out", "s.zarr", "..", "."])


@FUZZ
@given(store=st.lists(_PART, min_size=1, max_size=4), out=st.lists(_PART, min_size=1,
                                                                      max_size=4),
       overwrite=st.booleans())
def test_fuzz_spatialdata_never_replaces_or_holds_the_exports(tmp_path, store, out, overwrite):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True, exist_ok=True)
    s, o = root.joinpath(*store), root.joinpath(*out)
    problem = cli_predict.spatialdata_location_problem(s, o, overwrite)
    sa, oa = Path(os.path.abspath(s)), Path(os.path.abspath(o))
    if oa == sa or oa.is_relative_to(sa):  # replacing the store would delete the exports
        assert problem and ("--out" in problem)
    if sa.exists() and not (sa / "zarr.json").exists():  # never replaced: not a store
        assert problem
    if problem is None:
        assert not sa.exists() and sa != oa and not oa.is_relative_to(sa)


@FUZZ
@given(name=TEXT | st.text(st.sampled_from("aé漢-_. /"), min_size=1, max_size=120),
       suffix=st.integers(0, 200))
def test_fuzz_output_names_fit_the_file_system_or_are_refused(tmp_path, name, suffix):
    try:
        check_name_fits(tmp_path, name, "slide name", suffix_bytes=suffix)
    except GHANetError as e:
        assert "\n" not in str(e)
        return
    assert len(name.encode()) + suffix <= os.pathconf(tmp_path, "PC_NAME_MAX")
    assert "/" not in name and name not in (".", "..") and not name.startswith(".")
    (tmp_path / f"{name}{'x' * suffix}").write_text("ok")  # the file system takes it


def test_full_disk_while_writing_summary_is_one_line(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cohort_api, "write_summary", full)
    with pytest.raises(NotWritableError, match=r"cannot write .*summary.csv: No space left on "
                                               r"device; free some space"):
        cohort_api._summary(tmp_path, [])


# ------------------------------------------------------------------------- newcomer items
def test_predict_without_model_says_demo_on_screen_and_in_the_report(tmp_path, small_slide,
                                                                     fast_bundle, capsys):
    out = tmp_path / "demo"
    assert main(["predict", str(small_slide), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == cli_predict.DEMO_BANNER
    assert f"warning: {DEMO_MODEL_WARNING}" in err
    report = json.loads((out / "small.ghanet.json").read_text())
    assert report["model"]["demo"] is True and DEMO_MODEL_WARNING in report["warnings"]

    own = tmp_path / "own"
    assert main(["predict", str(small_slide), "--out", str(own), "--device", "cpu",
                 "--model", str(fast_bundle)]) == 0
    err = capsys.readouterr().err
    assert "DEMONSTRATION" not in err
    report = json.loads((own / "small.ghanet.json").read_text())
    assert report["model"]["demo"] is False and DEMO_MODEL_WARNING not in report["warnings"]


def test_train_demo_never_overwrites_the_shipped_model_by_default(tmp_path, capsys):
    import argparse

    from napari_ghanet.training.cli import main as train_main
    from napari_ghanet.training.demo_recipe import DEFAULT_OUT, check_out, configure_parser

    p = argparse.ArgumentParser()
    configure_parser(p)
    args = p.parse_args([])
    assert args.out == DEFAULT_OUT and not args.replace_shipped
    assert Path(os.path.abspath(DEFAULT_OUT)) != demo_bundle_path()
    before = demo_bundle_path().stat().st_mtime_ns
    assert train_main(["demo", "--out", str(demo_bundle_path())]) != 0
    err = capsys.readouterr().err
    assert "is the demo model shipped with the package" in err and "--replace-shipped" in err
    assert "Traceback" not in err and demo_bundle_path().stat().st_mtime_ns == before
    assert check_out(demo_bundle_path(), replace_shipped=True) == demo_bundle_path()


def test_shipped_demo_model_records_no_builder_path():
    import re

    from napari_ghanet.models.bundle import read_bundle_metadata

    meta = read_bundle_metadata(demo_bundle_path())
    text = json.dumps(meta)
    assert re.findall(r'"(?:/|[A-Za-z]:\\\\)[^"]*"', text) == []  # no absolute path
    assert meta["provenance"]["run_dir"] == "run"


def test_license_file_is_bsd_3_clause():
    root = Path(__file__).resolve().parents[1]
    text = (root / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert "napari-ghanet developers" in text and "Neither the name of the copyright holder" in text
    assert 'license = "BSD-3-Clause"' in (root / "pyproject.toml").read_text()


def test_torchscript_encoder_loads_without_a_future_warning(tmp_path):
    import torch

    from napari_ghanet.encoders import create_encoder

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # making the file is the user's business
        torch.jit.save(torch.jit.script(net), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        enc = create_encoder("torchscript", path=path, dim=4, input_size=32)
    assert enc.dim == 4


def test_csv_rows_pads_short_rows_and_skips_blank_lines(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b,c\n\n1\n , ,\n2,3,4\n")
    assert read_csv_rows(p, "table") == (["a", "b", "c"], [(3, ["1", "", ""]),
                                                           (5, ["2", "3", "4"])])
