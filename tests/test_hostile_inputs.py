"""Hostile inputs (issue 26): crafted feature caches and feature files, HDF5 external
storage and FIFOs, a full disk during an HDF5 write, debris left by kill -9.

Each family has regression cases on crafted inputs and a seeded property-based test
(hypothesis) that generates new variants. The family table is in docs/security.md
(``## Hostile inputs``); ROI, manifest and survival tables are tested in
``test_hostile_text_inputs.py``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from _plugin_helpers import FAST_ENCODER, make_bundle, write_test_cache
from napari_ghanet.errors import FeaturesError, NotWritableError
from napari_ghanet.io import atomic
from napari_ghanet.io.cache import FEATURE_KEY_FILE, cache_dir, feature_key
from napari_ghanet.io.features import (
    PatchFeatures,
    cached_features_path,
    features_digest,
    keyed_digest,
    load_cached_features,
    load_features,
    match_features,
    save_features,
)
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

SPEC = {"name": "morphometric", "dim": 8, "patch_px": 256, "target_mpp": 0.5, "version": 1}
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def sg(tiled_tiff):
    """(slide, grid) of the generated tiled slide, open for the module."""
    slide = open_slide(tiled_tiff)
    yield slide, patch_grid(slide, tissue_mask(slide))
    slide.close()


def _write_cache(folder: Path, slide, grid):
    return write_test_cache(folder, slide, grid, SPEC)


def _status(path: Path, slide, grid) -> tuple[str, str]:
    _, status, why = match_features(path, slide_fingerprint=slide.fingerprint(),
                                    encoder_spec=SPEC, grid=grid)
    return status, why


@contextmanager
def _no_hang(seconds: int = 20):
    """Fail (instead of hanging the suite) when the block blocks longer than ``seconds``."""
    def boom(*_):
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------- 1. altered caches


def test_a_cache_whose_digests_were_removed_and_features_flipped_is_not_reused(tmp_path, sg):
    slide, grid = sg
    path, feats = _write_cache(tmp_path, slide, grid)
    assert _status(path, slide, grid) == ("hit", "")
    with h5py.File(path, "r+") as f:
        del f.attrs["content_sha256"]
        del f.attrs["content_hmac"]
        f["features"][0, 0] = f["features"][0, 0] + 1.0
    notices: list[str] = []
    assert load_cached_features(tmp_path, slide, SPEC, grid, notices=notices) is None
    assert "not trusted" in notices[0] and "recomputing" in notices[0]


def test_a_cache_forged_with_a_recomputed_unkeyed_digest_is_rejected(tmp_path, sg):
    slide, grid = sg
    path, feats = _write_cache(tmp_path, slide, grid)
    with h5py.File(path, "r+") as f:
        data = f["features"][()]
        data[3] *= -1.0
        f["features"][...] = data
        f.attrs["content_sha256"] = features_digest(data, f["coords"][()])
    status, why = _status(path, slide, grid)
    assert status == "damaged" and "keyed digest does not match" in why
    # signed with another key (another user's, or a guessed one): rejected too
    with h5py.File(path, "r+") as f:
        signed = {"root": {k: v for k, v in load_features(path).attrs.items()}}
        f.attrs["content_hmac"] = keyed_digest(b"x" * 32, data, f["coords"][()], None, signed)
    assert _status(path, slide, grid)[0] == "damaged"
    # the features stage recomputes it and replaces the file with a signed one
    assert _write_cache(tmp_path, slide, grid)[0] == path
    assert _status(path, slide, grid) == ("hit", "")


def test_the_key_is_private_made_once_and_replaced_when_others_can_read_it(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("NAPARI_GHANET_CACHE", str(tmp_path))
    key = feature_key()
    path = cache_dir() / FEATURE_KEY_FILE
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert feature_key() == key
    os.chmod(path, 0o644)  # readable by others: anyone could forge caches with it
    new = feature_key()
    assert new != key and len(new) == 32 and path.stat().st_mode & 0o777 == 0o600


def test_a_key_that_is_a_fifo_is_replaced_without_blocking(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_GHANET_CACHE", str(tmp_path))
    os.mkfifo(tmp_path / FEATURE_KEY_FILE)
    with _no_hang():
        key = feature_key()
    assert len(key) == 32 and (tmp_path / FEATURE_KEY_FILE).is_file()


@seed(2601)
@SETTINGS
@given(data=st.data())
def test_property_any_alteration_of_a_signed_cache_is_never_trusted(tmp_path_factory, sg, data):
    slide, grid = sg
    folder = tmp_path_factory.mktemp("alter")
    path, _ = _write_cache(folder, slide, grid)
    what = data.draw(st.sampled_from(["features", "coords", "attr", "drop", "add"]))
    with h5py.File(path, "r+") as f:
        if what in ("features", "coords"):
            arr = f[what][()]
            flat = arr.reshape(-1).view(np.uint8)
            i = data.draw(st.integers(0, flat.size - 1))
            flat[i] ^= 1 << data.draw(st.integers(0, 7))
            f[what][...] = arr
            if data.draw(st.booleans()):  # and forge the unkeyed digest
                f.attrs["content_sha256"] = features_digest(f["features"][()], f["coords"][()])
        elif what == "attr":
            name = data.draw(st.sampled_from(
                ["slide_fingerprint", "grid_key", "encoder", "n_skipped", "step_level0"]))
            f.attrs[name] = data.draw(st.sampled_from(["x", "0" * 64, 7, 0.5]))
        elif what == "drop":
            del f.attrs[data.draw(st.sampled_from(["content_hmac", "content_sha256",
                                                   "encoder_spec", "grid_key"]))]
        else:
            f.attrs[data.draw(st.text(min_size=1, max_size=8))] = "extra"
    assert _status(path, slide, grid)[0] in ("damaged", "differs")


# --------------------------------------------------------------- 2. crafted attributes


def _crafted_cases(n: int) -> dict:
    deep = "[" * 100_000 + "]" * 100_000
    big = (477 * 2**30) // (4 * 8)
    return {
        "array for slide_fingerprint": ("attr", "slide_fingerprint", np.arange(5)),
        "array of texts for encoder_spec": ("attr", "encoder_spec",
                                            np.array([b"a", b"b"], dtype="S1")),
        "100,000-deep JSON in encoder_spec": ("attr", "encoder_spec", deep),
        "100,000-deep JSON in another attribute": ("attr", "note", deep),
        "number for content_hmac": ("attr", "content_hmac", 3),
        "text for n_skipped": ("attr", "n_skipped", "many"),
        "empty attribute": ("attr", "grid_key", h5py.Empty("f4")),
        "477 GiB declared in a small file": ("dataset", "features",
                                              dict(shape=(big, 8), dtype="f4",
                                                   chunks=(1024, 8))),
        "text features": ("dataset", "features", dict(data=np.array([b"abc"] * n))),
        "compound features": ("dataset", "features",
                              dict(data=np.zeros(n, dtype=[("a", "f4"), ("b", "i4")]))),
        "coords with three columns": ("dataset", "coords", dict(data=np.zeros((n, 3), "i8"))),
        "five-dimensional features": ("dataset", "features",
                                      dict(data=np.zeros((1, 1, 1, n, 8), "f4"))),
        "scalar features": ("dataset", "features", dict(data=np.float32(1))),
        "coords of 1e300": ("dataset", "coords", dict(data=np.full((n, 2), 1e300))),
        "features a group": ("group", "features", None),
    }


def _craft(path: Path, kind: str, name: str, value) -> None:
    with h5py.File(path, "r+") as f:
        if kind == "attr":
            f.attrs[name] = value
        else:
            del f[name]
            if kind == "group":
                f.create_group(name)
            else:
                f.create_dataset(name, **value)


@pytest.mark.parametrize("case", list(_crafted_cases(1)))
def test_crafted_cache_is_treated_as_absent_never_a_traceback(tmp_path, sg, case):
    slide, grid = sg
    path, _ = _write_cache(tmp_path, slide, grid)
    kind, name, value = _crafted_cases(len(grid))[case]
    _craft(path, kind, name, value)
    assert path.stat().st_size < 10 * 2**20
    notices: list[str] = []
    assert load_cached_features(tmp_path, slide, SPEC, grid, notices=notices) is None
    assert len(notices) == 1 and "\n" not in notices[0] and "recomputing" in notices[0]
    # read as a plain feature file (training, no key): one FeaturesError line, or features
    try:
        load_features(path)
    except FeaturesError as e:
        assert str(path) in str(e) and "\n" not in str(e)


_ATTR_VALUES = st.one_of(
    st.text(max_size=50), st.integers(-2**63, 2**63 - 1), st.floats(), st.booleans(),
    st.binary(max_size=30),
    st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),
    st.integers(1, 3000).map(lambda d: '{"a":' * d + "1" + "}" * d),
    st.lists(st.integers(-10, 10), min_size=2, max_size=6).map(np.array),
    st.lists(st.floats(allow_nan=True), min_size=2, max_size=6).map(np.array),
)


@seed(2602)
@SETTINGS
@given(data=st.data())
def test_property_generated_attributes_and_datasets_never_trace_back(tmp_path_factory, sg, data):
    slide, grid = sg
    folder = tmp_path_factory.mktemp("attrs")
    path, _ = _write_cache(folder, slide, grid)
    with h5py.File(path, "r+") as f:
        for _ in range(data.draw(st.integers(1, 4))):
            name = data.draw(st.sampled_from(
                ["slide_fingerprint", "grid_key", "encoder_spec", "content_hmac",
                 "content_sha256", "step_level0", "n_skipped", "seconds", "target_mpp",
                 "coords_missing", "qc_measure_key", "skipped_coords", "zz"]))
            f.attrs[name] = data.draw(_ATTR_VALUES)
        if data.draw(st.booleans()):
            target = data.draw(st.sampled_from(["features", "coords"]))
            shape = tuple(data.draw(st.lists(st.integers(0, 2**20), min_size=0, max_size=4)))
            dtype = data.draw(st.sampled_from(["f4", "f8", "i8", "u1", "S4"]))
            del f[target]
            chunked = data.draw(st.booleans()) and len(shape) > 0 and all(shape)
            f.create_dataset(target, shape=shape, dtype=dtype,
                             chunks=tuple(1 for _ in shape) if chunked else None)
    status, why = _status(path, slide, grid)  # must not raise
    assert status in ("damaged", "differs", "hit")
    try:
        feats = load_features(path)
    except FeaturesError as e:
        assert "\n" not in str(e)
    else:
        assert feats.features.dtype == np.float32 and feats.features.ndim == 2


def test_ghanet_predict_recomputes_a_crafted_cache_with_a_warning(tmp_path, tiled_tiff):
    from napari_ghanet.cli import main

    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["predict", str(tiled_tiff), "--model", str(bundle), "--out", str(out),
            "--device", "cpu", "--cache-dir", str(cache), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "tiled.ghanet.json").read_text())
    (path,) = cache.rglob("*.h5")
    n = len(load_features(path).features)
    big = (477 * 2**30) // (4 * 64)
    _craft(path, "dataset", "features", dict(shape=(big, 64), dtype="f4", chunks=(1024, 64)))
    _craft(path, "attr", "encoder_spec", "[" * 100_000 + "]" * 100_000)
    assert main(argv) == 0
    again = json.loads((out / "tiled.ghanet.json").read_text())
    assert any("recomputing" in w for w in again["warnings"]), again["warnings"]
    assert again["prediction"]["risk"] == pytest.approx(report["prediction"]["risk"], abs=1e-5)
    assert len(load_features(path, key=feature_key()).features) == n  # replaced, signed


def test_ghanet_embed_re_embeds_a_damaged_feature_file(tmp_path, tiled_tiff, capsys):
    from napari_ghanet.cli import main

    out = tmp_path / "feats"
    argv = ["embed", str(tiled_tiff), "--out", str(out), "--encoder", "morphometric",
            "--patch-px", "64", "--target-mpp", "2.0", "--quiet"]
    assert main(argv) == 0
    path = out / "tiled.h5"
    good = load_features(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "replaced a file that could not be trusted" in text and "Traceback" not in text
    np.testing.assert_array_equal(load_features(path).features, good.features)


# --------------------------------------------------------------- 3. external storage


def _external_cases(tmp: Path, n: int) -> dict:
    fifo = tmp / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    other = tmp / "other.h5"
    with h5py.File(other, "w") as g:
        g["coords"] = np.zeros((n, 2), np.int64)

    def external(f):
        del f["features"]
        f.create_dataset("features", shape=(n, 8), dtype="f4",
                         external=[(str(fifo), 0, n * 8 * 4)])

    def ext_link(f):
        del f["coords"]
        f["coords"] = h5py.ExternalLink(str(other), "/coords")

    def vds(f):
        del f["features"]
        layout = h5py.VirtualLayout(shape=(n, 8), dtype="f4")
        layout[:] = h5py.VirtualSource(str(fifo), "features", shape=(n, 8))
        f.create_virtual_dataset("features", layout)

    def soft(f):
        f.move("coords", "real")
        f["coords"] = h5py.SoftLink("/real")

    return {"external storage in a FIFO": external, "external link": ext_link,
            "virtual dataset over a FIFO": vds, "soft link": soft}


@pytest.mark.parametrize("case", ["external storage in a FIFO", "external link",
                                  "virtual dataset over a FIFO", "soft link"])
def test_external_storage_links_and_virtual_datasets_are_never_followed(tmp_path, sg, case):
    slide, grid = sg
    path, _ = _write_cache(tmp_path, slide, grid)
    with h5py.File(path, "r+") as f:
        _external_cases(tmp_path, len(grid))[case](f)
    notices: list[str] = []
    with _no_hang():
        assert load_cached_features(tmp_path, slide, SPEC, grid, notices=notices) is None
        with pytest.raises(FeaturesError, match="inside the file"):
            load_features(path)
    assert "inside the file" in notices[0]


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink to /dev/zero"])
def test_a_cache_path_that_is_not_a_regular_file_is_recomputed_without_blocking(
        tmp_path, sg, kind):
    slide, grid = sg
    path = cached_features_path(tmp_path, slide, SPEC, grid)
    path.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    notices: list[str] = []
    with _no_hang():
        assert load_cached_features(tmp_path, slide, SPEC, grid, notices=notices) is None
    assert "not a regular file" in notices[0] or "is a folder" in notices[0]


@seed(2603)
@SETTINGS
@given(data=st.data())
def test_property_any_mix_of_external_links_never_hangs_or_is_followed(
        tmp_path_factory, sg, data):
    slide, grid = sg
    folder = tmp_path_factory.mktemp("ext")
    path, _ = _write_cache(folder, slide, grid)
    cases = _external_cases(folder, len(grid))
    chosen = data.draw(st.lists(st.sampled_from(sorted(cases)), min_size=1, max_size=2,
                                unique=True))
    with h5py.File(path, "r+") as f:
        for name in chosen:
            cases[name](f)
    with _no_hang():
        assert _status(path, slide, grid)[0] == "damaged"


# --------------------------------------------------------------- 4. a full disk


def _feats(n: int = 2000, d: int = 64) -> PatchFeatures:
    rng = np.random.default_rng(1)
    coords = np.stack(np.meshgrid(np.arange(n) * 256, [0]), -1).reshape(-1, 2)
    return PatchFeatures(rng.normal(size=(n, d)).astype(np.float32), coords,
                         {"encoder_spec": SPEC})


def _debris(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if "ghanet-" in p.name]


def test_short_free_space_refuses_the_write_before_it_starts(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path)._replace(free=100_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: free)
    with pytest.raises(NotWritableError, match=r"needs 552 KiB and only 98 KiB is free"):
        save_features(tmp_path / "f.h5", _feats())
    assert list(tmp_path.iterdir()) == []


def test_an_io_error_mid_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(bytes(data)[:1000])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fake_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        return Full(fh) if "ghanet-tmp" in str(path) and "w" in mode else fh

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(NotWritableError, match="the disk is full; free some space") as e:
        save_features(tmp_path / "f.h5", _feats())
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs (root only: CI runs as root, so it is not skipped there)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI"):
            pytest.fail("the full-disk tests need root and mount in CI")
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {r.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_disk_fails_cleanly_checked_or_mid_write(small_disk, monkeypatch):
    with pytest.raises(NotWritableError, match="is free on the disk"):
        save_features(small_disk / "a.h5", _feats())  # 0.5 MB on a 200 KiB disk
    assert list(small_disk.iterdir()) == []
    # the free-space check fooled: the real write hits ENOSPC, caught in Python
    free = shutil.disk_usage(small_disk)._replace(free=2**40)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: free)
    with pytest.raises(NotWritableError, match="the disk is full"):
        save_features(small_disk / "a.h5", _feats())
    assert list(small_disk.iterdir()) == []
    save_features(small_disk / "b.h5", _feats(n=100, d=8))  # what fits is written
    assert len(load_features(small_disk / "b.h5")) == 100


def test_ghanet_embed_and_predict_on_a_full_disk_end_in_one_line(small_disk, tmp_path,
                                                                  tiled_tiff, capsys):
    from napari_ghanet.cli import main

    fill = small_disk / "filler"
    fill.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 40_000))
    second = tmp_path / "second.tif"
    shutil.copy(tiled_tiff, second)
    # embed: each slide is marked failed with one clear line, the run goes on
    code = main(["embed", str(tiled_tiff), str(second), "--out", str(small_disk / "f"),
                 "--encoder", "morphometric", "--patch-px", "64", "--target-mpp", "2.0",
                 "--quiet"])
    cap = capsys.readouterr()
    assert code != 0 and "Traceback" not in cap.out + cap.err
    lines = [ln for ln in (cap.out + cap.err).splitlines() if "FAILED" in ln]
    assert len(lines) == 2 and all("is free on the disk" in ln for ln in lines), cap
    # predict: carries on without caching, with a warning in the report
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    out = tmp_path / "out"
    assert main(["predict", str(tiled_tiff), "--model", str(bundle), "--out", str(out),
                 "--device", "cpu", "--cache-dir", str(small_disk / "c"), "--quiet"]) == 0
    report = json.loads((out / "tiled.ghanet.json").read_text())
    assert any("not cached" in w or "disk" in w for w in report["warnings"]), report["warnings"]
    assert not list((small_disk / "c").rglob("*ghanet-tmp*"))


@seed(2604)
@SETTINGS
@given(free=st.integers(0, 3_000_000), n=st.integers(1, 3000))
def test_property_a_write_is_whole_or_absent_whatever_the_free_space(tmp_path_factory, free, n):
    folder = tmp_path_factory.mktemp("space")
    real = shutil.disk_usage

    def fake(p):
        return real(p)._replace(free=free)

    shutil.disk_usage = fake
    try:
        save_features(folder / "f.h5", _feats(n=n, d=16))
    except NotWritableError as e:
        assert "\n" not in str(e) and not any(folder.iterdir())
    else:
        assert len(load_features(folder / "f.h5")) == n and not _debris(folder)
    finally:
        shutil.disk_usage = real


# --------------------------------------------------------------- 5. debris after kill -9


_KILLED_WRITER = r"""
import os, signal, sys
from pathlib import Path
from napari_ghanet.io.atomic import atomic_path, temp_name
folder = Path(sys.argv[1])
if sys.argv[2] == "dir":
    d = temp_name(folder / "store.zarr")
    d.mkdir()
    (d / "part").write_bytes(b"x" * 100)
    os.kill(os.getpid(), signal.SIGKILL)
