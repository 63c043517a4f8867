"""Cohort runs on a Dask LocalCluster of 2 worker processes: the same features as in this
process, a corrupt slide isolated, resume, dead workers survived, the cohort table and the
external-validation report, and cross-validation folds as parallel tasks.

One cluster serves the whole module (started by the engine's own ``local:2`` path and
closed by the fixture's finaliser); the tests reach it through ``scheduler=ADDRESS``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle
from conftest import he_image, write_pyramid
from napari_ghanet.cohort import embed_cohort, predict_cohort, resolve_inputs, run_tasks
from napari_ghanet.cohort.engine import open_client
from napari_ghanet.cohort.summary import read_summary
from napari_ghanet.cohort.tasks import embed_task, encoder_recipe
from napari_ghanet.io.features import load_features
from napari_ghanet.options import EmbedOptions, GridOptions

# 64 px patches at 2 um/px (the CLAM field of view, 16x cheaper to embed)
FAST = {"encoder": "morphometric", "patch_px": 64, "target_mpp": 2.0}


@pytest.fixture(scope="module")
def cluster():
    """A 2-process LocalCluster started the way ``--cluster local:2`` starts it."""
    lines = []
    with open_client("local:2", say=lines.append) as client:
        assert "2 worker process(es) x 1 torch thread(s)" in lines[0] and "dashboard" in lines[0]
        assert len(client.scheduler_info()["workers"]) == 2
        yield client.scheduler.address


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Four small H&E slides of different nuclear density, and a corrupt one."""
    d = tmp_path_factory.mktemp("cohort")
    for i, density in enumerate((1.0, 2.5, 4.0, 6.0)):
        rgb, _ = he_image(768, 1024, seed=i, nuclei_per_1000um2=density, dense_left=i % 2 == 0)
        write_pyramid(d / f"s{i}.tif", rgb, mpp=0.5, levels=2)
    (d / "corrupt.svs").write_bytes(b"II*\x00" + b"\x00" * 64)
    return d


def _by_name(summary):
    return {Path(r["slide"]).name: r for r in summary.rows}


def test_embed_on_cluster_matches_in_process_and_resumes(cluster, slides, tmp_path):
    local = embed_cohort([slides], tmp_path / "local", **FAST, progress=False)
    dist = embed_cohort([slides], tmp_path / "dist", **FAST, scheduler=cluster, progress=False)
    for s in (local, dist):
        assert s.line == "4 done, 0 skipped, 1 failed" and s.exit_code == 1
        bad = _by_name(s)["corrupt.svs"]
        assert bad["status"] == "failed" and "corrupt.svs" in bad["error"]
    for i in range(4):
        a = load_features(tmp_path / "local" / f"s{i}.h5")
        b = load_features(tmp_path / "dist" / f"s{i}.h5")
        assert len(a) > 3
        assert a.features.tobytes() == b.features.tobytes()  # bitwise
        np.testing.assert_array_equal(a.coords, b.coords)
        assert _by_name(dist)[f"s{i}.tif"]["n_patches"] == len(b)
    rows = read_summary(tmp_path / "dist" / "summary.csv")
    assert [r["status"] for r in rows].count("done") == 4
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [
        "s0.h5", "s1.h5", "s2.h5", "s3.h5", "summary.csv"]  # nothing half-written

    stamp = (tmp_path / "dist" / "s0.h5").stat().st_mtime_ns
    again = embed_cohort([slides], tmp_path / "dist", **FAST, scheduler=cluster, progress=False)
    assert again.line == "0 done, 4 skipped, 1 failed"
    assert (tmp_path / "dist" / "s0.h5").stat().st_mtime_ns == stamp
    # another grid is not a valid output: refused (the file is kept), never mixed up
    other = embed_cohort([slides / "s0.tif"], tmp_path / "dist", **FAST, min_tissue_fraction=0.9,
                         progress=False)
    assert other.n_failed == 1 and "overwriting" in other.rows[0]["error"]
    assert (tmp_path / "dist" / "s0.h5").stat().st_mtime_ns == stamp


