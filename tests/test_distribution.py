"""Is the slide like the training slides? The summary, its checks, the verdict, the report.

Real inputs: generated H&E slides (``he_image``), the real CMU slide, bundles with a
summary built from generated features, and the training pipeline's own features files.
The demo bundle's verdicts are in ``test_distribution_demo.py``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle
from conftest import E_OD, GLASS, H_OD, he_image, write_pyramid
from napari_ghanet.errors import BundleError
from napari_ghanet.inference.distribution import IN, NOT_AVAILABLE, OUT, UNUSUAL, assess
from napari_ghanet.models.bundle import load_bundle, read_bundle_metadata
from napari_ghanet.models.distribution_summary import (
    build_summary,
    decode_array,
    encode_array,
    summary_problems,
)
from napari_ghanet.preprocessing.stain_stats import stain_descriptors

DAB_OD = np.array([0.268, 0.570, 0.776], np.float32)


def _restain(rgb: np.ndarray, h_gain: float = 1.0, e_gain: float = 1.0,
             e_vector: np.ndarray = E_OD) -> np.ndarray:
    """Unmix ``rgb`` into haematoxylin and eosin and mix them again with other amounts
    (or eosin replaced by another stain's OD vector)."""
    od = -np.log10(np.clip(rgb.astype(np.float32), 1, 255) / GLASS)
    basis = np.stack([H_OD, E_OD])
    conc = np.clip(od.reshape(-1, 3) @ np.linalg.pinv(basis), 0, None)
    new = (conc[:, :1] * h_gain) * H_OD + (conc[:, 1:] * e_gain) * e_vector
    out = GLASS * np.power(10.0, -new.reshape(od.shape))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- stain descriptors


def test_stain_descriptors_tell_bluer_paler_and_other_stains_apart():
    rgb, mask = he_image(384, 512, seed=3)
    base = stain_descriptors(rgb, mask)
    assert 0.05 < base["hematoxylin_share"] < 0.6 and base["off_stain"] < 0.05
    blue = stain_descriptors(_restain(rgb, h_gain=4.0, e_gain=0.3), mask)
    assert blue["hematoxylin_share"] > base["hematoxylin_share"] + 0.3
    pale = stain_descriptors(_restain(rgb, 0.4, 0.4), mask)
    assert pale["stain_intensity"] < 0.6 * base["stain_intensity"]
    ihc = stain_descriptors(_restain(rgb, e_vector=DAB_OD), mask)
    assert ihc["off_stain"] > base["off_stain"] + 0.1  # DAB lies off the H&E plane
    assert stain_descriptors(rgb, np.zeros_like(mask)) is None


def test_tissue_mask_carries_the_stain_of_the_real_slide(cmu_svs):
    from napari_ghanet.io.slide import open_slide
    from napari_ghanet.preprocessing.tissue import tissue_mask

    with open_slide(cmu_svs) as slide:
        stain = tissue_mask(slide).stain
    # the package's H&E vectors were fitted to this scan: almost all of its OD is H&E
    assert stain["off_stain"] < 0.1 and 0.2 < stain["hematoxylin_share"] < 0.8
    assert stain["n_pixels"] > 1000


# ----------------------------------------------------------------- summary


def _train_features(n=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(30, 60)), dim)).astype(np.float32)
            for _ in range(n)]


def _acq(rng, n):
    return [{"mpp": 0.5, "tissue_area_mm2": float(rng.uniform(2, 4)),
             "n_patches": int(rng.integers(30, 60)),
             "stain": {"hematoxylin_share": float(rng.uniform(0.3, 0.4)),
                       "stain_intensity": float(rng.uniform(0.4, 0.5)),
                       "off_stain": float(rng.uniform(0.0, 0.02))}} for _ in range(n)]


@pytest.fixture(scope="module")
def summary():
    feats = _train_features()
    return build_summary(feats, _acq(np.random.default_rng(1), len(feats)), encoder="demo",
                         target_mpp=0.5)


