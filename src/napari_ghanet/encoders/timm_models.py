"""Pathology foundation-model encoders built with timm, entirely offline.

Registered names (architecture, preprocessing and magnification from each model's card):

=============  =====================================  =====  ==========  ============
name           architecture                           dim    input       patch
=============  =====================================  =====  ==========  ============
``uni``        UNI, ViT-L/16 (303 M parameters)        1024   224         256 px 0.5 um
``uni2-h``     UNI2-h, ViT-H/14, 8 registers (681 M)   1536   224         256 px 0.5 um
``virchow2``   Virchow2, ViT-H/14, 4 registers (632 M)  2560   224         224 px 0.5 um
``h-optimus-0``  H-optimus-0, ViT-g/14, 4 reg. (1.1 B)  1536   224         224 px 0.5 um
``gigapath``   Prov-GigaPath tile encoder, ViT-g (1.1 B) 1536  256 -> 224  256 px 0.5 um
``timm:ARCH``  any timm architecture, user weights     any    given       given
=============  =====================================  =====  ==========  ============

Nothing is ever downloaded (``pretrained=False`` in timm, no hub call). Weights come from
``weights=PATH`` (``ghanet embed --weights PATH``) or from a Hugging Face hub cache already
on this machine (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``,
``models--ORG--NAME/snapshots/<revision>/model.safetensors`` or ``pytorch_model.bin``).
The weights are licence-gated by their authors: request access on Hugging Face, download
them on a machine with internet access and copy them here.

>>> enc = create_timm_encoder("uni", pretrained=False, device="meta")
>>> enc.dim, enc.input_size, enc.target_mpp
(1024, 224, 0.5)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from napari_ghanet.encoders.base import IMAGENET_MEAN, IMAGENET_STD, PatchEncoder, file_digest
from napari_ghanet.encoders.registry import register_encoder
from napari_ghanet.encoders.spec_rules import layer_names, resolve_model_args
from napari_ghanet.encoders.weights import load_checkpoint, match_state_dict
from napari_ghanet.errors import EncoderError
from napari_ghanet.io.encoder_spec import EncoderSpec

__all__ = [
    "FOUNDATION_MODELS",
    "FoundationModelCard",
    "TimmEncoder",
    "create_timm_encoder",
    "find_hf_weights",
    "hf_hub_cache",
]

_INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class FoundationModelCard:
    """What a model card says about one foundation model (all sizes in pixels)."""

    name: str
    title: str
    arch: str
    model_args: Callable[[], dict[str, Any]]
    dim: int
    params: int  # parameter count of the tile encoder (checked by the tests)
    input_size: int
    resize_to: int
    patch_px: int
    target_mpp: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    pool: str  # "head": timm's pooled output; "cls+mean": class token + mean patch token
    hf_repos: tuple[str, ...]
    licence: str
    source: str
    files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    extra: dict[str, Any] = field(default_factory=dict)


def _swiglu() -> dict[str, Any]:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


# Sources (read 2026): each model's Hugging Face card and the encoder definitions of
# TRIDENT (mahmoodlab/TRIDENT, trident/patch_encoder_models/load.py), which load these
# checkpoints strictly with the same timm arguments. Parameter counts: the cards (UNI
# 303 M "ViT-L/16", UNI2-h 681 M, Virchow2 632 M, H-optimus-0 1.1 B, Prov-GigaPath tile
# encoder 1.13 B), confirmed by building the architectures.
FOUNDATION_MODELS: dict[str, FoundationModelCard] = {
    card.name: card
    for card in (
        # MahmoodLab/UNI card: timm vit_large_patch16_224, init_values=1e-5, Resize(224),
        # ImageNet normalisation; trained on 20x (0.5 um/px) tiles; CLAM/TRIDENT tile 256 px.
        FoundationModelCard(
            name="uni",
            title="UNI (Mahmood Lab)",
            arch="vit_large_patch16_224",
            model_args=lambda: {"img_size": 224, "patch_size": 16, "init_values": 1e-5},
            dim=1024,
            params=303_350_784,
            input_size=224,
            resize_to=224,
            patch_px=256,
            target_mpp=0.5,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bilinear",
            pool="head",
            hf_repos=("MahmoodLab/UNI", "MahmoodLab/uni"),
            licence="CC-BY-NC-ND 4.0, gated",
            source="https://huggingface.co/MahmoodLab/UNI",
        ),
        # MahmoodLab/UNI2-h card: vit_giant_patch14_224 with depth 24, 24 heads, width 1536,
        # SwiGLU MLP (ratio 2.66667 * 2), 8 register tokens, no positional embedding on the
        # prefix tokens; Resize(224), ImageNet normalisation.
        FoundationModelCard(
            name="uni2-h",
            title="UNI2-h (Mahmood Lab)",
            arch="vit_giant_patch14_224",
            model_args=lambda: {
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "no_embed_class": True,
                "reg_tokens": 8,
                **_swiglu(),
            },
            dim=1536,
            params=681_394_176,
            input_size=224,
            resize_to=224,
            patch_px=256,
            target_mpp=0.5,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bilinear",
            pool="head",
            hf_repos=("MahmoodLab/UNI2-h",),
            licence="CC-BY-NC-ND 4.0, gated",
            source="https://huggingface.co/MahmoodLab/UNI2-h",
        ),
        # paige-ai/Virchow2 card: vit_huge_patch14_224, SwiGLUPacked + SiLU, mlp_ratio 5.3375,
        # 4 register tokens, global_pool "", bicubic 224 px, ImageNet normalisation; the
        # embedding is the class token concatenated with the mean of the 256 patch tokens
        # (tokens 1-4 are registers): 2 x 1280 = 2560.
        FoundationModelCard(
            name="virchow2",
            title="Virchow2 (Paige)",
            arch="vit_huge_patch14_224",
            model_args=lambda: {
                "img_size": 224,
                "init_values": 1e-5,
                "mlp_ratio": 5.3375,
                "reg_tokens": 4,
                "global_pool": "",
                **_swiglu(),
            },
            dim=2560,
            params=631_239_424,
            input_size=224,
            resize_to=224,
            patch_px=224,
            target_mpp=0.5,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bicubic",
            pool="cls+mean",
            hf_repos=("paige-ai/Virchow2",),
            licence="CC-BY-NC-ND 4.0, gated",
            source="https://huggingface.co/paige-ai/Virchow2",
        ),
        # bioptimus/H-optimus-0 card: vit_giant_patch14_reg4_dinov2, init_values=1e-5,
        # img_size 224, class-token output; 224 px tiles at 0.5 um/px; its own mean/std.
        FoundationModelCard(
            name="h-optimus-0",
            title="H-optimus-0 (Bioptimus)",
            arch="vit_giant_patch14_reg4_dinov2",
            model_args=lambda: {"img_size": 224, "init_values": 1e-5, "global_pool": "token"},
            dim=1536,
            params=1_134_774_272,
            input_size=224,
            resize_to=224,
            patch_px=224,
            target_mpp=0.5,
            mean=(0.707223, 0.578729, 0.703617),
            std=(0.211883, 0.230117, 0.177517),
            interpolation="bilinear",
            pool="head",
            hf_repos=("bioptimus/H-optimus-0",),
            licence="Apache 2.0, gated",
            source="https://huggingface.co/bioptimus/H-optimus-0",
        ),
        # prov-gigapath/prov-gigapath config.json: vit_giant_patch14_dinov2 with patch_size
        # 16 (so "ViT-g/14" in name only), width 1536, depth 40, 24 heads, mlp_ratio 5.33334,
        # init_values 1e-5; card transform: Resize(256, bicubic), CenterCrop(224), ImageNet
        # normalisation; trained on 256 px tiles at 20x (0.5 um/px).
        FoundationModelCard(
            name="gigapath",
            title="Prov-GigaPath tile encoder (Providence / Microsoft)",
            arch="vit_giant_patch14_dinov2",
            model_args=lambda: {
                "img_size": 224,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "mlp_ratio": 5.33334,
                "init_values": 1e-5,
            },
            dim=1536,
            params=1_134_953_984,
            input_size=224,
            resize_to=256,
            patch_px=256,
            target_mpp=0.5,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bicubic",
            pool="head",
            hf_repos=("prov-gigapath/prov-gigapath",),
            licence="Prov-GigaPath licence, gated",
            source="https://huggingface.co/prov-gigapath/prov-gigapath",
        ),
    )
}


# --------------------------------------------------------------------------- weights on disk


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder this machine would use (it may not exist):
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def find_hf_weights(repos: Sequence[str], files: Sequence[str]) -> Path | None:
    """The first of ``files`` present in a cached snapshot of one of ``repos``, or None.

    Prefers the snapshot ``refs/main`` points to, then the most recent one. Never touches
    the network.

    >>> find_hf_weights(["no-such-org/no-such-model"], ["model.safetensors"]) is None
    True
    """
    cache = hf_hub_cache()
    for repo in repos:
        folder = cache / ("models--" + repo.replace("/", "--"))
        snaps = folder / "snapshots"
        if not snaps.is_dir():
            continue
        order = sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        ref = folder / "refs" / "main"
        if ref.is_file():
            main = snaps / ref.read_text().strip()
            order = [main] + [p for p in order if p != main]
        for snap in order:
            for name in files:
                if (snap / name).is_file():  # follows the blob symlink
                    return snap / name
    return None


def _missing_message(card: FoundationModelCard) -> str:
    repo = card.hf_repos[0]
    folder = hf_hub_cache() / ("models--" + repo.replace("/", "--")) / "snapshots" / "<revision>"
    return (
        f"{card.title} weights not found for encoder {card.name!r}. The weights are "
        f"licence-gated by their authors ({card.licence}): request access at "
        f"https://huggingface.co/{repo}, then on a machine with internet access download "
        f"{' or '.join(card.files)} (e.g. `hf download {repo}`) and either give the file "
        f"as the encoder weights or copy the Hugging Face cache so that the file lies in "
        f"{folder}/ (set HF_HOME or HF_HUB_CACHE if the cache is elsewhere). Nothing is "
        "downloaded by napari-ghanet."
    )


# --------------------------------------------------------------------------- the encoder


class TimmEncoder(PatchEncoder):
    """A timm network with its preprocessing: resize, optional centre crop, normalise.

    Parameters
    ----------
    arch : str
        timm architecture name (``timm.list_models()``), built with ``pretrained=False``.
    weights : str or Path, optional
        Checkpoint (``.safetensors``, or ``.bin``/``.pth`` tensors). Required unless
        ``pretrained=False``.
    model_args : dict, optional
        Extra ``timm.create_model`` arguments (e.g. ``{"init_values": 1e-5}``).
    mean, std : 3 floats, optional
        Normalisation of [0, 1] RGB; default: timm's pretrained configuration of ``arch``.
    input_size : int, optional
        Network input side (px); default: timm's pretrained configuration.
    resize_to : int, optional
        Side the patch is resized to before a centre crop to ``input_size`` (default:
        ``input_size``, no crop).
    interpolation : {"bilinear", "bicubic"}
    pool : {"head", "cls+mean"}
        ``head``: timm's pooled output (``num_classes=0``); ``cls+mean``: the class token
        concatenated with the mean of the patch tokens (Virchow).
    patch_px, target_mpp : int, float
        Patch geometry the encoder is meant for.
    pretrained : bool
        False: seeded random weights (tests and speed benchmarks only).
    device : str, optional
        ``"meta"`` builds the network without memory (architecture checks); it cannot run.
    name : str, optional
        Name recorded in the spec (default ``timm:<arch>``).
    """

    onnx_ok = True
    autocast_ok = True
    channels_last_ok = False

    def __init__(
        self,
        arch: str,
        *,
        weights: str | os.PathLike | None = None,
        model_args: dict[str, Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | None = None,
        resize_to: int | None = None,
        interpolation: str = "bilinear",
        pool: str = "head",
        patch_px: int = 256,
        target_mpp: float = 0.5,
        pretrained: bool = True,
        device: str | torch.device | None = None,
        name: str | None = None,
        _missing: Callable[[], str] | None = None,
    ):
        import timm

        if not timm.is_model(arch):
            raise EncoderError(
                f"unknown timm architecture {arch!r} (timm {timm.__version__}); see "
                "timm.list_models()"
            )
        cfg = timm.get_pretrained_cfg(arch)
        cfg = cfg.to_dict() if cfg is not None else {}
        if input_size is None:
            size = cfg.get("input_size")
            if size is None:
                raise EncoderError(f"timm:{arch}: give input_size (timm has no default for it)")
            input_size = int(size[-1])
        if mean is None or std is None:
            if "mean" not in cfg or "std" not in cfg:
                raise EncoderError(f"timm:{arch}: give mean and std (timm has no default)")
            mean = cfg["mean"] if mean is None else mean
            std = cfg["std"] if std is None else std
        if interpolation not in _INTERPOLATIONS:
            raise EncoderError(f"interpolation must be one of {_INTERPOLATIONS}")
        if pool not in ("head", "cls+mean"):
            raise EncoderError(f"pool must be 'head' or 'cls+mean', got {pool!r}")
        super().__init__(
            input_size=input_size, mean=mean, std=std, patch_px=patch_px, target_mpp=target_mpp
        )
        self.name = name or f"timm:{arch}"
        self.arch = arch
        self.resize_to = int(resize_to or input_size)
        if self.resize_to < self.input_size:
            raise EncoderError(f"resize_to ({resize_to}) must be >= input_size ({input_size})")
        self.interpolation = interpolation
        self.pool = pool
        kwargs: dict[str, Any] = {"num_classes": 0, **(model_args or {})}
        meta = device is not None and torch.device(device).type == "meta"
        if pretrained and not meta and weights is None:
            raise EncoderError(
                _missing() if _missing else f"timm:{arch}: no weights file: give the network's "
                "weights file as the encoder weights"
            )
        # built on the meta device first: no memory, no random initialisation of a billion
        # parameters that the weights file replaces anyway
        with torch.device("meta"):
            self.model = timm.create_model(arch, pretrained=False, **kwargs)
        self.model.eval()
        width = int(getattr(self.model, "num_features", 0))
        self.dim = (
            2 * width
            if pool == "cls+mean"
            else int(getattr(self.model, "head_hidden_size", None) or width)
        )
        if pool == "cls+mean" and getattr(self.model, "cls_token", None) is None:
            raise EncoderError(f"timm:{arch}: pool='cls+mean' needs a class token")
        # a convolutional network profits from channels-last memory on CUDA, a ViT does not
        self.channels_last_ok = not hasattr(self.model, "patch_embed")
        self._weights_desc = "none (meta device: architecture only)"
        if meta:
            return
        if pretrained:
            path = Path(weights).expanduser()
            raw = self.convert_checkpoint(load_checkpoint(path, self.name))
            state = match_state_dict(raw, self.model, source=str(path), what=self.name)
            # buffers that are not in a state dict must be computed by a real initialisation
            transient = set(dict(self.model.named_buffers())) - set(self.model.state_dict())
            if transient:
                self.model = timm.create_model(arch, pretrained=False, **kwargs).eval()
            else:
                self.model.to_empty(device="cpu")
            self.model.load_state_dict(state, strict=True)
            self._weights_desc = f"{path.name} sha256:{file_digest(path)}"
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model = timm.create_model(arch, pretrained=False, **kwargs).eval()
            self._weights_desc = "random (untrained, for tests and speed benchmarks only)"

    def weights_description(self) -> str:
        return self._weights_desc

    def convert_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook: map another library's checkpoint layout to timm's keys (default: as is)."""
        return state

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) RGB -> float32 (N, 3, S, S): resized to ``resize_to`` (with
        antialiasing, clamped to [0, 1] as an 8-bit image would be), centre-cropped to
        ``input_size`` and normalised."""
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise EncoderError(f"expected a (N, H, W, 3) uint8 batch, got {tuple(batch.shape)}")
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        r = self.resize_to
        if tuple(x.shape[-2:]) != (r, r):
            x = F.interpolate(
                x, size=(r, r), mode=self.interpolation, align_corners=False, antialias=True
            )
            if self.interpolation == "bicubic":
                x = x.clamp_(0.0, 1.0)
        s = self.input_size
        if r != s:
            o = (r - s) // 2
            x = x[..., o : o + s, o : o + s]
        return (x - self._mean.to(x.device)) / self._std.to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls+mean":
            tokens = self.model.forward_features(x)
            n_prefix = int(getattr(self.model, "num_prefix_tokens", 1))
            return torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(1)], dim=-1)
        return self.model(x)

    def use_fused_attention(self, enabled: bool = True) -> int:
        """Switch timm's attention blocks to PyTorch SDPA (``fused_attn``); returns how many
        blocks have the switch."""
        n = 0
        for m in self.model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = bool(enabled)
                n += 1
        return n


class _FoundationModel(TimmEncoder):
    card: FoundationModelCard

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        device: str | torch.device | None = None,
        patch_px: int | None = None,
        target_mpp: float | None = None,
    ):
        c = self.card
        if pretrained and weights is None and device is None:
            weights = self.find_weights()
        super().__init__(
            c.arch,
            weights=weights,
            model_args=c.model_args(),
            mean=c.mean,
            std=c.std,
            input_size=c.input_size,
            resize_to=c.resize_to,
            interpolation=c.interpolation,
            pool=c.pool,
            patch_px=c.patch_px if patch_px is None else patch_px,
            target_mpp=c.target_mpp if target_mpp is None else target_mpp,
            pretrained=pretrained,
            device=device,
            name=c.name,
            _missing=lambda: _missing_message(c),
        )
        if self.dim != c.dim:  # pragma: no cover - guarded by the architecture tests
            raise EncoderError(f"{c.name}: built width {self.dim}, the card says {c.dim}")

    @classmethod
    def find_weights(cls) -> Path | None:
        """The weights file in the local Hugging Face hub cache, or None."""
        return find_hf_weights(cls.card.hf_repos, cls.card.files)


def _foundation_class(card: FoundationModelCard) -> type[_FoundationModel]:
    cls_name = "".join(p.capitalize() for p in card.name.replace("-", "_").split("_"))
    cls = type(
        f"{cls_name}Encoder",
        (_FoundationModel,),
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


FOUNDATION_ENCODERS: dict[str, type[_FoundationModel]] = {
    name: _foundation_class(card) for name, card in FOUNDATION_MODELS.items()
}


@register_encoder("timm:")
class TimmArchEncoder(TimmEncoder):
    """``timm:<arch>``: any timm architecture with the user's weights file.

    Built by the registry as ``create_encoder("timm:vit_small_patch16_224",
    weights=PATH, mean=..., std=..., input_size=...)``; the prefix family receives
    ``arch=``. Preprocessing not given is taken from timm's pretrained configuration of
    the architecture (no download).
    """

    name = "timm:"
    dim = 0
    input_size = None
    patch_px = 256
    target_mpp = 0.5
    weights_hint = "user file (the encoder weights)"

    def __init__(self, arch: str, **kwargs: Any):
        super().__init__(arch, **kwargs)
        self.model_args = dict(kwargs.get("model_args") or {})

    def spec_extra(self) -> dict[str, Any]:
        """What a spec needs to rebuild this encoder besides its core fields (mean, std,
        input size): resizing, pooling and the architecture arguments."""
        extra = {
            **super().spec_extra(),
            "resize_to": self.resize_to,
            "interpolation": self.interpolation,
            "pool": self.pool,
        }
        if self.model_args:
            extra["model_args"] = layer_names(self.model_args)  # classes by name: JSON
        return extra

    @classmethod
    def spec_kwargs(cls, spec: EncoderSpec) -> dict[str, Any]:
        """Preprocessing and geometry from the spec; the weights file is an override
        (``weights=PATH``), the architecture comes from the name (``timm:<arch>``)."""
        kw = {**super().spec_kwargs(spec), "input_size": spec.resize}
        if spec.mean is not None:
            kw["mean"] = spec.mean
        if spec.std is not None:
            kw["std"] = spec.std
        for key in ("resize_to", "interpolation", "pool", "model_args"):
            if key in spec.extra:
                kw[key] = spec.extra[key]
        if isinstance(kw.get("model_args"), dict):  # layer classes named as the cards do
            kw["model_args"] = resolve_model_args(kw["model_args"])
        return kw


def create_timm_encoder(name: str, /, **kwargs: Any) -> TimmEncoder:
    """Build a registered foundation model or ``timm:<arch>`` (in eval mode).

    >>> create_timm_encoder("timm:vit_tiny_patch16_224", pretrained=False).dim
    192
    """
    if name.startswith("timm:") and len(name) > 5:
        enc = TimmArchEncoder(name[5:], **kwargs)
    elif name in FOUNDATION_ENCODERS:
        enc = FOUNDATION_ENCODERS[name](**kwargs)
    else:
        raise EncoderError(
            f"unknown timm encoder {name!r}; available: {', '.join(FOUNDATION_ENCODERS)} "
            "or timm:<architecture>"
        )
    enc.eval()
    return enc
