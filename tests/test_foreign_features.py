"""Feature folders laid out as TRIDENT, CLAM, slide2vec and LazySlide write them: the
training reads them, names the registered encoder without a flag and refuses unknown
names clearly. Fixtures follow each tool's writer (TRIDENT WSI.extract_patch_features /
save_h5, CLAM extract_features_fp.py, slide2vec artifacts.write_tile_embeddings,
wsidata io add_tiles / add_features)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from napari_ghanet.training.bundle_cmd import encoder_spec_from_attrs
from napari_ghanet.training.cohort import FeatureStore, find_feature_files

from _plugin_helpers import need
from napari_ghanet.encoders import describe_encoders
from napari_ghanet.encoders.aliases import (
    ALIASES,
    REGISTERED_DIMS,
    ForeignEncoder,
    UnknownEncoderName,
    detect_foreign_encoder,
    resolve_encoder,
)
from napari_ghanet.io.features import load_features


def _rng(seed=0):
    return np.random.default_rng(seed)


def write_trident_h5(path: Path, n: int, dim: int, encoder: str | None = None, seed=0):
    """TRIDENT's patch-feature h5: datasets features (N, D) and coords (N, 2); the
    patching attributes on coords, name/savetodir (and, recently, encoder) on features."""
    rng = _rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        feats = f.create_dataset("features", data=rng.normal(size=(n, dim)).astype(np.float32))
        feats.attrs["name"] = path.stem
        feats.attrs["savetodir"] = str(path.parent)
        if encoder is not None:
            feats.attrs["encoder"] = encoder
        xy = np.stack(np.meshgrid(np.arange(n) * 512, [0]), -1).reshape(-1, 2)
        coords = f.create_dataset("coords", data=xy.astype(np.int64))
        for k, v in {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                     "target_magnification": 20, "overlap": 0, "name": path.stem}.items():
            coords.attrs[k] = v
    return path


def write_wsidata_store(path: Path, model: str, n: int, dim: int, seed=0):
    """A wsidata/LazySlide store: shapes 'tiles' (tile_id, x, y, tissue_id, polygons in
    level-0 px), attrs tile_spec, table slide_properties and table '<model>_tiles'."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import shapely
    import spatialdata as sd
    from spatialdata.models import ShapesModel, TableModel

    rng = _rng(seed)
    xy = np.stack([np.arange(n) * 448 + 7, np.full(n, 896)], 1).astype(np.int64)
    order = rng.permutation(n)  # features stored in another order than the tiles
    tiles = gpd.GeoDataFrame(
        {"tile_id": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "tissue_id": np.zeros(n, int)},
        geometry=list(shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + 448, xy[:, 1] + 448)),
    )
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    obs = pd.DataFrame(
        {"tile_id": order, "library_id": pd.Categorical(["tiles"] * n)},
        index=pd.Index([str(t) for t in order], dtype=object),
    )
    table = TableModel.parse(ad.AnnData(X=feats, obs=obs), region="tiles",
                             region_key="library_id", instance_key="tile_id")
    props = ad.AnnData(uns={"mpp": 0.25, "magnification": 40})
    sdata = sd.SpatialData(
        shapes={"tiles": ShapesModel.parse(tiles)},
        tables={f"{model}_tiles": table, "slide_properties": props},
        attrs={"tile_spec": {"tiles": {"height": 224, "width": 224, "mpp": 0.5,
                                       "base_width": 448, "base_height": 448}}},
    )
    sdata.write(path)
    return feats, xy[order]


# ----------------------------------------------------------------------- alias table


def test_alias_targets_are_registered_with_the_recorded_widths():
    rows = {r["name"]: r["dim"] for r in describe_encoders()}
    for name, dim in REGISTERED_DIMS.items():
        assert rows[name] == dim, name
    for tool, table in ALIASES.items():
        for foreign, targets in table.items():
            assert targets and all(t in REGISTERED_DIMS for t in targets), (tool, foreign)


def test_resolution_uses_the_width_and_names_the_unknown():
    assert resolve_encoder(ForeignEncoder("trident", "h0-mini", "x"), 768) == "h0-mini"
    assert resolve_encoder(ForeignEncoder("slide2vec", "h0-mini", "x"), 768) == "h0-mini"
    assert resolve_encoder(ForeignEncoder("lazyslide", "phikonv2", "x"), 1024) == "phikon-v2"
    assert resolve_encoder(ForeignEncoder("file", "uni", "x"), 1024) == "uni"
    with pytest.raises(UnknownEncoderName, match=r"'conch_v15'.*cannot rebuild.*authors"):
        resolve_encoder(ForeignEncoder("trident", "conch_v15", "folder features_conch_v15"))
    with pytest.raises(UnknownEncoderName, match=r"'my_net'.*does not know"):
        resolve_encoder(ForeignEncoder("trident", "my_net", "folder features_my_net"))
    with pytest.raises(UnknownEncoderName, match=r"hold 512-d.*uni2-h 1536-d"):
        resolve_encoder(ForeignEncoder("trident", "uni_v2", "x"), 512)