def test_summary_is_small_sound_and_json(summary):
    assert summary_problems(summary, 8) == []
    text = json.dumps(summary)
    assert len(text) < 20_000
    assert set(summary["checks"]) == {"slide_distance", "patch_outlier_share",
                                      "hematoxylin_share", "stain_intensity", "off_stain",
                                      "mpp", "tissue_area_mm2", "patch_count"}
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(decode_array(encode_array(a)), a)


@pytest.mark.parametrize("damage, words", [
    (lambda s: s["slide_pca"].update(mean=encode_array(np.full(8, np.nan))), "NaN"),
    (lambda s: s["patch_pca"].update(components=encode_array(np.ones((3, 5)))), "disagree"),
    (lambda s: s["slide_pca"]["sdev"].update(f4="!!!!"), "do not match"),
    (lambda s: s["checks"]["mpp"].update(quantiles=[0.5] * 100), "101 finite"),
    (lambda s: s["checks"].update(colour={"quantiles": [0.0] * 101}), "unknown check"),
    (lambda s: s.update(patch_threshold=-1), "patch_threshold"),
])
def test_a_damaged_summary_is_refused_on_load(summary, tmp_path, damage, words):
    bad = copy.deepcopy(summary)
    damage(bad)
    assert any(words in p for p in summary_problems(bad, 8))
    # in a bundle: the encoder's 64-d features do not match this 8-d summary either
    with pytest.raises(BundleError, match="distribution"):
        make_bundle(tmp_path / "bad.safetensors", distribution=bad)


# ----------------------------------------------------------------- verdict


def test_verdict_in_unusual_and_out(summary):
    rng = np.random.default_rng(7)
    acq = _acq(rng, 1)[0]
    same = assess(summary, rng.normal(size=(45, 8)), [acq])
    assert same.verdict == IN and same.reasons == []
    assert len(same.patch_unlike) == 45 and same.to_dict()["checks"]
    # a share of patches shifted far away: only those are unlike training
    mixed = rng.normal(size=(50, 8))
    mixed[:20] += 8.0
    v = assess(summary, mixed, [acq])
    assert v.verdict == OUT
    assert any("40 % of patches unlike any training patch" in r for r in v.reasons)
    assert (v.patch_unlike[:20] > 1).all() and np.median(v.patch_unlike[20:]) < 1
    # resolution coarser than the model's patches, and a stain bluer than any training
    coarse = dict(acq, mpp=1.0)
    r = assess(summary, rng.normal(size=(45, 8)), [coarse])
    assert r.verdict == OUT and r.reasons == [
        "resolution 1.00 µm/px, model trained at 0.50 µm/px (patches were enlarged)"]
    blue = dict(acq, stain=dict(acq["stain"], hematoxylin_share=0.5))
    r = assess(summary, rng.normal(size=(45, 8)), [blue])
    assert r.verdict == OUT and "far bluer" in r.reasons[0]
    # a little beyond the training range is unusual; tissue area is at most unusual
    slightly = dict(acq, stain=dict(acq["stain"], hematoxylin_share=0.42))
    assert assess(summary, rng.normal(size=(45, 8)), [slightly]).verdict == UNUSUAL
    big = dict(acq, tissue_area_mm2=400.0)
    r = assess(summary, rng.normal(size=(45, 8)), [big])
    assert r.verdict == UNUSUAL and "more tissue" in r.reasons[0]
    # the margins are the user's: wide margins call the bluer slide fine
    wide = assess(summary, rng.normal(size=(45, 8)), [blue], unusual_margin=5, ood_margin=9)
    assert wide.verdict == IN


def test_no_summary_is_not_available():
    r = assess(None, np.zeros((3, 8)), [{}])
    assert r.verdict == NOT_AVAILABLE and not r.available and "no summary" in r.note


# ----------------------------------------------------------------- bundle + prediction


@pytest.fixture(scope="module")
def fast_slide(tmp_path_factory):
    rgb, _ = he_image(768, 1024, mpp=0.5, seed=11)
    return write_pyramid(tmp_path_factory.mktemp("s") / "he.tif", rgb, mpp=0.5, levels=2)