def crashing_embed(item, out_dir, recipe, grid, embed, marks):
    """embed_task, but the worker process dies: always for 'crash_always', on the first
    attempt for 'crash_once'."""
    mark = Path(marks) / item.name
    if item.stem == "crash_always" or (item.stem == "crash_once" and not mark.exists()):
        mark.touch()
        os._exit(3)
    return embed_task(item, out_dir, recipe, grid, embed)


def test_a_dying_worker_costs_only_its_slide(cluster, slides, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("crash_once", "crash_always"):
        (d / f"{name}.tif").write_bytes((slides / "s0.tif").read_bytes())
    items = resolve_inputs([d, slides / "s1.tif"])
    recipe = encoder_recipe("morphometric", {"patch_px": 64, "target_mpp": 2.0})
    grid, embed = GridOptions(patch_px=64, target_mpp=2.0), EmbedOptions(workers=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    res = run_tasks(crashing_embed, items, args=(str(tmp_path), recipe, grid, embed, str(marks)),
                    scheduler=cluster, progress=False)
    got = {Path(i.path).name: r for i, r in zip(items, res)}
    assert got["s1.tif"].status == "done" and got["s1.tif"].attempts == 1
    assert got["crash_once.tif"].status == "done" and got["crash_once.tif"].attempts == 2
    assert (tmp_path / "crash_once.h5").is_file()
    dead = got["crash_always.tif"]
    assert dead.status == "failed" and dead.attempts == 2
    assert "died 2 time(s)" in dead.error and "KilledWorker" in dead.error
    assert not (tmp_path / "crash_always.h5").exists()


def test_predict_cohort_table_and_validation(cluster, slides, tmp_path):
    from napari_ghanet.training.metrics import harrell_c_index
    from sksurv.compare import compare_survival
    from sksurv.util import Surv

    from napari_ghanet.inference.predict import predict_slide

    probe = make_bundle(tmp_path / "probe.safetensors", encoder=FAST_ENCODER)
    names = [f"s{i}" for i in range(4)]
    risks = {n: predict_slide(slides / f"{n}.tif", probe, device="cpu", use_cache=False).risk
             for n in names}
    assert len(set(risks.values())) == 4
    ranked = sorted(risks.values())
    cuts = [(ranked[0] + ranked[1]) / 2, (ranked[2] + ranked[3]) / 2]  # 1 low, 2 mid, 1 high
    labels = ["low", "intermediate", "high"]
    bundle = make_bundle(tmp_path / "model.safetensors", encoder=FAST_ENCODER,
                         risk_groups={"cutpoints": cuts, "labels": labels})
    # Generated survival: the higher the predicted risk, the earlier the event; s0 (the
    # lowest risk) is censored. Harrell's c-index must be 1.
    order = sorted(names, key=lambda n: -risks[n])
    surv = tmp_path / "survival.csv"
    surv.write_text("slide,survival_months,censorship\n" + "".join(
        f"{n}.tif,{10.0 * (k + 1)},{int(k == 3)}\n" for k, n in enumerate(order)))

    out = tmp_path / "pred"
    s = predict_cohort([slides], out, bundle, survival=surv, device="cpu", use_cache=False,
                       scheduler=cluster, progress=False)
    assert s.line == "4 done, 0 skipped, 1 failed"
    for n in names:
        assert (out / n / f"{n}.ghanet.json").is_file() and (out / n / f"{n}.patches.csv").is_file()
    import pandas as pd

    table = pd.read_csv(out / "cohort.csv")
    assert sorted(table.unit) == names
    for _, r in table.iterrows():
        assert r.risk == pytest.approx(risks[r.unit], abs=1e-6)
        assert r.risk_group == labels[int(np.searchsorted(cuts, risks[r.unit], side="right"))]
        rep = json.loads((out / r.unit / f"{r.unit}.ghanet.json").read_text())
        assert r.percentile == pytest.approx(rep["prediction"]["percentile_in_training_cohort"])
        assert [r[f"survival_bin{k}"] for k in range(1, 5)] == pytest.approx(
            rep["prediction"]["survival"])
        zs = [c for c in table.columns if c.startswith("z_")]
        assert len(zs) == 6
        assert [r[c] for c in zs] == pytest.approx([c["score_z"] for c in rep["pathways"]])

    v = json.loads((out / "validation.json").read_text())
    assert v == s.extra["validation"] | {} and v["n"] == 4 and v["n_events"] == 3
    t = np.array([10.0 * (order.index(n) + 1) for n in names])
    e = np.array([order.index(n) != 3 for n in names])
    rk = np.array([risks[n] for n in names])
    assert v["c_index"] == pytest.approx(harrell_c_index(t, e, rk)) == pytest.approx(1.0)
    assert v["uno_c_index"] == pytest.approx(1.0)
    groups = np.array([labels[int(np.searchsorted(cuts, r, side="right"))] for r in rk])
    chisq, p = compare_survival(Surv.from_arrays(e, t), groups)
    assert v["km"]["p_value"] == pytest.approx(p) and v["km"]["groups"] == {"low": 1, "intermediate": 2, "high": 1}
    assert (out / "validation_km.png").read_bytes()[:4] == b"\x89PNG"

    # Re-run: the same model and slides are skipped; another model is predicted again.
    again = predict_cohort([slides], out, bundle, device="cpu", use_cache=False,
                           progress=False)
    assert again.line == "0 done, 4 skipped, 1 failed"
    assert pd.read_csv(out / "cohort.csv").risk.tolist() == table.risk.tolist()
    other = make_bundle(tmp_path / "other.safetensors", encoder=FAST_ENCODER, seed=3)
    redo = predict_cohort([slides / "s0.tif"], out, other, device="cpu", use_cache=False,
                          progress=False)
    assert redo.line == "1 done, 0 skipped, 0 failed"


SMALL_GHANET = json.dumps({"width": 32, "heads": 2, "dim_head": 16, "gate_dim": 16,
                           "compress_dim": 8, "ffn_mult": 2})


def test_cv_folds_and_models_in_parallel_equal_the_serial_run(cluster, tmp_path):
    import torch
    from napari_ghanet.training.cli import main

    synth = tmp_path / "synth"
    assert main(["synth", "--out", str(synth), "--patients", "40", "--folds", "2",
                 "--feature-dim", "16", "--patches-min", "10", "--patches-max", "20"]) == 0

    def cv(out, *extra):
        return main(["cv", "--cohort", str(synth / "cohort.csv"),
                     "--signatures", str(synth / "signatures.csv"),
                     "--splits", str(synth / "splits"), "--features", str(synth / "features"),
                     "--out", str(out), "--epochs", "2", "--lr", "1e-3", "--accumulation", "4",
                     "--batch-size", "4", "--device", "cpu", *extra])

    small = ("--model", "ghanet", "--model-config", SMALL_GHANET)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker
    try:
        assert cv(tmp_path / "serial" / "ghanet", *small) == 0
        assert cv(tmp_path / "serial", "--model", "abmil", "snn") == 0
    finally:
        torch.set_num_threads(before)
    assert cv(tmp_path / "par" / "ghanet", *small, "--scheduler", cluster) == 0
    assert cv(tmp_path / "par", "--model", "abmil", "snn", "--scheduler", cluster) == 0
    for model in ("ghanet", "abmil", "snn"):
        a = json.loads((tmp_path / "serial" / model / "results.json").read_text())
        b = json.loads((tmp_path / "par" / model / "results.json").read_text())
        assert a["model"] == b["model"] == model and len(a["folds"]) == len(b["folds"]) == 2
        for fa, fb in zip(a["folds"], b["folds"]):
            assert fa["predictions"] == fb["predictions"]  # same seed: identical numbers
            assert fa["c_index"] == fb["c_index"]
            assert fa["history"][-1]["train_loss"] == fb["history"][-1]["train_loss"]
        assert a["c_index_mean"] == b["c_index_mean"]
