"""The patch encoders of TRIDENT's list that timm builds offline, with their cards.

TRIDENT (mahmoodlab/TRIDENT, ``trident/patch_encoder_models/load.py``) extracts features
with about two dozen patch encoders. The ones below are plain Vision Transformers that
``timm`` builds without their authors' code; they register next to the five of
:mod:`.timm_models` and use its card machinery (:class:`FoundationModelCard`), so
``create_encoder("kaiko-vitb8")``, ``ghanet encoders`` and bundles treat them alike.

================  ==========================================  =====  =====  ========
name              architecture (timm)                         dim    input  patch
================  ==========================================  =====  =====  ========
``h-optimus-1``   ViT-g/14, 4 registers (1.1 B)               1536   224    224 0.5
``h0-mini``       ViT-B/14, 4 registers, SwiGLU (distilled)   768    224    224 0.5
``h0-mini-cls-mean``  the same, class + mean patch token      1536   224    224 0.5
``phikon-v2``     ViT-L/16 DINOv2 (Owkin)                     1024   224    224 0.5
``hibou-l``       ViT-L/14, 4 registers (HistAI)              1024   224    224 0.5
``kaiko-vits8``   ViT-S/8 (kaiko.ai)                          384    224    224 0.5
``kaiko-vits16``  ViT-S/16                                    384    224    224 0.5
``kaiko-vitb8``   ViT-B/8                                     768    224    224 0.5
``kaiko-vitb16``  ViT-B/16                                    768    224    224 0.5
``kaiko-vitl14``  ViT-L/14, 4 registers (518 px grid)         1024   224    224 0.5
``lunit-vits8``   ViT-S/8 DINO (Lunit)                        384    224    224 0.5
``midnight-12k``  ViT-g/14 DINOv2 (kaiko.ai), class token     1536   224    224 0.5
``virchow``       ViT-H/14, SwiGLU, class + mean token        2560   224    224 0.5
================  ==========================================  =====  =====  ========

Weights are always the user's files (``weights=PATH``) or a Hugging Face cache already on
this machine; nothing is downloaded. Phikon-v2, Hibou-L and Midnight-12k are published
in the ``transformers`` layout (``embeddings.*``, ``encoder.layer.N.*``, separate
query/key/value); :func:`hf_dinov2_to_timm` maps such a checkpoint to timm's keys (the
position embedding resampled to the 224 px grid by timm), so no ``transformers`` is needed.

TRIDENT encoders that are known but cannot be built here are listed in
:data:`UNAVAILABLE_ENCODERS` with the reason (CONCH v1.5's attention pooler and
projection exist only in its authors' code; CTransPath needs an unmaintained timm fork).

>>> enc = create_encoder("kaiko-vits16", pretrained=False, device="meta")
>>> enc.dim, enc.input_size, enc.target_mpp
(384, 224, 0.5)
"""

from __future__ import annotations

import re
from typing import Any

import torch

from napari_ghanet.encoders.registry import create_encoder, register_encoder  # noqa: F401
from napari_ghanet.encoders.timm_models import FoundationModelCard, _FoundationModel

__all__ = [
    "TRIDENT_ENCODERS",
    "TRIDENT_MODELS",
    "UNAVAILABLE_ENCODERS",
    "hf_dinov2_to_timm",
]

#: mean / std of H-optimus-0/1 and H0-mini (Bioptimus cards)
_BIOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_BIOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
#: kaiko.ai's normalisation (eva / TRIDENT's KAIKO_MEAN / KAIKO_STD): [0, 1] -> [-1, 1]
_HALF = (0.5, 0.5, 0.5)
#: Hibou (histai/hibou-L preprocessor_config.json, TRIDENT get_constants("hibou"))
_HIBOU_MEAN = (0.7068, 0.5755, 0.722)
_HIBOU_STD = (0.195, 0.2316, 0.1816)
#: Lunit DINO (lunit-io/benchmark-ssl-pathology; 1aurent/vit_small_patch8_224.lunit_dino)
_LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
_LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _swiglu() -> dict[str, Any]:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


def _card(**kw: Any) -> FoundationModelCard:
    """A card with this module's defaults: 224 px input, 224 px patches at 0.5 um/px."""
    base: dict[str, Any] = {
        "input_size": 224,
        "resize_to": 224,
        "patch_px": 224,
        "target_mpp": 0.5,
        "interpolation": "bilinear",
        "pool": "head",
    }
    base.update(kw)
    return FoundationModelCard(**base)