with atomic_path(folder / "out.h5") as tmp:
    with open(tmp, "wb") as fh:
        fh.write(b"half")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_writer(folder: Path, what: str) -> None:
    r = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(folder), what])
    assert r.returncode == -signal.SIGKILL


def test_temporaries_of_a_writer_killed_mid_write_are_removed_at_once(tmp_path):
    _killed_writer(tmp_path, "file")
    _killed_writer(tmp_path, "dir")
    left = _debris(tmp_path)
    assert len(left) == 2 and all("ghanet-tmp-" in n for n in left)
    removed = atomic.remove_stale_temp_files(tmp_path)  # minutes old, not a day
    assert sorted(p.name for p in removed) == sorted(left) and not _debris(tmp_path)


def test_a_live_writers_temporary_is_kept(tmp_path):
    code = ("import sys, time\nfrom napari_ghanet.io.atomic import temp_name\n"
            "p = temp_name(sys.argv[1] + '/x.h5'); open(p, 'wb').close()\n"
            "print(p, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        name = Path(proc.stdout.readline().strip())
        assert name.exists()
        assert atomic.remove_stale_temp_files(tmp_path) == [] and name.exists()
    finally:
        proc.kill()
        proc.wait()
    assert atomic.remove_stale_temp_files(tmp_path) == [name]


def test_a_cache_hit_clears_a_killed_writers_debris(tmp_path, sg, monkeypatch):
    slide, grid = sg
    path, _ = _write_cache(tmp_path, slide, grid)
    _killed_writer(path.parent, "file")
    assert _debris(path.parent)
    monkeypatch.setattr(atomic, "_cleaned", set())
    assert load_cached_features(tmp_path, slide, SPEC, grid) is not None
    assert not _debris(path.parent)


def test_old_style_and_foreign_temporaries_keep_the_one_day_rule(tmp_path):
    young = tmp_path / ".a.h5.ghanet-tmp-abcd1234.tmp"
    old = tmp_path / ".b.h5.ghanet-tmp-efgh5678.tmp"
    foreign = tmp_path / f".c.h5.ghanet-tmp-{atomic._base36(999_999)}-000000-ijkl9012.tmp"
    other_dir = tmp_path / ".d.zarr.ghanet-tmp-mnop3456"
    for p in (young, old, foreign):
        p.write_bytes(b"x")
    other_dir.mkdir()
    (other_dir / "inner").write_bytes(b"y")
    day_ago = time.time() - atomic.STALE_TEMP_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    os.utime(other_dir, (day_ago, day_ago))
    removed = sorted(p.name for p in atomic.remove_stale_temp_files(tmp_path))
    assert removed == sorted([old.name, other_dir.name])
    assert young.exists() and foreign.exists()


def test_no_temporary_name_outgrows_the_file_system_limit():
    from napari_ghanet.io.names import MAX_NAME_BYTES

    longest = "x" * MAX_NAME_BYTES + ".patches.geojson"
    name = atomic.temp_name(Path("/tmp") / longest, suffix=".tmp").name
    tagged = f".{longest}.ghanet-tmp-{atomic._writer_tag()}-abcdefgh.tmp"
    assert len(name.encode()) <= 255 and len(tagged.encode()) <= 255


@seed(2605)
@SETTINGS
@given(entries=st.lists(st.tuples(
    st.sampled_from(["dead", "live", "self", "foreign", "legacy"]),
    st.booleans(),  # a folder
    st.booleans(),  # more than a day old
    st.sampled_from(["tmp", "old"])), min_size=1, max_size=6))
def test_property_cleanup_removes_exactly_the_temporaries_of_gone_writers(
        tmp_path_factory, entries):
    folder = tmp_path_factory.mktemp("debris")
    dead = _dead_pid()
    expect = set()
    for i, (who, is_dir, aged, kind) in enumerate(entries):
        aged = aged and who not in ("live", "self")  # a live writer's file is younger
        rand = f"r{i:07d}"
        tag = {"dead": f"{atomic._base36(dead)}-{atomic._HOST}-",
               "live": f"{atomic._base36(1)}-{atomic._HOST}-",
               "self": f"{atomic._writer_tag()}-",
               "foreign": f"{atomic._base36(dead)}-{'0' * 6 if atomic._HOST != '0' * 6 else '1' * 6}-",
               "legacy": ""}[who]
        p = folder / f".n{i}.h5.ghanet-{kind}-{tag}{rand}"
        if is_dir:
            p.mkdir()
            (p / "inner").write_bytes(b"z")
        else:
            p.write_bytes(b"z")
        if aged:
            t = time.time() - atomic.STALE_TEMP_SECONDS - 60
            os.utime(p, (t, t))
        if who == "dead" or (who in ("foreign", "legacy") and aged):
            expect.add(p.name)
    (folder / "keep.h5").write_bytes(b"k")
    removed = {p.name for p in atomic.remove_stale_temp_files(folder)}
    assert removed == expect
    assert (folder / "keep.h5").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------- 5b. SpatialData stores


_KILLED_STORE = r"""
import os, signal, sys
from pathlib import Path
import napari_ghanet.inference.spatialdata_export as sx

class Fake:
    def write(self, where):
        Path(where).mkdir()
        (Path(where) / "zarr.json").write_text("{}")
        if sys.argv[2] == "mid-write":
            os.kill(os.getpid(), signal.SIGKILL)

sx.build_spatialdata = lambda prediction: Fake()
real = os.replace

def replace(a, b):
    real(a, b)
    if sys.argv[2] == "after-replace" and Path(b).name == "s.zarr":
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
sx.write_spatialdata(None, sys.argv[1], overwrite=True)
"""


def _killed_store(path: Path, when: str) -> None:
    r = subprocess.run([sys.executable, "-c", _KILLED_STORE, str(path), when])
    assert r.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def prediction(tiled_tiff, tmp_path_factory):
    from _plugin_helpers import need

    need("spatialdata")
    from napari_ghanet.inference.predict import predict_slide

    bundle = make_bundle(tmp_path_factory.mktemp("b") / "m.safetensors", encoder=FAST_ENCODER)
    return predict_slide(tiled_tiff, bundle, device="cpu", use_cache=False)


def test_a_store_killed_mid_write_leaves_a_folder_the_next_write_removes(prediction, tmp_path):
    from napari_ghanet.inference.spatialdata_export import (
        read_spatialdata_report,
        write_spatialdata,
    )

    store = tmp_path / "s.zarr"
    _killed_store(store, "mid-write")
    (left,) = _debris(tmp_path)
    assert (tmp_path / left).is_dir() and not store.exists()
    atomic._cleaned.clear()
    write_spatialdata(prediction, store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert read_spatialdata_report(store)["prediction"]["risk"] == pytest.approx(prediction.risk)


def test_overwriting_a_file_with_a_store_leaves_no_old_copy(prediction, tmp_path):
    from napari_ghanet.inference.spatialdata_export import write_spatialdata

    store = tmp_path / "s.zarr"
    store.write_text("an old file")
    write_spatialdata(prediction, store, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"] and store.is_dir()


def test_a_rerun_after_a_kill_just_after_the_store_was_in_place_finishes(prediction, tmp_path):
    from napari_ghanet.errors import GHANetError
    from napari_ghanet.inference.spatialdata_export import (
        WRITING_MARKER,
        interrupted_store,
        read_spatialdata_report,
        write_spatialdata,
    )

    store = tmp_path / "s.zarr"
    _killed_store(store, "after-replace")
    assert (store / WRITING_MARKER).is_file() and interrupted_store(store)
    write_spatialdata(prediction, store)  # no --overwrite needed: it is the killed run's
    assert not (store / WRITING_MARKER).exists() and not interrupted_store(store)
    assert read_spatialdata_report(store)["prediction"]["risk"] == pytest.approx(prediction.risk)
    # a finished store is still refused without overwrite
    with pytest.raises(GHANetError, match="already exists"):
        write_spatialdata(prediction, store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_ghanet_predict_rerun_replaces_the_store_of_a_killed_run(prediction, tmp_path,
                                                                 tiled_tiff):
    from napari_ghanet.cli import main
    from napari_ghanet.inference.spatialdata_export import WRITING_MARKER, write_spatialdata

    store = tmp_path / "s.zarr"
    write_spatialdata(prediction, store)
    # the state a kill right after the store's rename leaves: a marker naming a dead writer
    dead = f"{atomic._base36(_dead_pid())}-{atomic._HOST}"
    (store / WRITING_MARKER).write_text(dead)
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    argv = ["predict", str(tiled_tiff), "--model", str(bundle), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--no-cache", "--spatialdata", str(store), "--quiet"]
    assert main(argv) == 0
    assert not (store / WRITING_MARKER).exists()
    assert main(argv) == 2  # a finished store is refused without --overwrite


# --------------------------------------------------------------- training inputs


def test_training_feature_files_with_links_or_fifos_are_a_cohort_error_not_a_hang(tmp_path):
    from types import SimpleNamespace

    import pandas as pd
    from napari_ghanet.training.cohort import FeatureStore, _read_features, _slide_clusters

    from napari_ghanet.errors import CohortError

    folder = tmp_path / "feats"
    folder.mkdir()
    path = save_features(folder / "s1.h5", _feats(n=20, d=8))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with h5py.File(path, "r+") as f:
        del f["features"]
        f["features"] = h5py.ExternalLink(str(fifo), "/features")
    store = FeatureStore(SimpleNamespace(patients=pd.DataFrame({"slide_ids": [["s1"]]})),
                         folder)
    with _no_hang():
        with pytest.raises(CohortError, match=r"s1\.h5.*external link"):
            store.bag_size(0)
        with pytest.raises(CohortError, match=r"s1\.h5"):
            _read_features(path)
    # a crafted cluster cache (a header declaring 2**40 ids) is recomputed, not allocated
    good = save_features(folder / "s2.h5", _feats(n=20, d=8))
    feats = load_features(good).features
    cache = folder / "s2.h5.clusters3.npy"
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776,), }"
    cache.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                      + header.encode() + b"\0" * 64)
    ids = _slide_clusters(good, feats, 3)
    assert ids.shape == (20,) and ids.min() >= 0 and ids.max() < 3
    np.save(cache, np.full(20, 99, np.int64))  # ids out of range
    assert _slide_clusters(good, feats, 3).max() < 3


# --------------------------------------------------------------- .npz feature files


def _npz_with_header(path: Path, shape: tuple, descr: str = "<f4", payload: bytes = b"") -> Path:
    import zipfile

    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("features.npy", npy)
    return path


def test_crafted_npz_and_sidecars_are_one_line_never_an_allocation_or_a_hang(tmp_path):
    huge = _npz_with_header(tmp_path / "huge.npz", (2**20, 2**20))  # 4 TiB declared
    with pytest.raises(FeaturesError, match="declares 4398046511104 bytes"):
        load_features(huge)
    obj = _npz_with_header(tmp_path / "obj.npz", (2,), descr="|O")
    with pytest.raises(FeaturesError, match="obj.npz"):
        load_features(obj)
    good = tmp_path / "good.npz"
    np.savez(good, features=np.ones((3, 4), np.float32))
    os.mkfifo(tmp_path / "good.meta.json")
    with _no_hang(), pytest.raises(FeaturesError, match="not a regular file"):
        load_features(good)
    (tmp_path / "good.meta.json").unlink()
    (tmp_path / "good.meta.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FeaturesError, match="nested more than 32"):
        load_features(good)
    (tmp_path / "good.meta.json").write_text('{"encoder_name": "uni"}')
    assert load_features(good).attrs["encoder_name"] == "uni"


@seed(2606)
@SETTINGS
@given(shape=st.lists(st.integers(0, 2**24), min_size=0, max_size=4).map(tuple),
       descr=st.sampled_from(["<f4", "<f8", "<i8", "|u1", "<c8", "|S3", "<U2"]),
       extra=st.binary(max_size=256))
def test_property_generated_npz_headers_never_trace_back(tmp_path_factory, shape, descr, extra):
    path = _npz_with_header(tmp_path_factory.mktemp("npz") / "f.npz", shape, descr, extra)
    try:
        feats = load_features(path)
    except FeaturesError as e:
        assert "\n" not in str(e)
    else:
        assert feats.features.dtype == np.float32 and feats.features.ndim == 2


_KILLED_EMBED = r"""
import os, signal, sys
from napari_ghanet.cli import main

real_fsync = os.fsync

def fsync(fd):  # the features' bytes are on disk, not yet renamed: kill -9 here
    real_fsync(fd)
    if "tiled.h5.ghanet-tmp" in os.readlink(f"/proc/self/fd/{fd}"):
        os.kill(os.getpid(), signal.SIGKILL)

os.fsync = fsync
main(["embed", sys.argv[1], "--out", sys.argv[2], "--encoder", "morphometric",
      "--patch-px", "64", "--target-mpp", "2.0", "--quiet"])
"""


def test_ghanet_embed_killed_mid_write_then_rerun_finishes_without_debris(tmp_path, tiled_tiff):
    from napari_ghanet.cli import main

    out = tmp_path / "feats"
    r = subprocess.run([sys.executable, "-c", _KILLED_EMBED, str(tiled_tiff), str(out)])
    assert r.returncode == -signal.SIGKILL
    assert [n for n in _debris(out) if "ghanet-tmp" in n] and not (out / "tiled.h5").exists()
    atomic._cleaned.clear()
    assert main(["embed", str(tiled_tiff), "--out", str(out), "--encoder", "morphometric",
                 "--patch-px", "64", "--target-mpp", "2.0", "--quiet"]) == 0
    assert not _debris(out) and len(load_features(out / "tiled.h5", key=feature_key())) > 0


_KILLED_TRAINING = r"""
import os, signal, sys
from napari_ghanet.training.cli import main

real_fsync = os.fsync

def fsync(fd):  # the fold's weights are on disk, not yet renamed: kill -9 here
    real_fsync(fd)
    if "fold_0.safetensors.ghanet-tmp" in os.readlink(f"/proc/self/fd/{fd}"):
        os.kill(os.getpid(), signal.SIGKILL)

os.fsync = fsync
sys.exit(main(sys.argv[1:]))
"""


def test_a_training_run_killed_while_saving_a_fold_leaves_no_debris_after_resuming(tmp_path):
    from napari_ghanet.training.cli import main

    synth = tmp_path / "synth"
    assert main(["synth", "--out", str(synth), "--patients", "24", "--folds", "2",
                 "--feature-dim", "16", "--patches-min", "5", "--patches-max", "10"]) == 0
    run = tmp_path / "run"
    argv = ["cv", "--cohort", str(synth / "cohort.csv"), "--signatures",
            str(synth / "signatures.csv"), "--splits", str(synth / "splits"), "--features",
            str(synth / "features"), "--model", "ghanet", "--out", str(run), "--folds", "0",
            "--epochs", "1", "--batch-size", "8", "--model-config",
            json.dumps({"width": 16, "heads": 2, "dim_head": 8, "gate_dim": 8,
                        "compress_dim": 8, "ffn_mult": 2})]
    r = subprocess.run([sys.executable, "-c", _KILLED_TRAINING, *argv], capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
    assert any("fold_0.safetensors.ghanet-tmp" in n for n in _debris(run))
    atomic._cleaned.clear()
    assert main([*argv, "--resume"]) == 0
    assert (run / "fold_0.safetensors").is_file() and not _debris(run)
