"""Baselines sharing G-HANet's 4-bin discrete-time survival head and loss.

* ``abmil``: gated-attention multiple-instance learning on the WSI bag (Ilse et al. 2018).
* ``snn``: self-normalizing network (SELU, AlphaDropout; Klambauer et al. 2017) on the
  genomic vector; needs genomics at inference.
* ``abmil_snn``: both branches, their embeddings concatenated (late fusion); the
  multimodal upper reference for what distillation into a WSI-only model can reach.
* the official comparison models ``amil``, ``deepattnmisl``, ``transmil``, ``mcat`` and
  ``survpath`` (:mod:`napari_ghanet.models.official`; ``abmil`` here is a narrower
  gated-attention MIL, 1024 -> 256, not MCAT's ``MIL_Attention_FC_surv``);
* G-HANet's ablations ``ghanet-no-recon``, ``ghanet-no-genome``, ``ghanet-no-hyper`` and
  top-k variants ``ghanet@R`` (one GHANetConfig switch each).

Every model takes ``forward(x, mask=None, omics=None) -> BatchOutput`` like
:class:`napari_ghanet.models.ghanet.GHANet`: ``x`` (B, N, D) padded patch features with ``mask``
(B, N) True at real patches, ``omics`` (B, G) standardised genomic features (a list of
per-category tensors is concatenated). Models declare what they read in ``inputs``.
:func:`build_model` builds any of them, G-HANet included, from a name and config fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from napari_ghanet.errors import ArgumentError, FeaturesError
from napari_ghanet.models.ghanet import (
    BatchOutput,
    GatedAttention,
    GHANet,
    GHANetConfig,
    SurvivalHeadMixin,
    valid_mask,
)
from napari_ghanet.models.official import OFFICIAL_MODELS

__all__ = [
    "ABMILConfig",
    "SNNConfig",
    "ABMILSNNConfig",
    "ABMIL",
    "SNN",
    "ABMILSNN",
    "MODEL_NAMES",
    "OFFICIAL_NAMES",
    "GHANET_VARIANTS",
    "topk_model_name",
    "ghanet_overrides",
    "is_ghanet",
    "known_model",
    "build_model",
    "model_inputs",
]

#: G-HANet ablations (one config switch each; the paper's model has them all on)
GHANET_VARIANTS = {
    "ghanet": {},
    "ghanet-no-recon": {"reconstruction": False},
    "ghanet-no-genome": {"genome_edges": False},
    "ghanet-no-hyper": {"hypergraph": False},
}
#: the official comparison models (napari_ghanet.models.official)
OFFICIAL_NAMES = ("amil", "deepattnmisl", "transmil", "mcat", "survpath")
MODEL_NAMES = ("ghanet", "abmil", "snn", "abmil_snn", *OFFICIAL_NAMES,
               "ghanet-no-recon", "ghanet-no-genome", "ghanet-no-hyper")


def topk_model_name(ratio: float) -> str:
    """The run name of G-HANet at top-k ratio ``ratio``: ``ghanet@0.1``."""
    return f"ghanet@{float(ratio):g}"


def ghanet_overrides(name: str) -> dict | None:
    """The GHANetConfig fields a G-HANet model name sets (``ghanet``, an ablation, or
    ``ghanet@R`` for top-k ratio R), or None when ``name`` is not a G-HANet."""
    if name in GHANET_VARIANTS:
        return dict(GHANET_VARIANTS[name])
    if name.startswith("ghanet@"):
        try:
            ratio = float(name.split("@", 1)[1])
        except ValueError:
            return None
        if 0.0 < ratio <= 1.0:
            return {"ratio": ratio}
    return None


def is_ghanet(name: str) -> bool:
    """True for G-HANet and its variants (they reconstruct genomics in training)."""
    return ghanet_overrides(name) is not None


def known_model(name: str) -> bool:
    return name in MODEL_NAMES or is_ghanet(name)


def _masked(x: Tensor | None, mask: Tensor | None) -> Tensor:
    if x is None:
        raise ArgumentError("expected a batch of bags of shape (B, N, D), got None")
    return valid_mask(x, mask)


def _omics(omics, dim: int) -> Tensor:
    if omics is None:
        raise ArgumentError("this model needs the genomic vector: pass omics (B, G)")
    if isinstance(omics, list | tuple):
        omics = torch.cat(list(omics), dim=-1)
    if omics.dim() == 1:
        omics = omics[None]
    if omics.shape[-1] != dim:
        raise ArgumentError(f"genomic vector has {omics.shape[-1]} features, the model expects {dim}")
    return omics


class _Described:
    """Mixin: ``describe()`` gives the bundle's ``{"name", "config"}`` entry."""

    model_name: str

    def describe(self) -> dict:
        return {"name": self.model_name, "config": asdict(self.config)}


