"""Cohort inputs (files, folders, patterns, manifest), summary.csv and the CLI options."""

from __future__ import annotations

import argparse

import pytest

from napari_ghanet.cli._cohort import add_cohort_options
from napari_ghanet.cli._options import UsageError, group_from_args
from napari_ghanet.cohort.engine import gpu_worker_specs, parse_cluster, run_tasks
from napari_ghanet.cohort.inputs import (
    SlideInputError,
    patient_groups,
    resolve_inputs,
    slide_extensions,
)
from napari_ghanet.cohort.summary import CohortSummary, read_summary, write_summary
from napari_ghanet.errors import Cancelled, CohortError, GHANetError
from napari_ghanet.options import ExecutionOptions


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_extensions_come_from_the_reader_manifest():
    exts = slide_extensions()
    for e in (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".dcm"):
        assert e in exts
    assert ".txt" not in exts and ".h5" not in exts


def test_folders_patterns_files_and_duplicates(tmp_path):
    a = _touch(tmp_path / "c1" / "a.svs")
    b = _touch(tmp_path / "c1" / "deep" / "b.NDPI")
    _touch(tmp_path / "c1" / "notes.txt")
    _touch(tmp_path / "c1" / ".a.svs.tmp")  # an unfinished temporary file
    _touch(tmp_path / "c1" / ".hidden.svs")
    d1 = _touch(tmp_path / "c1" / "dicom" / "x1.dcm")  # one DICOM slide = many files
    _touch(tmp_path / "c1" / "dicom" / "x2.dcm")
    c = _touch(tmp_path / "c2" / "c.tif")
    notes = []
    items = resolve_inputs([tmp_path / "c1", str(tmp_path / "c2" / "*.tif"), a],
                           notify=notes.append)
    assert [i.path for i in items] == [str(p.resolve()) for p in (a, b, d1, c)]
    assert notes == ["note: 1 slide(s) named more than once; each is processed once"]
    assert all(i.case_id is None and i.mpp is None for i in items)
    rec = resolve_inputs([str(tmp_path / "**" / "*.tif")], notify=notes.append)
    assert [i.name for i in rec] == ["c.tif"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(SlideInputError, match="no such slide file or folder"):
        resolve_inputs([tmp_path / "missing.svs"])
    with pytest.raises(SlideInputError, match="matches no slide file"):
        resolve_inputs([str(tmp_path / "*.svs")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideInputError, match="holds no slide file"):
        resolve_inputs([tmp_path / "empty"])
    _touch(tmp_path / "x" / "s.svs")
    _touch(tmp_path / "y" / "s.tif")
    with pytest.raises(SlideInputError, match="would both write outputs named 's'"):
        resolve_inputs([tmp_path / "x", tmp_path / "y"])
    with pytest.raises(SlideInputError, match="no slide given"):
        resolve_inputs([])
    assert issubclass(SlideInputError, CohortError) and issubclass(SlideInputError, GHANetError)


def test_manifest(tmp_path):
    _touch(tmp_path / "slides" / "p1a.svs")
    _touch(tmp_path / "slides" / "p1b.svs")
    abs_c = _touch(tmp_path / "elsewhere" / "p2.tif")
    man = tmp_path / "cohort" / "manifest.csv"
    man.parent.mkdir()
    man.write_text(f"slide,mpp,case_id\n../slides/p1a.svs,0.25,P1\n../slides/p1b.svs,,P1\n"
                   f"{abs_c},,P2\n")
    items = resolve_inputs(None, man)
    assert [(i.name, i.mpp, i.case_id) for i in items] == [
        ("p1a.svs", 0.25, "P1"), ("p1b.svs", None, "P1"), ("p2.tif", None, "P2")]
    groups = patient_groups(items)
    assert [[i.name for i in g] for g in groups] == [["p1a.svs", "p1b.svs"], ["p2.tif"]]

    bad = tmp_path / "bad.csv"
    bad.write_text("path,case_id\nslides/p1a.svs,P1\n")
    with pytest.raises(SlideInputError, match="needs a 'slide' column.*found: path, case_id"):
        resolve_inputs(None, bad)
    bad.write_text("slide\nslides/p1a.svs\nslides/nope.svs\n")
    with pytest.raises(SlideInputError, match=r"1 slide.*cannot be read: line 3: .*nope.svs \(not found\)"):
        resolve_inputs(None, bad)
    bad.write_text("slide,mpp\nslides/p1a.svs,fast\n")
    with pytest.raises(SlideInputError, match="line 2: mpp 'fast' is not a number"):
        resolve_inputs(None, bad)
    with pytest.raises(SlideInputError, match="manifest .*none.csv: not found"):
        resolve_inputs(None, tmp_path / "none.csv")


def test_summary_csv_and_last_line(tmp_path):
    rows = [{"slide": "a.svs", "status": "done", "n_patches": 10, "seconds": 1.23456},
            {"slide": "b.svs", "status": "skipped", "n_patches": 5},
            {"slide": "c.svs", "status": "failed", "error": "c.svs: file is\ntruncated",
             "case_id": "P3"}]
    path = write_summary(tmp_path, rows)
    back = read_summary(path)
    assert list(back[0])[:5] == ["slide", "status", "n_patches", "seconds", "error"]
    assert [r["status"] for r in back] == ["done", "skipped", "failed"]
    assert back[0]["seconds"] == "1.235" and back[2]["error"] == "c.svs: file is truncated"
    assert back[2]["case_id"] == "P3"
    s = CohortSummary(rows, tmp_path, path)
    assert s.line == "1 done, 1 skipped, 1 failed" and s.exit_code == 1
    assert CohortSummary(rows[:2], tmp_path, path).exit_code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # no temporaries


def test_engine_in_process_isolates_failures_and_cancels():
    res = run_tasks(_tenth, [10, 0, 20], progress=False)
    assert [r.status for r in res] == ["done", "failed", "done"]
    assert res[1].error == "ZeroDivisionError: division by zero"
    assert [r.row.get("n_patches") for r in res] == [10.0, None, 5.0]
    seen = []
    res = run_tasks(_tenth, [1, 2], progress=lambda d, t, r: seen.append((d, t, r.status)))
    assert seen == [(1, 2, "done"), (2, 2, "done")]
    with pytest.raises(Cancelled):
        run_tasks(_tenth, [1, 2], progress=False, cancel=lambda: True)


def _tenth(x):
    return {"n_patches": 100 / x}


def test_cluster_values_and_gpu_worker_specs():
    assert parse_cluster("local:3") == ("local", 3)
    for bad in ("local:0", "local", "slurm:4", "local:x"):
        with pytest.raises(CohortError, match="local:N"):
            parse_cluster(bad)
    spec = gpu_worker_specs(["2", "5"], threads=3)
    assert sorted(spec) == ["gpu-2", "gpu-5"]
    opts = spec["gpu-5"]["options"]
    assert opts["nthreads"] == 1 and opts["resources"] == {"GPU": 1}
    assert opts["env"]["CUDA_VISIBLE_DEVICES"] == "5" and opts["env"]["OMP_NUM_THREADS"] == "3"


def test_cli_options():
    p = argparse.ArgumentParser()
    p.add_argument("slides", nargs="*")
    add_cohort_options(p, predict=True)
    a = p.parse_args(["x.svs", "--manifest", "m.csv", "--cluster", "local:2",
                      "--survival", "s.csv"])
    assert (str(a.manifest), a.cluster, a.scheduler, str(a.survival)) == (
        "m.csv", "local:2", None, "s.csv")
    with pytest.raises(SystemExit):
        p.parse_args(["--cluster", "local:2", "--scheduler", "tcp://h:8786"])
    # the text is parsed once, into the execution options: a bad one is a usage error
    with pytest.raises(UsageError, match="--cluster.*local:N"):
        group_from_args(ExecutionOptions, p.parse_args(["--cluster", "remote"]))
    plan = group_from_args(ExecutionOptions, a)
    assert plan.cluster_plan == ("local", 2)
    q = argparse.ArgumentParser()
    add_cohort_options(q)
    assert not hasattr(q.parse_args([]), "survival")
