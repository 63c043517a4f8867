"""Feature files: HDF5 round trip, atomic writes, CLAM/TRIDENT .h5 and .pt, the cache."""

from __future__ import annotations

import json
import logging
import pickle

import h5py
import numpy as np
import pytest
import torch

from _plugin_helpers import write_test_cache
from napari_ghanet._version import __version__
from napari_ghanet.encoders import EncoderSpec
from napari_ghanet.io.features import (
    FeaturesError,
    PatchFeatures,
    cached_features_path,
    grid_key,
    load_cached_features,
    load_features,
    load_matching_features,
    save_features,
)
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

SPEC = {"name": "morphometric", "dim": 8, "patch_px": 256, "target_mpp": 0.5, "version": 1}


def _feats(n=5, d=8, seed=0, **attrs):
    rng = np.random.default_rng(seed)
    return PatchFeatures(
        rng.normal(size=(n, d)).astype(np.float32),
        np.arange(2 * n, dtype=np.int64).reshape(n, 2) * 256,
        {"encoder_spec": SPEC, "slide_fingerprint": "abc", "target_mpp": 0.5, **attrs},
    )


def test_round_trip(tmp_path):
    f = _feats(patch_size=256, patch_size_level0=512, slide_mpp=0.25)
    path = save_features(tmp_path / "sub" / "a.h5", f)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["a.h5"]  # no temporary left
    g = load_features(path)
    np.testing.assert_array_equal(g.features, f.features)
    np.testing.assert_array_equal(g.coords, f.coords)
    assert g.features.dtype == np.float32 and g.coords.dtype == np.int64
    assert g.attrs["encoder_spec"] == SPEC
    assert g.encoder_spec == SPEC
    assert g.attrs["encoder"] == "morphometric"
    assert g.attrs["feature_dim"] == 8
    assert g.attrs["patch_size_level0"] == 512
    assert g.attrs["slide_mpp"] == 0.25
    assert g.attrs["n_skipped"] == 0
    assert g.attrs["package_version"] == __version__
    with h5py.File(path) as h:  # the CLAM/TRIDENT layout, readable by other tools
        assert h["features"].shape == (5, 8) and h["coords"].shape == (5, 2)
        assert json.loads(h.attrs["encoder_spec"]) == SPEC
    # an EncoderSpec is stored as the same JSON and read back equal
    save_features(tmp_path / "b.h5", _feats(encoder_spec=EncoderSpec.from_dict(SPEC)))
    with h5py.File(tmp_path / "b.h5") as h, h5py.File(path) as ref:
        assert h.attrs["encoder_spec"] == ref.attrs["encoder_spec"]
    assert EncoderSpec.from_dict(load_features(tmp_path / "b.h5").encoder_spec).to_dict() == SPEC


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = save_features(tmp_path / "a.h5", _feats(seed=1))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError, match="disk full"):
        save_features(path, _feats(seed=2))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_clam_and_trident_h5(tmp_path):
    rng = np.random.default_rng(0)
    clam = tmp_path / "clam.h5"
    with h5py.File(clam, "w") as h:  # CLAM: bare datasets, no attributes
        h["features"] = rng.normal(size=(7, 1024)).astype(np.float32)
        h["coords"] = rng.integers(0, 10_000, (7, 2))
    f = load_features(clam)
    assert f.features.shape == (7, 1024) and f.coords.shape == (7, 2)
    assert f.encoder_spec is None
    trident = tmp_path / "trident.h5"
    with h5py.File(trident, "w") as h:  # (1, N, D) variant with attributes on coords
        h["features"] = rng.normal(size=(1, 4, 16)).astype(np.float16)
        c = h.create_dataset("coords", data=rng.integers(0, 10_000, (1, 4, 2)))
        c.attrs["patch_size"] = 256
        c.attrs["patch_size_level0"] = 512
    f = load_features(trident)
    assert f.features.shape == (4, 16) and f.features.dtype == np.float32
    assert f.coords.shape == (4, 2)
    assert f.attrs["patch_size_level0"] == 512


