"""TRIDENT's patch encoders (encoders/trident_models.py): architectures against their
cards on the meta device, and transformers-layout DINOv2 checkpoints loaded into timm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_ghanet.encoders import create_encoder, list_encoders
from napari_ghanet.encoders.registry import _REGISTRY
from napari_ghanet.encoders.trident_models import (
    TRIDENT_MODELS,
    UNAVAILABLE_ENCODERS,
    _card,
    _trident_class,
    hf_dinov2_to_timm,
)

# published figures (parameters, tolerance as a fraction, width); None: the card gives no
# figure, the built count is then only checked against the recorded one
PUBLISHED = {
    "h-optimus-1": (1.1e9, 0.05, 1536),  # "1.1B parameters"
    "h0-mini": (None, None, 768),  # ViT-B/14 with SwiGLU MLPs (class token)
    "h0-mini-cls-mean": (None, None, 1536),  # class token + mean patch token
    "phikon-v2": (300e6, 0.02, 1024),  # "ViT-L ... 300M"
    "hibou-l": (304e6, 0.01, 1024),  # ViT-L/14
    "kaiko-vits8": (22e6, 0.02, 384),
    "kaiko-vits16": (22e6, 0.02, 384),
    "kaiko-vitb8": (86e6, 0.01, 768),
    "kaiko-vitb16": (86e6, 0.01, 768),
    "kaiko-vitl14": (304e6, 0.01, 1024),
    "lunit-vits8": (22e6, 0.02, 384),  # ViT-S/8
    "midnight-12k": (1.1e9, 0.05, 1536),  # ViT-g/14, class token
    "virchow": (632e6, 0.005, 2560),  # "632M"; class token + mean patch token
}


def test_every_card_has_a_published_figure_row():
    assert set(PUBLISHED) == set(TRIDENT_MODELS)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_registered_architecture_matches_its_card(name):
    assert name in list_encoders()
    enc = create_encoder(name, pretrained=False, device="meta")
    n_params = sum(p.numel() for p in enc.parameters())
    published, tol, width = PUBLISHED[name]
    if published is not None:
        assert abs(n_params - published) <= tol * published, n_params
    assert n_params == TRIDENT_MODELS[name].params
    assert enc.dim == width == type(enc).dim
    out = enc.forward(torch.empty(2, 3, enc.input_size, enc.input_size, device="meta"))
    assert tuple(out.shape) == (2, width)
    assert enc.input_size == 224 and enc.target_mpp == 0.5
    spec = enc.spec()
    assert spec.name == name and spec.dim == width
    assert spec.mean == pytest.approx(TRIDENT_MODELS[name].mean)


def test_missing_weights_name_the_hub_repo(tmp_path, monkeypatch):
    from napari_ghanet.errors import EncoderError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EncoderError, match=r"kaiko-ai/midnight.*as the encoder weights"):
        create_encoder("midnight-12k")


def test_unavailable_encoders_say_why():
    assert {"conch_v15", "ctranspath"} <= set(UNAVAILABLE_ENCODERS)
    assert "authors' code" in UNAVAILABLE_ENCODERS["conch_v15"]
    assert not set(UNAVAILABLE_ENCODERS) & set(list_encoders())


# ----------------------------------------------------------------- transformers layout

TINY = {"img_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 2, "init_values": 1e-5}


def _randomise(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _as_transformers(state: dict[str, torch.Tensor], registers: bool) -> dict:
    """The tensors of a timm ViT under transformers' Dinov2Model names (the test's own
    inverse of the loader's mapping)."""
    out = {}
    d = state["cls_token"].shape[-1]
    if registers:  # transformers keeps the class position in the position embedding
        out["embeddings.position_embeddings"] = torch.cat(
            [torch.zeros(1, 1, d), state["pos_embed"]], 1
        )
        out["embeddings.register_tokens"] = state["reg_token"]
    else:
        out["embeddings.position_embeddings"] = state["pos_embed"]
    out["embeddings.cls_token"] = state["cls_token"]
    out["embeddings.mask_token"] = torch.zeros(1, d)
    out["embeddings.patch_embeddings.projection.weight"] = state["patch_embed.proj.weight"]
    out["embeddings.patch_embeddings.projection.bias"] = state["patch_embed.proj.bias"]
    out["layernorm.weight"], out["layernorm.bias"] = state["norm.weight"], state["norm.bias"]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[b + f"attn.qkv.{kind}"].chunk(3, 0)
            out[h + f"attention.attention.query.{kind}"] = q
            out[h + f"attention.attention.key.{kind}"] = k
            out[h + f"attention.attention.value.{kind}"] = v
            out[h + f"attention.output.dense.{kind}"] = state[b + f"attn.proj.{kind}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[h + f"{n}.{kind}"] = state[b + f"{n}.{kind}"]
        out[h + "layer_scale1.lambda1"] = state[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = state[b + "ls2.gamma"]
    out["pooler.dense.weight"] = torch.zeros(d, d)  # a head the trunk does not have
    return {"dinov2." + k: v for k, v in out.items()}


@pytest.mark.parametrize("registers", [False, True])
def test_transformers_dinov2_keys_map_to_the_same_timm_tensors(registers):
    import timm

    arch = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch16_224"
    model = _randomise(timm.create_model(arch, pretrained=False, num_classes=0, **TINY))
    state = model.state_dict()
    converted = hf_dinov2_to_timm(_as_transformers(state, registers), model)
    assert set(converted) == set(state)
    for key, value in state.items():  # registers: the class position (zero) is folded in
        assert torch.equal(converted[key], value), key
    # a checkpoint already in timm's layout passes through untouched
    assert hf_dinov2_to_timm(state, model) is state


def test_a_transformers_checkpoint_loads_and_encodes_like_the_source(tmp_path):
    import timm

    card = _card(
        name="test-hf-dinov2",
        title="tiny transformers-layout ViT",
        arch="vit_small_patch16_224",
        model_args=lambda: dict(TINY),
        dim=48,
        params=0,
        input_size=64,
        resize_to=64,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        hf_repos=("nobody/test-hf-dinov2",),
        licence="test",
        source="test",
        extra={"layout": "hf-dinov2"},
    )
    cls = _trident_class(card)
    try:
        src = _randomise(timm.create_model("vit_small_patch16_224", num_classes=0, **TINY))
        path = tmp_path / "model.safetensors"
        hf = _as_transformers(src.state_dict(), registers=False)
        save_file({k: v.contiguous() for k, v in hf.items()}, str(path))
        enc = create_encoder("test-hf-dinov2", weights=path)
        assert isinstance(enc, cls)
        rng = np.random.default_rng(0)
        batch = torch.from_numpy(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
        x = enc.preprocess(batch)
        with torch.no_grad():
            expect = src.eval()(x)
        got = enc.encode(batch)
        assert got.shape == (3, 48) and got.abs().max() > 0
        torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    finally:
        _REGISTRY.pop("test-hf-dinov2", None)


def test_encoders_listing_has_the_trident_encoders():
    """What ``ghanet encoders`` prints (cli/encoders.py formats this listing)."""
    from napari_ghanet.encoders import describe_encoders

    rows = {r["name"]: r for r in describe_encoders()}
    for name, card in TRIDENT_MODELS.items():
        assert rows[name]["dim"] == card.dim and rows[name]["input_size"] == 224
        assert rows[name]["target_mpp"] == 0.5