@dataclass
class ABMILConfig:
    input_dim: int = 1024
    hidden: int = 256
    attn_dim: int = 256
    dropout: float = 0.25
    n_bins: int = 4


class _ABMILEncoder(nn.Module):
    """Patch projection + gated attention pooling: (B, N, D) -> (B, hidden), (B, N)."""

    def __init__(self, input_dim: int, hidden: int, attn_dim: int, dropout: float):
        super().__init__()
        self.input_dim = input_dim
        self.proj = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.gate = GatedAttention(hidden, attn_dim, dropout)
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] != self.input_dim:
            raise FeaturesError(
                f"patch features have dimension {x.shape[-1]} but the model expects "
                f"{self.input_dim}: the features were made with another encoder"
            )
        h = self.proj(x)
        attn = self.gate(h).masked_fill(~mask, float("-inf")).softmax(dim=-1)  # (B, N)
        pooled = torch.bmm(attn[:, None, :], h)[:, 0]
        return self.rho(pooled), attn


class ABMIL(_Described, SurvivalHeadMixin, nn.Module):
    """Gated-attention MIL survival model on the WSI bag."""

    model_name = "abmil"
    inputs = ("wsi",)

    def __init__(self, config: ABMILConfig | None = None, **overrides):
        super().__init__()
        self.config = config or ABMILConfig(**overrides)
        c = self.config
        self.encoder = _ABMILEncoder(c.input_dim, c.hidden, c.attn_dim, c.dropout)
        self.classifier = nn.Linear(c.hidden, c.n_bins)

    def forward(self, x: Tensor, mask: Tensor | None = None, omics=None) -> BatchOutput:
        mask = _masked(x, mask)
        z, attn = self.encoder(x, mask)
        return self._survival_output(self.classifier(z), morphology_attention=attn)

    def forward_batch(self, x: Tensor, mask: Tensor | None = None) -> BatchOutput:
        return self.forward(x, mask)

    def forward_bag(self, x: Tensor):
        if x.dim() != 2 or x.shape[0] == 0:
            raise ArgumentError(f"expected one non-empty bag of shape (N, D), got {tuple(x.shape)}")
        return self.forward(x[None]).bag(0)


@dataclass
class SNNConfig:
    omic_dim: int = 100
    hidden: int = 256
    depth: int = 2
    dropout: float = 0.25
    n_bins: int = 4


def _snn_blocks(in_dim: int, hidden: int, depth: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.SELU(), nn.AlphaDropout(dropout)]
    seq = nn.Sequential(*layers)
    for m in seq.modules():  # LeCun normal initialisation keeps SELU activations normalised
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    return seq


class SNN(_Described, SurvivalHeadMixin, nn.Module):
    """Self-normalizing network on the genomic vector (B, G)."""

    model_name = "snn"
    inputs = ("omics",)

    def __init__(self, config: SNNConfig | None = None, **overrides):
        super().__init__()
        self.config = config or SNNConfig(**overrides)
        c = self.config
        if c.depth < 1:
            raise ArgumentError(f"SNN depth must be >= 1, got {c.depth}")
        self.body = _snn_blocks(c.omic_dim, c.hidden, c.depth, c.dropout)
        self.classifier = nn.Linear(c.hidden, c.n_bins)

    def forward(self, x: Tensor | None = None, mask: Tensor | None = None, omics=None) -> BatchOutput:
        z = self.body(_omics(omics, self.config.omic_dim))
        return self._survival_output(self.classifier(z))


