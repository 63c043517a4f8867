"""A patient made of several slides (same manifest case_id) is predicted from the union of
their patches, through ``inference.predict.predict_patient`` (the same risk as calling it
directly), in ``OUT/<case_id>/``, and a re-run skips both units.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle
from conftest import he_image, write_pyramid
from napari_ghanet.cohort import predict_cohort


def test_slides_sharing_a_case_id_are_one_patient(tmp_path):
    from napari_ghanet.inference.predict import predict_patient

    d = tmp_path / "slides"
    d.mkdir()
    for i in range(3):
        write_pyramid(d / f"s{i}.tif", he_image(768, 1024, seed=i)[0], mpp=0.5, levels=2)
    man = tmp_path / "manifest.csv"
    man.write_text("slide,case_id\nslides/s0.tif,P1\nslides/s1.tif,P1\nslides/s2.tif,P2\n")
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    out = tmp_path / "out"
    s = predict_cohort(None, out, bundle, manifest=man, device="cpu", use_cache=False,
                       progress=False)
    assert s.line == "2 done, 0 skipped, 0 failed", s.rows
    table = pd.read_csv(out / "cohort.csv")
    assert sorted(table.unit) == ["P1", "s2"]
    p1 = table[table.unit == "P1"].iloc[0]
    assert p1.slide == "s0.tif;s1.tif" and p1.case_id == "P1"
    direct = predict_patient([d / "s0.tif", d / "s1.tif"], bundle, device="cpu",
                             use_cache=False)
    assert p1.risk == pytest.approx(direct.risk, abs=1e-6)
    assert p1.n_patches == direct.n_patches
    marker = json.loads((out / "P1" / "P1.cohort.json").read_text())
    assert len(marker["slide_fingerprints"]) == 2
    again = predict_cohort(None, out, bundle, manifest=man, device="cpu", use_cache=False,
                           progress=False)
    assert again.line == "0 done, 2 skipped, 0 failed"