def _kaiko(variant: str, arch: str, dim: int, params: int, **args: Any) -> FoundationModelCard:
    # kaiko.ai "Towards large-scale training of pathology foundation models" (eva);
    # TRIDENT KaikoInferenceEncoder: timm <arch>, num_classes=0, dynamic_img_size=True,
    # Resize(224) + CenterCrop(224), mean = std = 0.5, class token output.
    return _card(
        name=f"kaiko-{variant}",
        title=f"kaiko.ai {variant.upper().replace('VIT', 'ViT-')}",
        arch=arch,
        model_args=lambda: {"dynamic_img_size": True, **args},
        dim=dim,
        params=params,
        mean=_HALF,
        std=_HALF,
        hf_repos=(f"1aurent/{arch}.kaiko_ai_towards_large_pathology_fms",),
        licence="kaiko.ai licence (see the model card)",
        source="https://huggingface.co/collections/1aurent/kaikoai-models-66636c99d8e1e34bc6dcf795",
    )


# Sources (read 2026): each model's Hugging Face card and TRIDENT's encoder definitions
# (trident/patch_encoder_models/load.py), which build these networks with the same timm
# arguments. Parameter counts are those of the built architecture (checked by
# tests/test_trident_encoders.py against the published figure where the card gives one).
TRIDENT_MODELS: dict[str, FoundationModelCard] = {
    card.name: card
    for card in (
        # bioptimus/H-optimus-1 card: timm vit_giant_patch14_reg4_dinov2, init_values 1e-5,
        # class token ("global_pool": "token"), 224 px at 0.5 um/px, H-optimus mean/std;
        # "1.1B parameters". TRIDENT name: hoptimus1.
        _card(
            name="h-optimus-1",
            title="H-optimus-1 (Bioptimus)",
            arch="vit_giant_patch14_reg4_dinov2",
            model_args=lambda: {"img_size": 224, "init_values": 1e-5, "global_pool": "token"},
            dim=1536,
            params=1_134_774_272,
            mean=_BIOPTIMUS_MEAN,
            std=_BIOPTIMUS_STD,
            hf_repos=("bioptimus/H-optimus-1",),
            licence="Bioptimus licence (non-commercial), gated",
            source="https://huggingface.co/bioptimus/H-optimus-1",
        ),
        # bioptimus/H0-mini card: timm hub model (ViT-B/14 with 4 registers distilled from
        # H-optimus-0) created with mlp_layer=SwiGLUPacked, act_layer=SiLU; 224 px at
        # 0.5 um/px, H-optimus mean/std. TRIDENT's h0-mini returns the class token (768);
        # the card also suggests class token + mean patch token (use timm:ARCH for that).
        _card(
            name="h0-mini",
            title="H0-mini (Bioptimus)",
            arch="vit_base_patch14_reg4_dinov2",
            model_args=lambda: {
                "img_size": 224,
                "init_values": 1e-5,
                "global_pool": "token",
                **_swiglu(),
            },
            dim=768,
            params=71_571_456,
            mean=_BIOPTIMUS_MEAN,
            std=_BIOPTIMUS_STD,
            hf_repos=("bioptimus/H0-mini",),
            licence="CC-BY-NC-ND 4.0, gated",
            source="https://huggingface.co/bioptimus/H0-mini",
        ),
        # the same network with the card's (and slide2vec's default) embedding: class
        # token + mean of the patch tokens after the 4 registers, 2 x 768
        _card(
            name="h0-mini-cls-mean",
            title="H0-mini, class + mean patch token (Bioptimus)",
            arch="vit_base_patch14_reg4_dinov2",
            model_args=lambda: {"img_size": 224, "init_values": 1e-5, "global_pool": "",
                                **_swiglu()},
            dim=1536,
            params=71_571_456,
            mean=_BIOPTIMUS_MEAN,
            std=_BIOPTIMUS_STD,
            pool="cls+mean",
            hf_repos=("bioptimus/H0-mini",),
            licence="CC-BY-NC-ND 4.0, gated",
            source="https://huggingface.co/bioptimus/H0-mini",
        ),
        # owkin/phikon-v2 card: DINOv2 ViT-L/16 in the transformers layout (Dinov2Model),
        # image_size 224, layer scale; Resize(224) + CenterCrop(224), ImageNet
        # normalisation; the embedding is last_hidden_state[:, 0] (1024). "300M".
        _card(
            name="phikon-v2",
            title="Phikon-v2 (Owkin)",
            arch="vit_large_patch16_224",
            model_args=lambda: {"img_size": 224, "init_values": 1e-5},
            dim=1024,
            params=303_350_784,
            mean=_IMAGENET[0],
            std=_IMAGENET[1],
            hf_repos=("owkin/phikon-v2",),
            licence="Owkin non-commercial licence",
            source="https://huggingface.co/owkin/phikon-v2",
            extra={"layout": "hf-dinov2"},
        ),
        # histai/hibou-L card: DINOv2 ViT-L/14 with 4 registers (transformers layout,
        # custom HibouModel), 224 px, bicubic, Hibou mean/std; TRIDENT takes
        # pooler_output, the normed class token (1024).
        _card(
            name="hibou-l",
            title="Hibou-L (HistAI)",
            arch="vit_large_patch14_reg4_dinov2",
            model_args=lambda: {"img_size": 224, "init_values": 1e-5, "global_pool": "token"},
            dim=1024,
            params=303_230_976,
            mean=_HIBOU_MEAN,
            std=_HIBOU_STD,
            interpolation="bicubic",
            hf_repos=("histai/hibou-L",),
            licence="Apache 2.0",
            source="https://huggingface.co/histai/hibou-L",
            extra={"layout": "hf-dinov2"},
        ),
        _kaiko("vits8", "vit_small_patch8_224", 384, 21_670_272, img_size=224),
        _kaiko("vits16", "vit_small_patch16_224", 384, 21_665_664, img_size=224),
        _kaiko("vitb8", "vit_base_patch8_224", 768, 85_807_872, img_size=224),
        _kaiko("vitb16", "vit_base_patch16_224", 768, 85_798_656, img_size=224),
        # TRIDENT: vit_large_patch14_reg4_dinov2 with img_size 518 (its 37 x 37 position
        # grid, interpolated at run time for the 224 px input, dynamic_img_size=True)
        _kaiko("vitl14", "vit_large_patch14_reg4_dinov2", 1024, 304_370_688, img_size=518),
        # 1aurent/vit_small_patch8_224.lunit_dino (Lunit "Benchmarking self-supervised
        # learning on diverse pathology datasets"): timm vit_small_patch8_224, 224 px,
        # Lunit mean/std, class token (384); trained on 20x and 40x tiles.
        _card(
            name="lunit-vits8",
            title="Lunit DINO ViT-S/8",
            arch="vit_small_patch8_224",
            model_args=lambda: {"img_size": 224},
            dim=384,
            params=21_670_272,
            mean=_LUNIT_MEAN,
            std=_LUNIT_STD,
            interpolation="bicubic",
            hf_repos=("1aurent/vit_small_patch8_224.lunit_dino",),
            licence="Lunit non-commercial licence",
            source="https://huggingface.co/1aurent/vit_small_patch8_224.lunit_dino",
        ),
        # kaiko-ai/midnight card (Midnight-12k, "Training state-of-the-art pathology
        # foundation models with orders of magnitude less data"): DINOv2 ViT-g/14 in the
        # transformers layout, Resize(224) + CenterCrop(224), mean = std = 0.5. TRIDENT's
        # midnight12k returns the class token (1536), the default here too.
        _card(
            name="midnight-12k",
            title="Midnight-12k (kaiko.ai)",
            arch="vit_giant_patch14_dinov2",
            model_args=lambda: {"img_size": 224, "init_values": 1e-5, "global_pool": "token"},
            dim=1536,
            params=1_134_769_664,
            mean=_HALF,
            std=_HALF,
            hf_repos=("kaiko-ai/midnight",),
            licence="MIT",
            source="https://huggingface.co/kaiko-ai/midnight",
            extra={"layout": "hf-dinov2"},
        ),
        # paige-ai/Virchow card: vit_huge_patch14_224, SwiGLUPacked + SiLU, mlp_ratio
        # 5.3375, no registers, bicubic 224 px, ImageNet normalisation; embedding = class
        # token + mean of the 256 patch tokens (2 x 1280). "632M".
        _card(
            name="virchow",
            title="Virchow (Paige)",
            arch="vit_huge_patch14_224",
            model_args=lambda: {
                "img_size": 224,
                "init_values": 1e-5,
                "mlp_ratio": 5.3375,
                "global_pool": "",
                **_swiglu(),
            },
            dim=2560,
            params=631_229_184,
            mean=_IMAGENET[0],
            std=_IMAGENET[1],
            interpolation="bicubic",
            pool="cls+mean",
            hf_repos=("paige-ai/Virchow",),
            licence="Apache 2.0, gated",
            source="https://huggingface.co/paige-ai/Virchow",
        ),
    )
}

