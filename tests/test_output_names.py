"""Nothing escapes --out (issue 26): a manifest ``case_id`` or ``--patient`` that is a path
(``../../x``, an absolute path, ``..``, ``/``) is refused before any work, with a clear line
and nothing written anywhere; :func:`safe_name` holds on generated names (seeded fuzz)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle
from conftest import he_image, write_pyramid
from napari_ghanet.cohort.inputs import read_manifest
from napari_ghanet.errors import GHANetError, UnsafeNameError
from napari_ghanet.io.names import (
    MAX_NAME_BYTES,
    child_path,
    make_safe_name,
    name_problem,
    safe_name,
)

HOSTILE = ["../../x", "..", ".", "/", "/tmp/ghanet-escape", "a/b", "a\\b", "..\\..\\x",
           "", " ", "x\0y", "x\ny", ".hidden", "-rf", "C:evil", "x" * (MAX_NAME_BYTES + 1),
           "é" * (MAX_NAME_BYTES // 2 + 1), "\u202eevil"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name, tmp_path):
    with pytest.raises(UnsafeNameError) as e:
        safe_name(name, "case_id")
    assert "case_id" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnsafeNameError):
        child_path(tmp_path, name, ".ghanet.json")


@pytest.mark.parametrize("name", ["TCGA-2F-A9KO", "patient 01", "P1", "slide.v2", "Ünïcode-名"])
def test_plain_names_pass_unchanged(name, tmp_path):
    assert safe_name(name) == name
    assert child_path(tmp_path, name, ".ghanet.json").parent == tmp_path


def test_generated_names_never_leave_the_folder(tmp_path):
    """Seeded fuzz: random strings over an alphabet rich in separators, dots, controls and
    wide characters. A name is either refused or its file lies directly in the folder; a
    made-safe name is always accepted and also stays in the folder."""
    rng = random.Random(26)
    alphabet = list("./\\\0\n\t -_:~*?") + ["..", "é", "名", "\u202e", "\x7f", "a", "Z", "0"]
    accepted = 0
    for _ in range(3000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        if name_problem(name) is None:
            accepted += 1
            p = child_path(tmp_path, name, ".patches.csv")
            assert p.parent == tmp_path
            assert os.path.normpath(p).startswith(os.fspath(tmp_path) + os.sep)
            assert len(p.name.encode()) < 255
        else:
            with pytest.raises(UnsafeNameError):
                safe_name(name)
        made = make_safe_name(name)
        assert name_problem(made) is None, (name, made)
        assert child_path(tmp_path, made).parent == tmp_path
    assert accepted > 100  # the generator also reaches names that are fine


def _slides(tmp_path, n=2):
    d = tmp_path / "slides"
    d.mkdir()
    for i in range(n):
        write_pyramid(d / f"s{i}.tif", he_image(512, 512, seed=i)[0], mpp=0.5, levels=1)
    return d


@pytest.mark.parametrize("case_id", ["../../escaped", "/tmp/abs-escape", "..", "/"])
def test_manifest_case_id_cannot_write_outside_out(case_id, tmp_path, capsys):
    from napari_ghanet.cli import main

    _slides(tmp_path)
    man = tmp_path / "manifest.csv"
    man.write_text(f'slide,case_id\nslides/s0.tif,"{case_id}"\nslides/s1.tif,"{case_id}"\n')
    with pytest.raises(UnsafeNameError, match="line 2: case_id"):
        read_manifest(man)
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    before = set(tmp_path.rglob("*"))
    out = tmp_path / "deep" / "out"
    code = main(["predict", "--manifest", str(man), "--model", str(bundle), "--out", str(out),
                 "--device", "cpu", "--no-cache", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "case_id" in err and "cannot be used as a file name" in err
    assert "Traceback" not in err
    assert set(tmp_path.rglob("*")) == before  # nothing written, --out not even created
    assert not Path("/tmp/abs-escape").exists()


@pytest.mark.parametrize("patient", ["../escaped", "/tmp/ghanet-patient-escape", "..", "a/b"])
def test_patient_flag_cannot_write_outside_out(patient, tmp_path, capsys):
    from napari_ghanet.cli import main

    d = _slides(tmp_path)
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    out = tmp_path / "out"
    before = set(tmp_path.rglob("*"))
    code = main(["predict", str(d / "s0.tif"), str(d / "s1.tif"), "--patient", patient,
                 "--model", str(bundle), "--out", str(out), "--device", "cpu", "--no-cache",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--patient" in err and "Traceback" not in err
    assert set(tmp_path.rglob("*")) == before
    assert not Path("/tmp/ghanet-patient-escape.ghanet.json").exists()


def test_library_refuses_a_path_as_patient_before_any_work(tmp_path):
    from napari_ghanet.inference.predict import predict_patient

    d = _slides(tmp_path)
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    with pytest.raises(UnsafeNameError):
        predict_patient([d / "s0.tif", "/no/such/slide.svs"], bundle, patient="../up",
                        device="cpu", use_cache=False)
    assert issubclass(UnsafeNameError, GHANetError)


def test_export_paths_refuse_a_forged_patient(tmp_path):
    """A prediction whose recorded patient was changed after the run still cannot write
    outside the folder: export_paths checks the name again."""
    from napari_ghanet.inference.export_registry import export_all
    from napari_ghanet.inference.predict import predict_slide

    d = _slides(tmp_path, n=1)
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    p = predict_slide(d / "s0.tif", bundle, device="cpu", use_cache=False)
    p.slide["patient"] = "../../forged"
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeNameError):
        export_all(p, out)
    assert list(out.iterdir()) == [] and not (tmp_path / "forged.ghanet.json").exists()
    p.slide["patient"] = None
    written = export_all(p, out)
    assert all(Path(w).parent == out for w in written.values())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
