"""Foundation-model encoders (timm): architectures against their cards, offline weight
loading, clear errors, and a small random ViT through embed_slide and the feature cache."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_ghanet.encoders import EncoderError, create_encoder, list_encoders
from napari_ghanet.encoders.timm_models import (
    FOUNDATION_MODELS,
    TimmArchEncoder,
    TimmEncoder,
    create_timm_encoder,
    find_hf_weights,
)
from napari_ghanet.inference.embedding import embed_slide
from napari_ghanet.io.features import (
    cached_features_path,
    load_cached_features,
    save_features,
)
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

# figures published on the model cards / papers: (parameters, rounding step of the
# published figure, output width); the count must round to the published figure, within
# 0.5% (Virchow2's "632M" is 631.2M when the architecture is built as its card says)
PUBLISHED = {
    "uni": (303e6, 1e6, 1024),  # "ViT-L/16 ... 303M"
    "uni2-h": (681e6, 1e6, 1536),  # "ViT-H/14 ... 681M"
    "virchow2": (632e6, 1e6, 2560),  # "632M"; class token + mean patch token, 2 x 1280
    "h-optimus-0": (1.1e9, 0.1e9, 1536),  # "1.1B parameters"
    "gigapath": (1.13e9, 0.01e9, 1536),  # tile encoder "1.13B"
}

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2, "img_size": 64}


def tiny_vit(**kw) -> TimmEncoder:
    args = {
        "model_args": dict(TINY, **kw.pop("model_args", {})),
        "input_size": 64,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "pretrained": False,
    }
    args.update(kw)
    return TimmArchEncoder("vit_tiny_patch16_224", **args)


def randomised(enc: TimmEncoder, seed: int = 7) -> TimmEncoder:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return enc


def patches(n=4, side=64, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_registered_architecture_matches_its_card(name):
    assert name in list_encoders()
    enc = create_encoder(name, pretrained=False, device="meta")
    n_params = sum(p.numel() for p in enc.parameters())
    published, step, width = PUBLISHED[name]
    assert abs(n_params - published) <= max(step / 2, 0.005 * published)
    assert n_params == FOUNDATION_MODELS[name].params
    assert enc.dim == width == type(enc).dim
    out = enc.forward(torch.empty(3, 3, enc.input_size, enc.input_size, device="meta"))
    assert tuple(out.shape) == (3, width)
    assert enc.input_size == 224 and enc.target_mpp == 0.5
    assert enc.weights_description().startswith("none (meta")


def test_missing_weights_error_names_model_places_and_licence(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert FOUNDATION_MODELS and type(create_encoder("uni", pretrained=False, device="meta"))
    with pytest.raises(EncoderError) as err:
        create_encoder("uni2-h")
    msg = str(err.value)
    assert "UNI2-h" in msg and "licence-gated" in msg
    assert "as the encoder weights" in msg  # the CLI adds its flag, the widget its field
    # no flag (the cache folder's own name has '--' in it: models--ORG--NAME)
    assert not re.search(r"(^|[\s(])--[a-z]", msg) and "weights=" not in msg
    assert str(tmp_path / "hub" / "models--MahmoodLab--UNI2-h" / "snapshots") in msg
    with pytest.raises(EncoderError, match="weights file not found"):
        create_encoder("virchow2", weights=tmp_path / "nope.safetensors")


def test_weights_found_in_hub_cache_prefers_refs_main(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--bioptimus--H-optimus-0"
    for rev in ("aaa", "bbb"):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "pytorch_model.bin").write_bytes(b"x")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa\n")
    cls = type(create_encoder("h-optimus-0", pretrained=False, device="meta"))
    assert cls.find_weights() == repo / "snapshots" / "aaa" / "pytorch_model.bin"
    assert find_hf_weights(["paige-ai/Virchow2"], ["model.safetensors"]) is None
    # the cached file is used by default, and a corrupt one is refused clearly
    with pytest.raises(EncoderError, match="truncated or corrupt"):
        create_encoder("h-optimus-0")


@pytest.mark.parametrize("form", ["safetensors", "pth"])
def test_random_vit_round_trips_through_the_loader(tmp_path, form):
    src = randomised(tiny_vit())
    state = src.model.state_dict()
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        head = {"head.weight": torch.zeros(5, 48), "head.bias": torch.zeros(5)}
        save_file({"module." + k: v.contiguous() for k, v in {**state, **head}.items()}, path)
    else:
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {"backbone." + k: v for k, v in state.items()}}, path)
    loaded = tiny_vit(pretrained=True, weights=path)
    assert loaded.weights_description().startswith(path.name + " sha256:")
    x = patches()
    a, b = src.encode(x), loaded.encode(x)
    assert a.shape == (4, 48) and a.abs().max() > 0
    assert torch.equal(a, b)
    # through the registry's prefix family as well
    again = create_timm_encoder(
        "timm:vit_tiny_patch16_224",
        weights=path,
        model_args=TINY,
        input_size=64,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    assert torch.equal(again.encode(x), a) and again.name == "timm:vit_tiny_patch16_224"


def test_wrong_architecture_names_the_first_mismatching_tensor(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(tiny_vit().model.state_dict(), path)
    with pytest.raises(EncoderError) as err:
        tiny_vit(pretrained=True, weights=path, model_args={"embed_dim": 64})
    msg = str(err.value)
    assert "not the weights of this architecture" in msg
    assert "'cls_token'" in msg and "(1, 1, 48)" in msg and "(1, 1, 64)" in msg
    with pytest.raises(EncoderError, match=r"'blocks\.2\.norm1\.weight'.*missing"):
        tiny_vit(pretrained=True, weights=path, model_args={"depth": 3})
    with pytest.raises(EncoderError, match=r"does not, e\.g\. 'blocks\.1\."):
        tiny_vit(pretrained=True, weights=path, model_args={"depth": 1})


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_or_empty_file_is_a_clear_error(tmp_path, suffix):
    state = tiny_vit().model.state_dict()
    full = tmp_path / ("full" + suffix)
    if suffix == ".safetensors":
        save_file(state, full)
    else:
        torch.save(state, full)
    cut = tmp_path / ("cut" + suffix)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(EncoderError, match="truncated or corrupt"):
        tiny_vit(pretrained=True, weights=cut)
    empty = tmp_path / ("empty" + suffix)
    empty.write_bytes(b"")
    with pytest.raises(EncoderError, match="empty"):
        tiny_vit(pretrained=True, weights=empty)


def test_class_plus_mean_pooling_skips_register_tokens():
    enc = randomised(tiny_vit(model_args={"reg_tokens": 4, "global_pool": ""}, pool="cls+mean"))
    assert enc.dim == 96
    x = enc.preprocess(patches())
    with torch.no_grad():
        tokens = enc.model.forward_features(x)
        assert tokens.shape[1] == 1 + 4 + 16
        expect = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], 1)
        assert torch.allclose(enc(x), expect)


def test_resize_then_centre_crop_like_the_card():
    enc = tiny_vit(resize_to=80, interpolation="bicubic")
    batch = patches(2, side=80)
    x = enc.preprocess(batch)
    ref = batch.permute(0, 3, 1, 2).float() / 255
    ref = (ref[..., 8:72, 8:72] - 0.5) / 0.25
    assert x.shape == (2, 3, 64, 64) and torch.allclose(x, ref, atol=1e-6)
    with pytest.raises(EncoderError, match="interpolation"):
        tiny_vit(interpolation="nearest")
    with pytest.raises(EncoderError, match="unknown timm architecture"):
        TimmArchEncoder("no_such_net", pretrained=False)


def test_small_vit_runs_through_embed_slide_and_the_feature_cache(tiled_tiff, tmp_path):
    enc = randomised(tiny_vit(patch_px=256))
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, tissue_mask(s))
        feats = embed_slide(s, grid, enc, batch_size=5, workers=2, backend="torch")
        direct = enc.encode(torch.from_numpy(np.stack([grid.read(s, i) for i in range(len(grid))])))
        spec = feats.attrs["encoder_spec"]
        path = cached_features_path(tmp_path, s, spec, grid)
        save_features(path, feats)
        again = load_cached_features(tmp_path, s, spec, grid)
    assert feats.features.shape == (len(grid), 48) and len(grid) > 3
    np.testing.assert_allclose(feats.features, direct.numpy(), atol=1e-5)
    assert feats.attrs["encoder"] == "timm:vit_tiny_patch16_224"
    assert feats.attrs["backend"] == "torch"
    assert again is not None
    np.testing.assert_array_equal(again.features, feats.features)


def test_encoders_command_lists_widths_and_weights(capsys, tmp_path, monkeypatch):
    import argparse
    import json

    from napari_ghanet.cli import encoders as cli_encoders

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snap = tmp_path / "models--paige-ai--Virchow2" / "snapshots" / "r1"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    parser = argparse.ArgumentParser()
    cli_encoders.add_parser(parser.add_subparsers())
    args = parser.parse_args(["encoders", "--json"])
    assert args.func(args) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["virchow2"]["dim"] == 2560 and rows["virchow2"]["weights_found"] is True
    assert rows["uni"]["weights_found"] is False and rows["uni"]["input_size"] == 224
    assert rows["h-optimus-0"]["target_mpp"] == 0.5
    args = parser.parse_args(["encoders"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "virchow2" in table and "2560" in table and "yes" in table


def test_a_bundle_trained_on_vit_features_predicts_with_the_named_weights(
    tiled_tiff, tmp_path, capsys
):
    """A model trained on timm:<arch> features: the bundle records the encoder spec, the
    user names the weights file, and predict_slide / ghanet predict rebuild the encoder
    from the spec (architecture arguments and preprocessing included)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _plugin_helpers import make_bundle
    from napari_ghanet.cli import main
    from napari_ghanet.errors import PredictionError
    from napari_ghanet.inference.predict import predict_slide

    src = randomised(tiny_vit(patch_px=256))
    weights = tmp_path / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(weights))
    trained = tiny_vit(pretrained=True, weights=weights, patch_px=256)
    bundle = make_bundle(tmp_path / "vit.safetensors", input_dim=48,
                         encoder=trained.spec().to_dict())

    p = predict_slide(tiled_tiff, bundle, device="cpu", use_cache=False, qc=None,
                      encoder_kwargs={"weights": weights})
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, tissue_mask(s))
        direct = embed_slide(s, grid, trained, backend="torch")
    assert p.n_patches == len(grid) and np.isfinite(p.risk)
    assert p.settings["encoder"].name == "timm:vit_tiny_patch16_224"
    assert p.settings["encoder"].weights_digest == trained.spec().weights_digest
    assert direct.features.shape == (len(grid), 48)

    # without the weights: a clear error naming the encoder and what to give
    with pytest.raises(PredictionError, match=r"timm:vit_tiny_patch16_224.*weights"):
        predict_slide(tiled_tiff, bundle, device="cpu", use_cache=False)
    # the command line names the file with --encoder-weights, and gets the same risk
    out = tmp_path / "out"
    assert main(["predict", str(tiled_tiff), "--model", str(bundle), "--out", str(out),
                 "--encoder-weights", str(weights), "--no-qc", "--no-cache", "--quiet",
                 "--device", "cpu"]) == 0
    report = json.loads(next(out.glob("*.ghanet.json")).read_text())
    assert report["prediction"]["risk"] == pytest.approx(p.risk, abs=1e-5)
    assert main(["predict", str(tiled_tiff), "--model", str(bundle), "--out",
                 str(tmp_path / "o2"), "--no-cache", "--quiet", "--device", "cpu"]) != 0
    assert "weights" in capsys.readouterr().err