def test_pt_tensor_files(tmp_path):
    t = torch.randn(6, 32)
    torch.save(t, tmp_path / "bag.pt")
    f = load_features(tmp_path / "bag.pt")
    np.testing.assert_allclose(f.features, t.numpy())
    assert f.coords is None
    torch.save({"features": t, "coords": torch.arange(12).view(6, 2)}, tmp_path / "d.pt")
    f = load_features(tmp_path / "d.pt")
    assert f.coords.tolist()[1] == [2, 3]


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"features": _Payload()}, fh)
    with pytest.raises(FeaturesError, match=r"evil\.pt: cannot load as a tensor file"):
        load_features(path)
    assert "must never run" not in capsys.readouterr().out


def test_bad_files(tmp_path):
    with pytest.raises(FeaturesError, match="missing.h5: not found"):
        load_features(tmp_path / "missing.h5")
    good = save_features(tmp_path / "good.h5", _feats())
    data = good.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(FeaturesError, match=r"cut\.h5"):
        load_features(tmp_path / "cut.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(FeaturesError, match=r"text\.h5: not a readable HDF5 file"):
        load_features(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h:
        h["embeddings"] = np.zeros((2, 2))
    with pytest.raises(FeaturesError, match="no 'features' dataset.*embeddings"):
        load_features(tmp_path / "other.h5")
    with h5py.File(tmp_path / "nan.h5", "w") as h:
        h["features"] = np.array([[0.0, np.nan], [1.0, 2.0]], np.float32)
    with pytest.raises(FeaturesError, match="1 feature rows contain NaN"):
        load_features(tmp_path / "nan.h5")
    with pytest.raises(FeaturesError, match="coords must have shape"):
        PatchFeatures(np.zeros((3, 2)), np.zeros((2, 2)))


def test_cache_hits_only_on_same_slide_encoder_and_grid(tmp_path, tiled_tiff, subifd_tiff, caplog):
    with open_slide(tiled_tiff) as slide, open_slide(subifd_tiff) as other:
        grid = patch_grid(slide, tissue_mask(slide))
        path = cached_features_path(tmp_path, slide, SPEC, grid)
        assert path == cached_features_path(tmp_path, slide, dict(SPEC), grid)
        assert path.parent == tmp_path / "morphometric"
        assert path.name.startswith("tiled.") and path.suffix == ".h5"
        assert load_cached_features(tmp_path, slide, SPEC, grid) is None
        feats = PatchFeatures(
            np.ones((len(grid), 8), np.float32),
            grid.coords,
            {
                "encoder_spec": SPEC,
                "slide_fingerprint": slide.fingerprint(),
                "grid_key": grid_key(grid),
            },
        )
        save_features(path, feats)
        hit = load_cached_features(tmp_path, slide, SPEC, grid)
        assert hit is not None and len(hit) == len(grid)
        # another encoder spec, another grid or another slide: a miss
        assert load_cached_features(tmp_path, slide, {**SPEC, "version": 2}, grid) is None
        # an EncoderSpec is the same key and the same check as its JSON dict
        spec = EncoderSpec.from_dict(SPEC)
        assert cached_features_path(tmp_path, slide, spec, grid) == path
        assert load_cached_features(tmp_path, slide, spec, grid) is not None
        assert load_cached_features(tmp_path, slide, spec.replace(resize=224), grid) is None
        grid2 = patch_grid(slide, tissue_mask(slide), min_tissue_fraction=0.9)
        assert len(grid2) != len(grid)
        assert load_cached_features(tmp_path, slide, SPEC, grid2) is None
        assert load_cached_features(tmp_path, other, SPEC, grid) is None
        # the same file checked directly against another slide's fingerprint
        assert (
            load_matching_features(
                path, slide_fingerprint=other.fingerprint(), encoder_spec=SPEC, grid=grid
            )
            is None
        )
        # a damaged cache file is a miss with a warning, not a crash
        path.write_bytes(b"garbage")
        with caplog.at_level(logging.WARNING):
            assert load_cached_features(tmp_path, slide, SPEC, grid) is None
        assert "cached features that cannot be trusted, recomputing" in caplog.text


def _flip(path, dataset, index):
    """Flip one bit inside a dataset's stored bytes (not through h5py's API)."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
        nbytes = f[dataset].id.get_storage_size()
    assert offset is not None and index < nbytes
    raw = bytearray(path.read_bytes())
    raw[offset + index] ^= 0x10
    path.write_bytes(bytes(raw))


def _cache(tmp_path, slide, grid):
    return write_test_cache(tmp_path, slide, grid, SPEC)


def test_bit_flips_in_cached_features_or_coords_are_recomputed_with_a_notice(
    tmp_path, tiled_tiff, caplog
):
    with open_slide(tiled_tiff) as slide:
        grid = patch_grid(slide, tissue_mask(slide))
        for dataset, index in (("features", 5), ("coords", 9)):
            path, feats = _cache(tmp_path, slide, grid)
            with h5py.File(path, "r") as f:
                assert len(f.attrs["content_sha256"]) == 64
            assert load_cached_features(tmp_path, slide, SPEC, grid) is not None
            # the cache lives in one contiguous block per dataset only when unchunked
            with h5py.File(path, "r") as f:
                chunked = f[dataset].chunks is not None
            if chunked:
                with h5py.File(path, "r+") as f:
                    data = f[dataset][()]
                    data.view(np.uint8).reshape(-1)[index] ^= 0x10
                    f[dataset][...] = data
            else:
                _flip(path, dataset, index)
            notices: list[str] = []
            with caplog.at_level(logging.WARNING):
                assert load_cached_features(tmp_path, slide, SPEC, grid, notices=notices) is None
            assert notices and "digest" in notices[0] and "recomputing" in notices[0]
            with pytest.raises(FeaturesError, match="damaged feature file"):
                load_features(path)


def test_coordinates_outside_the_slide_or_off_the_grid_are_not_trusted(tmp_path, tiled_tiff):
    with open_slide(tiled_tiff) as slide:
        grid = patch_grid(slide, tissue_mask(slide))
        w, h = slide.dimensions
        path, feats = _cache(tmp_path, slide, grid)
        # a signed file whose coordinates are wrong (as a bug would write them)
        for coords, why in (
            (lambda c: c.__setitem__((0, 1), h + 8 * grid.step_level0), "outside"),
            (lambda c: c.__setitem__((0, 0), c[0, 0] + 3), "lattice"),
            (lambda c: c.__setitem__(0, c[1]), "duplicated"),
            (lambda c: c.__setitem__((0, 0), c[0, 0] + grid.step_level0 * 1000), "outside"),
        ):
            c = grid.coords.copy()
            coords(c)
            save_features(path, PatchFeatures(feats.features, c, feats.attrs))
            notices: list[str] = []
            assert load_cached_features(tmp_path, slide, SPEC, grid, notices=notices) is None
            assert why in notices[0], notices
            _cache(tmp_path, slide, grid)
        # a file without a digest (as 0.1 wrote them, or one altered) is never reused
        with h5py.File(path, "r+") as f:
            del f.attrs["content_sha256"]
        notices = []
        assert load_cached_features(tmp_path, slide, SPEC, grid, notices=notices) is None
        assert "not trusted" in notices[0]
        _cache(tmp_path, slide, grid)
        # coordinates that are sound but not of this grid
        c = grid.coords.copy()
        step, size, known = grid.step_level0, grid.patch_size_level0, set(map(tuple, c.tolist()))
        missing = [(x, y) for y in range(0, h - size + 1, step) for x in range(0, w - size + 1, step)
                   if (x, y) not in known]
        assert missing, "the test slide's grid should not cover the whole slide"
        c[0] = missing[0]
        save_features(path, PatchFeatures(feats.features, c, feats.attrs))
        notices = []
        assert load_cached_features(tmp_path, slide, SPEC, grid, notices=notices) is None
        assert "not on the slide's patch grid" in notices[0]


def test_damaged_feature_file_given_to_training_names_the_file(tmp_path):
    from napari_ghanet.training.cohort import _read_features

    from napari_ghanet.errors import CohortError

    path = save_features(tmp_path / "slide-1.h5", _feats(n=6))
    with h5py.File(path, "r+") as f:
        f["features"][2, 3] = 7.0
    with pytest.raises(CohortError, match=r"slide-1\.h5.*damaged feature file"):
        _read_features(path)
    path = save_features(tmp_path / "slide-2.h5", _feats(n=6, step_level0=256))
    with h5py.File(path, "r+") as f:
        f["coords"][1, 0] = 300
        del f.attrs["content_sha256"]
    with pytest.raises(CohortError, match=r"slide-2\.h5.*off the 256 px patch lattice"):
        _read_features(path)
