"""PredictionSession without Qt: a real generated slide, a small bundle, the same numbers
as predict_slide, events, cancel, the bundle loaded once, exports from the registry."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle
from napari_ghanet.errors import Cancelled, SlideError
from napari_ghanet.inference import session as session_module
from napari_ghanet.inference.predict import predict_patient, predict_slide
from napari_ghanet.inference.session import PredictionSession, SessionError, SlideInput
from napari_ghanet.options import PredictOptions
from napari_ghanet.preprocessing.roi import Region, Regions


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


@pytest.fixture
def options():
    return PredictOptions.create(device="cpu", use_cache=False)


@pytest.fixture
def counted_loads(monkeypatch):
    loads = []
    real = session_module.load_bundle

    def counting(path, *a, **k):
        loads.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(session_module, "load_bundle", counting)
    return loads


def _record(session):
    seen = {"state": [], "progress": [], "result": [], "error": [], "preliminary": []}
    for name, store in seen.items():
        getattr(session.events, name).connect(lambda *a, _s=store: _s.append(a))
    return seen


def test_a_run_gives_predict_slides_numbers_and_reports_it(tiled_tiff, bundle_path, options,
                                                           tmp_path, counted_loads):
    session = PredictionSession(bundle_path, options)
    session.choose_slides([tiled_tiff])
    seen = _record(session)
    p = session.run()
    direct = predict_slide(tiled_tiff, bundle_path, options)
    assert p.risk == pytest.approx(direct.risk, abs=1e-6)
    np.testing.assert_allclose(p.morphology_attention, direct.morphology_attention, rtol=1e-5)
    np.testing.assert_array_equal(p.coords, direct.coords)
    assert session.result is p and session.state == "done" and not session.running
    assert [s for (s,) in seen["state"]] == ["running", "done"]
    assert seen["result"] == [(p,)] and seen["error"] == []
    stages = [stage for stage, _, _ in seen["progress"]]
    assert "features" in stages and "model" in stages
    assert seen["preliminary"] == []  # not asked for
    # exports of the result through the registry, with the default names
    written = session.export_all(tmp_path / "out")
    assert sorted(w.name for w in written.values()) == [
        "tiled.ghanet.json", "tiled.patches.csv", "tiled.patches.geojson"]
    report = json.loads(written["report"].read_text())
    assert report["prediction"]["risk"] == pytest.approx(p.risk)
    assert session.export("geojson", tmp_path / "one") == tmp_path / "one.geojson"
    assert len(counted_loads) == 1


def test_the_bundle_is_loaded_once_per_choice(bundle_path, tmp_path, counted_loads):
    session = PredictionSession()
    chosen = []
    session.events.bundle.connect(chosen.append)
    first = session.choose_bundle(bundle_path)
    assert session.choose_bundle(bundle_path) is first  # the same file: no reload
    assert session.choose_bundle(str(bundle_path)) is first
    assert len(counted_loads) == 1 and chosen == [first]
    other = make_bundle(tmp_path / "other.safetensors", encoder=FAST_ENCODER, seed=3)
    second = session.choose_bundle(other)
    assert second is not first and session.bundle is second and len(counted_loads) == 2
    # the first file again is loaded again (another choice), then kept
    assert session.choose_bundle(bundle_path) is not first
    assert len(counted_loads) == 3
    session.choose_bundle(None)
    assert session.bundle is None and chosen[-1] is None


def test_cancel_mid_run_leaves_no_result(tiled_tiff, bundle_path, options):
    session = PredictionSession(bundle_path, options)
    session.choose_slides([SlideInput(tiled_tiff)])
    seen = _record(session)
    earlier = session.run()  # a first result, which the cancelled run does not keep
    assert session.result is earlier

    def cancel_on_features(stage, done, total):
        if stage == "features" and done > 0:
            session.cancel()

    session.events.progress.connect(cancel_on_features)
    future = session.start()
    with pytest.raises(Cancelled):
        future.result(timeout=120)
    assert session.result is None and session.state == "cancelled" and not session.running
    assert seen["error"] == [] and len(seen["result"]) == 1
    assert [s for (s,) in seen["state"]][-3:] == ["running", "cancelling", "cancelled"]
    # the session runs again afterwards, to the same numbers
    session.events.progress.disconnect(cancel_on_features)
    again = session.start().result(timeout=120)
    assert again.risk == pytest.approx(earlier.risk, abs=1e-6)


def test_regions_mpp_and_a_patient_reach_the_library(tiled_tiff, bundle_path, options):
    h, w = 1536, 2048
    from shapely.geometry import box

    left = Regions([Region(box(0, 0, w // 2, h))])
    session = PredictionSession(bundle_path, options)
    session.choose_slides([SlideInput(tiled_tiff, mpp=0.5, regions=left)])
    p = session.run()
    direct = predict_slide(tiled_tiff, bundle_path, options, regions=left, mpp=0.5)
    assert p.risk == pytest.approx(direct.risk, abs=1e-6)
    assert p.regions_report["n_kept"] == direct.regions_report["n_kept"] < \
        predict_slide(tiled_tiff, bundle_path, options).n_patches
    session.choose_slides([tiled_tiff, SlideInput(tiled_tiff, mpp=0.5)], patient="case-7")
    both = session.run()
    direct = predict_patient([tiled_tiff, tiled_tiff], bundle_path, options,
                             patient="case-7", mpp=[None, 0.5])
    assert both.n_slides == 2 and both.slide["patient"] == "case-7"
    assert both.risk == pytest.approx(direct.risk, abs=1e-6)


def test_preliminary_answers_when_asked(tiled_tiff, bundle_path, options):
    session = PredictionSession(bundle_path, options)
    session.choose_slides([tiled_tiff])
    session.progressive = True
    seen = _record(session)
    p = session.run()
    finals = [est for (est,) in seen["preliminary"] if est.final]
    assert len(finals) == 1 and finals[0].risk == pytest.approx(p.risk, abs=1e-5)


def test_refusals_and_failures(tmp_path, bundle_path, options):
    session = PredictionSession(options=options)
    with pytest.raises(SessionError, match="no model chosen"):
        session.run()
    session.choose_bundle(bundle_path)
    with pytest.raises(SessionError, match="no slide chosen"):
        session.start()
    with pytest.raises(SessionError, match="predict first"):
        session.export_all(tmp_path)
    seen = _record(session)
    session.choose_slides([tmp_path / "missing.svs"])
    future = session.start()
    with pytest.raises(SlideError):
        future.result(timeout=60)
    assert session.state == "failed" and session.result is None
    assert len(seen["error"]) == 1 and isinstance(seen["error"][0][0], SlideError)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SessionError, match="PredictOptions"):
        session.options = {"device": "cpu"}
    # a listener that fails does not stop anything
    session.events.state.connect(lambda state: 1 / 0)
    done = threading.Event()
    session.events.state.connect(lambda state: done.set())
    session.choose_slides([tmp_path / "missing.svs"])
    with pytest.raises(SlideError):
        session.run()
    assert done.is_set()