#: TRIDENT encoders that napari-ghanet knows but cannot build, with the reason
UNAVAILABLE_ENCODERS: dict[str, str] = {
    "conch_v15": (
        "CONCH v1.5's 768-d output comes from an attention pooler and projection defined "
        "only in its authors' code (TRIDENT model_zoo/conchv1_5), not buildable by timm"
    ),
    "conch_v1": "CONCH v1 needs its authors' open_clip fork (conch package)",
    "ctranspath": (
        "CTransPath needs the unmaintained timm fork timm-ctp (timm 0.5.4), which conflicts "
        "with timm"
    ),
    "musk": "MUSK needs its authors' musk package and fairscale",
    "phikon": "Phikon (v1, transformers ViTModel layout) is not registered yet; use phikon-v2",
}


# --------------------------------------------------------------------------- checkpoints


_HF_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_BLOCK_KEYS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.weights_in.weight": "mlp.w12.weight",
    "mlp.weights_in.bias": "mlp.w12.bias",
    "mlp.weights_out.weight": "mlp.w3.weight",
    "mlp.weights_out.bias": "mlp.w3.bias",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def hf_dinov2_to_timm(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """A ``transformers`` DINOv2 checkpoint (``Dinov2Model``) as timm ViT tensors.

    Keys are renamed to the original DINOv2 layout (query/key/value concatenated into
    ``qkv``), then timm's own DINOv2 filter folds register tokens and resamples the
    position embedding to ``model``'s grid. A checkpoint already in timm's layout is
    returned unchanged.

    Parameters
    ----------
    state : dict of str to Tensor
        The checkpoint (a ``dinov2.`` or ``model.`` prefix is removed).
    model : timm VisionTransformer
        The network the tensors are for (meta device is fine).

    Returns
    -------
    dict of str to Tensor

    Examples
    --------
    >>> import torch
    >>> d = 8
    >>> hf = {"embeddings.cls_token": torch.zeros(1, 1, d),
    ...       "encoder.layer.0.attention.attention.query.weight": torch.ones(d, d),
    ...       "encoder.layer.0.attention.attention.key.weight": 2 * torch.ones(d, d),
    ...       "encoder.layer.0.attention.attention.value.weight": 3 * torch.ones(d, d)}
    >>> out = _hf_keys_to_dinov2(hf)
    >>> out["blocks.0.attn.qkv.weight"].shape, float(out["blocks.0.attn.qkv.weight"][-1, 0])
    (torch.Size([24, 8]), 3.0)
    """
    converted = _hf_keys_to_dinov2(state)
    if converted is state:
        return state
    from timm.models.vision_transformer import checkpoint_filter_fn

    if "mask_token" not in converted:  # the marker timm's filter knows DINOv2 by
        converted["mask_token"] = torch.zeros(1)
    return checkpoint_filter_fn(converted, model)


def _hf_keys_to_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("dinov2.", "model.", "backbone."):
        if any(k.startswith(prefix + "embeddings.") for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    if not any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return state
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        m = _HF_BLOCK.match(key)
        if m is None:
            continue  # pooler / classifier heads are not part of the trunk
        i, rest = m.groups()
        qkv_m = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if qkv_m:
            qkv.setdefault((i, qkv_m.group(2)), {})[qkv_m.group(1)] = value
        elif rest in _HF_BLOCK_KEYS:
            out[f"blocks.{i}.{_HF_BLOCK_KEYS[rest]}"] = value
        else:
            out[f"blocks.{i}.{rest}"] = value  # left for the shape check to name
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            cat = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
            out[f"blocks.{i}.attn.qkv.{kind}"] = cat
    return out


# --------------------------------------------------------------------------- registration


class _TridentModel(_FoundationModel):
    def convert_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """transformers-layout checkpoints (Phikon-v2, Hibou-L, Midnight) to timm keys."""
        if self.card.extra.get("layout") == "hf-dinov2":
            return hf_dinov2_to_timm(state, self.model)
        return state


def _trident_class(card: FoundationModelCard) -> type[_TridentModel]:
    cls_name = "".join(p.capitalize() for p in re.split(r"[-_]", card.name))
    cls = type(
        f"{cls_name}Encoder",
        (_TridentModel,),
        {
            "card": card,
            "name": card.name,
            "dim": card.dim,
            "input_size": card.input_size,
            "patch_px": card.patch_px,
            "target_mpp": card.target_mpp,
            "__doc__": f"{card.title}: {card.arch}, {card.dim}-d. Source: {card.source}",
            "__module__": __name__,
        },
    )
    return register_encoder(card.name)(cls)


TRIDENT_ENCODERS: dict[str, type[_TridentModel]] = {
    name: _trident_class(card) for name, card in TRIDENT_MODELS.items()
}
