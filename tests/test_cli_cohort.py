"""``ghanet embed`` / ``ghanet predict`` over cohorts, through ``napari_ghanet.cli.main``:
folders, glob patterns and a manifest in one call, summary.csv and the exit code, resume,
a local Dask cluster giving the same bits as the in-process run, cohort.csv and the
external-validation report, patients from a manifest's case_id, ``ghanet encoders``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle
from conftest import he_image, write_pyramid
from napari_ghanet.cli import main
from napari_ghanet.cohort import predict_cohort
from napari_ghanet.cohort.summary import read_summary
from napari_ghanet.inference.export_registry import UnknownExport
from napari_ghanet.io.features import load_features

FAST = ["--encoder", "morphometric", "--patch-px", "64", "--target-mpp", "2.0",
        "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """slides/a/{s0,s1}.tif (a folder), slides/b/s2.tif (a glob), a corrupt slide named
    by a manifest."""
    d = tmp_path_factory.mktemp("cli-cohort")
    for i, sub in enumerate("aab"):
        (d / "slides" / sub).mkdir(parents=True, exist_ok=True)
        rgb, _ = he_image(768, 1024, seed=i, nuclei_per_1000um2=1.0 + 2.0 * i)
        write_pyramid(d / "slides" / sub / f"s{i}.tif", rgb, mpp=0.5, levels=2)
    (d / "corrupt.svs").write_bytes(b"II*\x00" + b"\x00" * 64)
    (d / "manifest.csv").write_text("slide\ncorrupt.svs\n")
    return d


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_embed_folder_glob_and_manifest_then_resume(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["embed", str(cohort / "slides" / "a"), str(cohort / "slides" / "b" / "*.tif"),
            "--manifest", str(cohort / "manifest.csv"), "--out", str(out), *FAST]
    assert main(argv) == 1  # one slide failed
    cap = capsys.readouterr()
    assert _last_line(cap.err) == "3 done, 0 skipped, 1 failed"
    assert "corrupt.svs: FAILED" in cap.err
    assert "[4/4]" in cap.err and "patches/s overall" in cap.err  # progress, not a tty
    rows = {Path(r["slide"]).name: r for r in read_summary(out / "summary.csv")}
    assert sorted(rows) == ["corrupt.svs", "s0.tif", "s1.tif", "s2.tif"]
    assert rows["corrupt.svs"]["status"] == "failed" and "corrupt" in rows["corrupt.svs"]["error"]
    for i in range(3):
        r = rows[f"s{i}.tif"]
        feats = load_features(out / f"s{i}.h5")
        assert r["status"] == "done" and r["error"] == "" and int(r["n_patches"]) == len(feats)
        assert feats.dim == 64 and feats.attrs["patch_size"] == 64
    assert sorted(p.name for p in out.iterdir()) == [
        "s0.h5", "s1.h5", "s2.h5", "summary.csv"]  # nothing for the corrupt slide

    stamp = (out / "s0.h5").stat().st_mtime_ns
    assert main(argv[:3] + argv[5:]) == 0  # the same slides without the corrupt one
    cap = capsys.readouterr()
    assert _last_line(cap.err) == "0 done, 3 skipped, 0 failed"
    assert "already in" in cap.out
    assert (out / "s0.h5").stat().st_mtime_ns == stamp
    assert [r["status"] for r in read_summary(out / "summary.csv")] == ["skipped"] * 3


def test_local_cluster_gives_the_same_bits(cohort, tmp_path, capsys):
    folder = str(cohort / "slides" / "a")
    assert main(["embed", folder, "--out", str(tmp_path / "here"), *FAST]) == 0
    assert main(["embed", folder, "--out", str(tmp_path / "dask"), *FAST,
                 "--cluster", "local:2"]) == 0
    err = capsys.readouterr().err
    assert "Dask local cluster: 2 worker process(es)" in err and "dashboard http" in err
    assert _last_line(err) == "2 done, 0 skipped, 0 failed"
    for i in range(2):
        a = load_features(tmp_path / "here" / f"s{i}.h5")
        b = load_features(tmp_path / "dask" / f"s{i}.h5")
        assert len(a) > 3
        assert a.features.tobytes() == b.features.tobytes()
        assert a.coords.tobytes() == b.coords.tobytes()


def test_predict_cohort_table_validation_and_patients(cohort, tmp_path, capsys):
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    out = tmp_path / "pred"
    common = ["--model", str(bundle), "--device", "cpu", "--no-cache"]
    slides = [str(cohort / "slides" / "a"), str(cohort / "slides" / "b" / "s2.tif")]
    assert main(["predict", *slides, "--out", str(out), *common]) == 0
    cap = capsys.readouterr()
    assert _last_line(cap.err) == "3 done, 0 skipped, 0 failed"
    assert str(out / "cohort.csv") in cap.out.split()
    table = pd.read_csv(out / "cohort.csv")
    assert sorted(table.unit) == ["s0", "s1", "s2"]
    for _, r in table.iterrows():
        rep = json.loads((out / r.unit / f"{r.unit}.ghanet.json").read_text())
        assert r.risk == pytest.approx(rep["prediction"]["risk"])
    assert len([c for c in table.columns if c.startswith("z_")]) == 6

    # Survival generated from the predicted risks: the higher, the earlier the event.
    order = table.sort_values("risk", ascending=False).unit.tolist()
    surv = tmp_path / "survival.csv"
    surv.write_text("slide,survival_months,censorship\n" + "".join(
        f"{u}.tif,{12.0 * (k + 1)},{int(k == 2)}\n" for k, u in enumerate(order)))
    assert main(["predict", *slides, "--out", str(out), *common, "--survival", str(surv)]) == 0
    cap = capsys.readouterr()
    assert _last_line(cap.err) == "0 done, 3 skipped, 0 failed"
    v = json.loads((out / "validation.json").read_text())
    assert v["n"] == 3 and v["n_events"] == 2 and v["c_index"] == pytest.approx(1.0)
    assert (out / "validation_km.png").read_bytes()[:4] == b"\x89PNG"
    assert str(out / "validation.json") in cap.out.split()

    # Two slides sharing a case_id are one patient, predicted together.
    man = tmp_path / "patients.csv"
    man.write_text(f"slide,case_id\n{cohort}/slides/a/s0.tif,P1\n{cohort}/slides/a/s1.tif,P1\n"
                   f"{cohort}/slides/b/s2.tif,P2\n")
    pout = tmp_path / "patients"
    assert main(["predict", "--manifest", str(man), "--out", str(pout), *common]) == 0
    assert _last_line(capsys.readouterr().err) == "2 done, 0 skipped, 0 failed"
    pt = pd.read_csv(pout / "cohort.csv")
    assert sorted(pt.unit) == ["P1", "s2"]  # a patient of one slide keeps the slide's name
    assert pt.set_index("unit").case_id.to_dict() == {"P1": "P1", "s2": "P2"}
    p1 = pt[pt.unit == "P1"].iloc[0]
    assert p1.slide == "s0.tif;s1.tif"
    assert p1.n_patches == sum(table.set_index("unit").n_patches[["s0", "s1"]])


def test_single_slide_keeps_the_flat_output(cohort, tmp_path, capsys):
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    out = tmp_path / "flat"
    assert main(["predict", str(cohort / "slides" / "b" / "s2.tif"), "--model", str(bundle),
                 "--out", str(out), "--device", "cpu", "--no-cache", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "s2.ghanet.json", "s2.patches.csv", "s2.patches.geojson"]
    capsys.readouterr()
    assert main(["predict", "--out", str(out)]) == 2
    assert "no slide given" in capsys.readouterr().err


def test_encoders_json(capsys):
    assert main(["encoders", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet50_trunc"]["dim"] == 1024 and by_name["uni"]["dim"] == 1024
    assert by_name["virchow2"]["dim"] == 2560 and by_name["morphometric"]["dim"] == 64


def test_predict_cohort_writes_only_the_export_kinds_asked_for(cohort, tmp_path, capsys):
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    out = tmp_path / "kinds"
    common = ["--model", str(bundle), "--device", "cpu", "--no-cache", "--out", str(out)]
    slides = [str(cohort / "slides" / "a" / "s0.tif"), str(cohort / "slides" / "b" / "s2.tif")]
    # a bad kind is refused before any work, as for one slide
    with pytest.raises(SystemExit) as e:
        main(["predict", *slides, *common, "--export", "nonsense"])
    assert e.value.code == 2 and not out.exists()
    with pytest.raises(UnknownExport, match="canvas"):  # the API checks them too
        predict_cohort(slides, out, bundle, exports=["png"], device="cpu", progress=False)
    assert not out.exists()
    capsys.readouterr()
    assert main(["predict", *slides, *common, "--export", "report", "--export", "csv"]) == 0
    assert _last_line(capsys.readouterr().err) == "2 done, 0 skipped, 0 failed"
    for unit in ("s0", "s2"):
        assert sorted(p.name for p in (out / unit).iterdir()) == [
            f"{unit}.cohort.json", f"{unit}.ghanet.json", f"{unit}.patches.csv"]
        marker = json.loads((out / unit / f"{unit}.cohort.json").read_text())
        assert marker["exports"] == {"report": f"{unit}.ghanet.json",
                                     "csv": f"{unit}.patches.csv"}
    # the same kinds again: skipped; a kind the first run did not write: predicted again
    assert main(["predict", *slides, *common, "--export", "csv"]) == 0
    assert _last_line(capsys.readouterr().err) == "0 done, 2 skipped, 0 failed"
    assert main(["predict", *slides, *common, "--export", "geojson"]) == 0
    assert _last_line(capsys.readouterr().err) == "2 done, 0 skipped, 0 failed"
    gj = json.loads((out / "s2" / "s2.patches.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