# ----------------------------------------------------------------------- TRIDENT


def test_trident_folder_names_the_encoder_and_the_patch_geometry(tmp_path):
    feats_dir = tmp_path / "job" / "20x_256px_0px_overlap" / "features_uni_v2"
    for i in range(3):
        write_trident_h5(feats_dir / f"slide{i}.h5", 5 + i, 1536, seed=i)
    pf = load_features(feats_dir / "slide0.h5")
    assert pf.features.shape == (5, 1536) and pf.coords.shape == (5, 2)
    assert "source_encoder" not in pf.attrs  # older TRIDENT: the folder says it
    found = detect_foreign_encoder(feats_dir / "slide0.h5", pf.attrs)
    assert found == ForeignEncoder("trident", "uni_v2", "folder features_uni_v2")
    # the job folder with one features_* folder works too
    index = find_feature_files(feats_dir.parent)
    assert sorted(index) == ["slide0", "slide1", "slide2"]
    spec = encoder_spec_from_attrs(
        _store_attrs(tmp_path, feats_dir.parent, ["slide0.svs"]), 1536
    )
    assert spec["name"] == "uni2-h" and spec["dim"] == 1536
    assert spec["patch_px"] == 256 and spec["target_mpp"] == 0.5


def test_trident_encoder_attribute_unknown_name_is_refused_naming_the_override(tmp_path):
    feats_dir = tmp_path / "20x_256px_0px_overlap" / "features_conch_v15"
    write_trident_h5(feats_dir / "s.h5", 4, 768, encoder="conch_v15")
    assert load_features(feats_dir / "s.h5").attrs["source_encoder"] == "conch_v15"
    attrs = _store_attrs(tmp_path, feats_dir, ["s.svs"])
    assert "encoder" not in attrs and "conch_v15" in attrs["encoder_unresolved"]
    with pytest.raises(Exception, match=r"conch_v15.*with --encoder") as err:
        encoder_spec_from_attrs(attrs, 768)
    assert "cannot rebuild" in str(err.value)
    # the override wins
    assert encoder_spec_from_attrs(attrs, 768, encoder="timm:vit_base_patch16_224")["name"] \
        == "timm:vit_base_patch16_224"


def test_several_trident_encoders_in_one_job_folder_is_an_error(tmp_path):
    job = tmp_path / "20x_256px_0px_overlap"
    write_trident_h5(job / "features_uni_v2" / "s.h5", 3, 1536)
    write_trident_h5(job / "features_virchow2" / "s.h5", 3, 2560)
    from napari_ghanet.errors import CohortError

    with pytest.raises(CohortError, match=r"several encoders.*features_uni_v2.*features_virchow2"):
        find_feature_files(job)


# ----------------------------------------------------------------------- CLAM


def test_clam_layout_pt_and_h5_files_name_resnet50_trunc(tmp_path):
    root = tmp_path / "TCGA_BLCA_resnet50_trunc"
    rng = _rng(1)
    (root / "pt_files").mkdir(parents=True)
    torch.save(torch.from_numpy(rng.normal(size=(6, 1024)).astype(np.float32)),
               root / "pt_files" / "slideA.pt")
    (root / "h5_files").mkdir()
    with h5py.File(root / "h5_files" / "slideB.h5", "w") as f:  # CLAM: features + coords
        f["features"] = rng.normal(size=(4, 1024)).astype(np.float32)
        f["coords"] = np.array([[0, 0], [256, 0], [0, 256], [256, 256]], np.int64)
    index = find_feature_files(root)
    assert index["slideA"].suffix == ".pt" and index["slideB"].suffix == ".h5"
    attrs = _store_attrs(tmp_path, root, ["slideA.svs"])
    assert attrs["encoder"] == "resnet50_trunc"
    assert "clam 'resnet50_trunc'" in attrs["encoder_source"]
    assert encoder_spec_from_attrs(attrs, 1024)["name"] == "resnet50_trunc"


def test_clam_pt_files_without_any_name_keep_the_old_message(tmp_path):
    root = tmp_path / "feats"
    (root / "pt_files").mkdir(parents=True)
    torch.save(torch.zeros(3, 1024), root / "pt_files" / "s.pt")
    attrs = _store_attrs(tmp_path, root, ["s.svs"])
    assert "encoder" not in attrs and "encoder_unresolved" not in attrs
    with pytest.raises(Exception, match="--encoder"):
        encoder_spec_from_attrs(attrs, 1024)


# ----------------------------------------------------------------------- slide2vec