def test_summary_round_trips_and_reaches_report_and_cohort_csv(tmp_path, fast_slide):
    from napari_ghanet.cohort.report import cohort_rows
    from napari_ghanet.inference.predict import predict_slide, write_report_json

    old = make_bundle(tmp_path / "old.safetensors", encoder=FAST_ENCODER)
    kw = dict(device="cpu", use_cache=False, qc=None)
    p_old = predict_slide(fast_slide, old, **kw)
    assert p_old.distribution.verdict == NOT_AVAILABLE  # an old bundle still predicts
    # a summary made from this slide's own features (twelve noisy copies)
    from napari_ghanet.io.slide import open_slide
    from napari_ghanet.preprocessing.tissue import tissue_mask

    feats = _embed(fast_slide)
    rng = np.random.default_rng(0)
    train = [feats + rng.normal(0, 0.05 * feats.std(0) + 1e-6, feats.shape).astype(np.float32)
             for _ in range(12)]
    with open_slide(fast_slide) as s:
        m = tissue_mask(s)
        acq = {"mpp": s.mpp, "tissue_area_mm2": m.area_um2 / 1e6, "n_patches": len(feats),
               "stain": m.stain}
    summ = build_summary(train, [acq] * 12, encoder="morphometric", target_mpp=2.0)
    new = make_bundle(tmp_path / "new.safetensors", encoder=FAST_ENCODER, distribution=summ)
    assert read_bundle_metadata(new)["distribution"] == json.loads(json.dumps(summ))
    bundle = load_bundle(new)
    assert bundle.distribution["n_slides"] == 12
    p = predict_slide(fast_slide, bundle, **kw)
    assert p.risk == p_old.risk  # the verdict never changes the risk (same weights)
    assert p.distribution.verdict in (IN, UNUSUAL)
    names = {c.name for c in p.distribution.checks}
    assert {"slide_distance", "hematoxylin_share", "mpp", "tissue_area_mm2"} <= names
    off = predict_slide(fast_slide, bundle, distribution_check=False, **kw)
    assert off.distribution.verdict == NOT_AVAILABLE and "switched off" in off.distribution.note
    # the JSON report and cohort.csv
    out = tmp_path / "r.json"
    write_report_json(p, out)
    rep = json.loads(out.read_text())
    assert rep["distribution"]["verdict"] == p.distribution.verdict
    assert rep["distribution"]["checks"][0]["training_percentile"] is not None
    rows, _ = cohort_rows([{"status": "done", "output": str(out), "slide": str(fast_slide)}])
    assert rows[0]["distribution"] == p.distribution.verdict
    # read at a resolution coarser than the model's patches: out, with the reason
    wrong = predict_slide(fast_slide, bundle, mpp=4.0, **kw)
    assert wrong.distribution.verdict == OUT
    assert any("resolution 4.00 µm/px" in r for r in wrong.distribution.reasons)


def _embed(path):
    from napari_ghanet.encoders import create_encoder
    from napari_ghanet.inference.stages import embed_to_file
    from napari_ghanet.io.features import load_features

    enc = create_encoder("morphometric", patch_px=64, target_mpp=2.0)
    out = embed_to_file(path, path.parent / "feats", enc, device="cpu", workers=0)
    assert out.ok, out.summary()
    return load_features(out.path).features


def test_embed_records_the_acquisition_and_the_bundle_command_summarises_it(tmp_path,
                                                                           fast_slide):
    from napari_ghanet.encoders import create_encoder
    from napari_ghanet.inference.stages import embed_to_file
    from napari_ghanet.io.features import load_features

    enc = create_encoder("morphometric", patch_px=64, target_mpp=2.0)
    out = embed_to_file(fast_slide, tmp_path, enc, device="cpu", workers=0)
    acq = load_features(out.path).attrs["acquisition"]
    assert acq["mpp"] == pytest.approx(0.5) and acq["n_patches"] == out.n_patches
    assert acq["tissue_area_mm2"] > 0 and 0 < acq["stain"]["hematoxylin_share"] < 1