@dataclass
class ABMILSNNConfig:
    input_dim: int = 1024
    omic_dim: int = 100
    hidden: int = 256
    attn_dim: int = 256
    omic_hidden: int = 256
    omic_depth: int = 2
    fusion_dim: int = 256
    dropout: float = 0.25
    n_bins: int = 4


class ABMILSNN(_Described, SurvivalHeadMixin, nn.Module):
    """Multimodal late fusion: ABMIL's WSI embedding and SNN's genomic embedding are
    concatenated and mixed by a ReLU layer before the survival head."""

    model_name = "abmil_snn"
    inputs = ("wsi", "omics")

    def __init__(self, config: ABMILSNNConfig | None = None, **overrides):
        super().__init__()
        self.config = config or ABMILSNNConfig(**overrides)
        c = self.config
        self.wsi = _ABMILEncoder(c.input_dim, c.hidden, c.attn_dim, c.dropout)
        self.omic = _snn_blocks(c.omic_dim, c.omic_hidden, c.omic_depth, c.dropout)
        self.fusion = nn.Sequential(
            nn.Linear(c.hidden + c.omic_hidden, c.fusion_dim), nn.ReLU(), nn.Dropout(c.dropout)
        )
        self.classifier = nn.Linear(c.fusion_dim, c.n_bins)

    def forward(self, x: Tensor, mask: Tensor | None = None, omics=None) -> BatchOutput:
        mask = _masked(x, mask)
        z_wsi, attn = self.wsi(x, mask)
        z_omic = self.omic(_omics(omics, self.config.omic_dim).to(z_wsi.dtype))
        z = self.fusion(torch.cat([z_wsi, z_omic], dim=-1))
        return self._survival_output(self.classifier(z), morphology_attention=attn)


_BASELINES = {"abmil": (ABMIL, ABMILConfig), "snn": (SNN, SNNConfig), "abmil_snn": (ABMILSNN, ABMILSNNConfig)}


def build_model(name: str, **config) -> nn.Module:
    """A fresh model by name (see :data:`MODEL_NAMES`, and ``ghanet@R``) from its config
    fields. Unknown names or fields raise ArgumentError naming them."""
    overrides = ghanet_overrides(name)
    if overrides is not None:
        return GHANet(GHANetConfig.from_dict({**config, **overrides}))
    if name in OFFICIAL_NAMES:
        cfg_cls = OFFICIAL_MODELS[name][1]
        known = {f.name for f in fields(cfg_cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ArgumentError(f"unknown {name} config field(s) {unknown}; known: {sorted(known)}")
        return OFFICIAL_MODELS[name][0](cfg_cls(**config))
    if name not in _BASELINES:
        raise ArgumentError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    cls, cfg_cls = _BASELINES[name]
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ArgumentError(f"unknown {name} config field(s) {unknown}; known: {sorted(known)}")
    return cls(cfg_cls(**config))


def model_inputs(model_or_name) -> tuple[str, ...]:
    """What a model reads: a subset of ``("wsi", "omics")``. G-HANet reads the WSI only
    (genomics are its training targets, not inputs)."""
    if isinstance(model_or_name, str):
        if is_ghanet(model_or_name):
            return ("wsi",)
        if model_or_name in OFFICIAL_NAMES:
            return OFFICIAL_MODELS[model_or_name][0].inputs
        if model_or_name not in _BASELINES:
            raise ArgumentError(f"unknown model {model_or_name!r}; choose one of {list(MODEL_NAMES)}")
        return _BASELINES[model_or_name][0].inputs
    return tuple(getattr(model_or_name, "inputs", ("wsi",)))