@pytest.mark.parametrize("fmt", ["pt", "npz"])
def test_slide2vec_tile_embeddings_and_meta_json(tmp_path, fmt):
    out = tmp_path / "run" / "tile_embeddings"
    out.mkdir(parents=True)
    feats = _rng(2).normal(size=(7, 1536)).astype(np.float32)
    if fmt == "pt":
        torch.save(torch.from_numpy(feats), out / "s1.pt")
    else:
        np.savez_compressed(out / "s1.npz", features=feats, tile_index=np.arange(7))
    (out / "s1.meta.json").write_text(json.dumps({
        "sample_id": "s1", "artifact_type": "tile_embeddings", "format": fmt,
        "feature_dim": 1536, "num_tiles": 7, "encoder_name": "h0-mini",
        "image_path": "/data/s1.svs"}))
    pf = load_features(out / f"s1.{fmt}")
    np.testing.assert_array_equal(pf.features, feats)
    assert pf.attrs["encoder_name"] == "h0-mini"
    attrs = _store_attrs(tmp_path, tmp_path / "run", ["s1.svs"])
    # slide2vec's default H0-mini output is class + mean token, 1536-d
    assert attrs["encoder"] == "h0-mini-cls-mean"
    assert encoder_spec_from_attrs(attrs, 1536)["name"] == "h0-mini-cls-mean"


# ----------------------------------------------------------------------- LazySlide


def test_lazyslide_store_features_in_tile_order_with_level0_coordinates(tmp_path):
    need("spatialdata")
    from napari_ghanet.io.wsidata import read_wsidata_features

    stores = tmp_path / "stores"
    feats, xy = write_wsidata_store(stores / "slideZ.zarr", "uni", 9, 1024)
    pf = read_wsidata_features(stores / "slideZ.zarr")
    np.testing.assert_array_equal(pf.features, feats)
    np.testing.assert_array_equal(pf.coords, xy)  # each row's own tile
    assert pf.attrs["feature_key"] == "uni_tiles" and pf.attrs["patch_size"] == 224
    assert pf.attrs["patch_size_level0"] == 448 and pf.attrs["target_mpp"] == 0.5
    assert pf.attrs["slide_mpp"] == 0.25
    attrs = _store_attrs(tmp_path, stores, ["slideZ.svs"])
    assert attrs["encoder"] == "uni"
    spec = encoder_spec_from_attrs(attrs, 1024)
    assert spec["name"] == "uni" and spec["patch_px"] == 224 and spec["target_mpp"] == 0.5


# ----------------------------------------------------------------------- end to end


def test_ghanet_train_on_a_trident_folder_records_the_encoder_without_a_flag(tmp_path):
    """Synthetic cohort, its features rewritten exactly as TRIDENT lays them out, trained
    and bundled by the ghanet-train command line without --encoder."""
    from napari_ghanet.training.cli import main

    from napari_ghanet.models.bundle import load_bundle

    synth = tmp_path / "synth"
    assert main(["synth", "--out", str(synth), "--patients", "24", "--folds", "2",
                 "--feature-dim", "384", "--patches-min", "8", "--patches-max", "16"]) == 0
    feats_dir = tmp_path / "job" / "20x_224px_0px_overlap" / "features_lunit-vits8"
    for src in sorted((synth / "features").glob("*.h5")):
        pf = load_features(src)
        dst = feats_dir / src.name
        write_trident_h5(dst, len(pf.features), 384)
        with h5py.File(dst, "r+") as f:
            f["features"][...] = pf.features
            f["coords"].attrs["patch_size"] = 224
    run = tmp_path / "run"
    assert main(["cv", "--cohort", str(synth / "cohort.csv"),
                 "--signatures", str(synth / "signatures.csv"), "--splits", str(synth / "splits"),
                 "--features", str(feats_dir), "--model", "ghanet", "--out", str(run),
                 "--folds", "0", "--epochs", "1", "--batch-size", "8", "--model-config",
                 json.dumps({"width": 32, "heads": 2, "dim_head": 16, "gate_dim": 16,
                             "compress_dim": 8, "ffn_mult": 2})]) == 0
    out = tmp_path / "lunit.safetensors"
    assert main(["bundle", str(run), "--out", str(out)]) == 0
    b = load_bundle(out)
    assert b.encoder.name == "lunit-vits8" and b.encoder.dim == 384
    assert b.encoder.patch_px == 224 and b.encoder.target_mpp == 0.5


# ----------------------------------------------------------------------- helpers


def _store_attrs(tmp_path: Path, features_dir: Path, slides: list[str]) -> dict:
    """FeatureStore.attrs() of a one-patient cohort holding ``slides``."""
    import pandas as pd

    class _C:  # the two things FeatureStore reads from a cohort
        patients = pd.DataFrame({"case_id": ["P1"], "slide_ids": [slides]})

    return FeatureStore(_C(), features_dir).attrs()
