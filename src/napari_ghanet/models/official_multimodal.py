"""Multimodal comparison models (WSI + genomics at inference): MCAT and SurvPath.

Written from the published descriptions of the official code (``mahmoodlab/MCAT``
``MCAT_Surv`` with concat fusion, ``mahmoodlab/SurvPath`` ``SurvPath``); parameter names
follow the official state_dicts. Both read genomics at inference, so they are the upper
reference G-HANet's WSI-only prediction is compared to; they train and evaluate in the
training module but are never bundled for the plugin.

``omics`` is either a list of per-group tensors (B, size_i) (the 6 functional categories,
or SurvPath's pathways) or one (B, sum(sizes)) tensor that is split by ``omic_sizes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from napari_ghanet.errors import ArgumentError
from napari_ghanet.models.ghanet import BatchOutput, valid_mask
from napari_ghanet.models.official_mil import GatedScore, OfficialModelMixin, _check_dim

__all__ = ["MCAT", "MCATConfig", "SurvPath", "SurvPathConfig", "split_omics"]


def split_omics(omics, sizes: tuple[int, ...], device=None, dtype=None) -> list[Tensor]:
    """Per-group genomic tensors (B, size_i) from a list or one concatenated (B, G) tensor."""
    if omics is None:
        raise ArgumentError("this multimodal model needs genomics at inference: pass omics")
    if isinstance(omics, list | tuple):
        parts = [o if o.dim() == 2 else o.reshape(1, -1) for o in omics]
    else:
        if omics.dim() == 1:
            omics = omics[None]
        if omics.shape[-1] != sum(sizes):
            raise ArgumentError(
                f"genomic vector has {omics.shape[-1]} features, the model expects "
                f"{sum(sizes)} ({len(sizes)} groups)"
            )
        parts = list(torch.split(omics, list(sizes), dim=-1))
    if [p.shape[-1] for p in parts] != list(sizes):
        raise ArgumentError(
            f"genomic group sizes {[p.shape[-1] for p in parts]} do not match the model's {list(sizes)}"
        )
    return [p.to(device=device, dtype=dtype) for p in parts]


def _snn(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """Two SNN blocks (Linear, ELU, AlphaDropout); keys ``0.0`` and ``1.0``."""
    return nn.Sequential(
        nn.Sequential(nn.Linear(in_dim, hidden), nn.ELU(), nn.AlphaDropout(dropout)),
        nn.Sequential(nn.Linear(hidden, hidden), nn.ELU(), nn.AlphaDropout(dropout)),
    )


# --------------------------------------------------------------------------------------
# MCAT
# --------------------------------------------------------------------------------------


@dataclass
class MCATConfig:
    """``MCAT_Surv(fusion='concat')`` sizes ("small" WSI and omic networks)."""

    omic_sizes: tuple[int, ...] = (100, 200, 300, 400, 500, 600)
    input_dim: int = 1024
    width: int = 256
    heads: int = 8
    ffn_dim: int = 512
    layers: int = 2
    dropout: float = 0.25
    n_bins: int = 4

    def __post_init__(self) -> None:
        self.omic_sizes = tuple(int(s) for s in self.omic_sizes)


def _encoder(c: MCATConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=c.width, nhead=c.heads, dim_feedforward=c.ffn_dim, dropout=c.dropout,
        activation="relu",
    )
    return nn.TransformerEncoder(layer, num_layers=c.layers, enable_nested_tensor=False)


class MCAT(OfficialModelMixin, nn.Module):
    """Multimodal co-attention transformer: genomic tokens attend over the patches."""

    model_name = "mcat"
    inputs = ("wsi", "omics")

    def __init__(self, config: MCATConfig | None = None, **overrides):
        super().__init__()
        self.config = c = config or MCATConfig(**overrides)
        w = c.width
        self.wsi_net = nn.Sequential(nn.Linear(c.input_dim, w), nn.ReLU(), nn.Dropout(c.dropout))
        self.sig_networks = nn.ModuleList(_snn(s, w, c.dropout) for s in c.omic_sizes)
        self.coattn = nn.MultiheadAttention(w, 1)
        self.path_transformer = _encoder(c)
        self.path_attention_head = GatedScore(w, w, c.dropout)
        self.path_rho = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Dropout(c.dropout))
        self.omic_transformer = _encoder(c)
        self.omic_attention_head = GatedScore(w, w, c.dropout)
        self.omic_rho = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Dropout(c.dropout))
        self.mm = nn.Sequential(nn.Linear(2 * w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU())
        self.classifier = nn.Linear(w, c.n_bins)

    def _coattention(self, g: Tensor, p: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Single-head attention of genomic queries g (B, T, W) over patches p (B, N, W):
        output (B, T, W), raw scores (B, T, N), weights (B, T, N)."""
        a = self.coattn
        wq, wk, wv = a.in_proj_weight.chunk(3, dim=0)
        bq, bk, bv = a.in_proj_bias.chunk(3, dim=0)
        q = nn.functional.linear(g, wq, bq) / math.sqrt(g.shape[-1])
        k = nn.functional.linear(p, wk, bk)
        v = nn.functional.linear(p, wv, bv)
        raw = q @ k.transpose(-1, -2)
        weights = raw.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)
        out = a.out_proj(nn.functional.dropout(weights, a.dropout, self.training) @ v)
        return out, raw, weights

    @staticmethod
    def _pool(tokens: Tensor, head: GatedScore, rho: nn.Module) -> tuple[Tensor, Tensor]:
        raw = head(tokens)[..., 0]  # (B, T)
        pooled = torch.bmm(raw.softmax(dim=-1)[:, None, :], tokens)[:, 0]
        return rho(pooled), raw

    def forward(self, x: Tensor, mask: Tensor | None = None, omics=None, cluster_id=None) -> BatchOutput:
        c = self.config
        _check_dim(x, c.input_dim)
        mask = valid_mask(x, mask)
        parts = split_omics(omics, c.omic_sizes, x.device, x.dtype)
        p = self.wsi_net(x)  # (B, N, W)
        g = torch.stack([net(o) for net, o in zip(self.sig_networks, parts)], dim=1)  # (B, T, W)
        coattn, raw, weights = self._coattention(g, p, mask)
        path = self.path_transformer(coattn.transpose(0, 1)).transpose(0, 1)
        omic = self.omic_transformer(g.transpose(0, 1)).transpose(0, 1)
        h_path, a_path = self._pool(path, self.path_attention_head, self.path_rho)
        h_omic, a_omic = self._pool(omic, self.omic_attention_head, self.omic_rho)
        logits = self.classifier(self.mm(torch.cat([h_path, h_omic], dim=-1)))
        zero = torch.zeros((), dtype=raw.dtype, device=raw.device)
        return self._survival_output(
            logits, genome_attention=weights,
            attention={"coattn": torch.where(mask[:, None, :], raw, zero),
                       "path": a_path, "omic": a_omic},
        )


# --------------------------------------------------------------------------------------
# SurvPath
# --------------------------------------------------------------------------------------


@dataclass
class SurvPathConfig:
    """``SurvPath`` sizes; ``omic_sizes`` has one entry per pathway token."""

    omic_sizes: tuple[int, ...] = field(default_factory=lambda: (100, 200, 300, 400, 500, 600))
    input_dim: int = 1024
    width: int = 256
    dim_head: int = 128
    logit_hidden: int = 64
    dropout: float = 0.1
    snn_dropout: float = 0.25
    n_bins: int = 4

    def __post_init__(self) -> None:
        self.omic_sizes = tuple(int(s) for s in self.omic_sizes)


class _CrossAttender(nn.Module):
    def __init__(self, width: int, dim_head: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.Module()
        self.attn.to_qkv = nn.Linear(width, 3 * dim_head, bias=False)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x))


class SurvPath(OfficialModelMixin, nn.Module):
    """Pathway tokens and patch tokens in one sparse attention: pathways attend to
    pathways and patches, patches attend to pathways only; means of both token sets feed
    the survival head."""

    model_name = "survpath"
    inputs = ("wsi", "omics")

    def __init__(self, config: SurvPathConfig | None = None, **overrides):
        super().__init__()
        self.config = c = config or SurvPathConfig(**overrides)
        self.wsi_projection_net = nn.Sequential(nn.Linear(c.input_dim, c.width))
        self.sig_networks = nn.ModuleList(_snn(s, c.width, c.snn_dropout) for s in c.omic_sizes)
        self.cross_attender = _CrossAttender(c.width, c.dim_head)
        self.feed_forward = _FeedForward(c.dim_head, c.dropout)
        self.layer_norm = nn.LayerNorm(c.dim_head)
        self.to_logits = nn.Sequential(
            nn.Linear(2 * c.dim_head, c.logit_hidden), nn.ReLU(), nn.Linear(c.logit_hidden, c.n_bins)
        )

    @property
    def classifier(self) -> nn.Linear:
        """The survival head's last layer (for the trainer's hazard initialisation)."""
        return self.to_logits[2]

    def forward(self, x: Tensor, mask: Tensor | None = None, omics=None, cluster_id=None) -> BatchOutput:
        c = self.config
        _check_dim(x, c.input_dim)
        mask = valid_mask(x, mask)
        parts = split_omics(omics, c.omic_sizes, x.device, x.dtype)
        n_p = len(parts)
        pw = torch.stack([net(o) for net, o in zip(self.sig_networks, parts)], dim=1)  # (B, P, W)
        tokens = torch.cat([pw, self.wsi_projection_net(x)], dim=1)  # (B, P + N, W)
        q, k, v = self.cross_attender.attn.to_qkv(self.cross_attender.norm(tokens)).chunk(3, dim=-1)
        q = q * c.dim_head**-0.5
        q_p, q_h = q[:, :n_p], q[:, n_p:]
        k_p, v_p = k[:, :n_p], v[:, :n_p]
        s_pp = q_p @ k_p.transpose(-1, -2)  # (B, P, P)
        s_ph = q_p @ k[:, n_p:].transpose(-1, -2)  # (B, P, N)
        s_hp = q_h @ k_p.transpose(-1, -2)  # (B, N, P)
        joint = torch.cat([s_pp, s_ph.masked_fill(~mask[:, None, :], float("-inf"))], dim=-1)
        out_p = joint.softmax(dim=-1) @ v
        out_h = s_hp.softmax(dim=-1) @ v_p
        emb = self.layer_norm(self.feed_forward(torch.cat([out_p, out_h], dim=1)))
        m = mask[..., None].to(emb.dtype)
        mean_h = (emb[:, n_p:] * m).sum(dim=1) / m.sum(dim=1)
        logits = self.to_logits(torch.cat([emb[:, :n_p].mean(dim=1), mean_h], dim=-1))
        zero = torch.zeros((), dtype=s_ph.dtype, device=s_ph.device)
        return self._survival_output(
            logits,
            attention={"attn_pathways": s_pp,
                       "cross_attn_pathways": torch.where(mask[:, None, :], s_ph, zero),
                       "cross_attn_histology": torch.where(mask[..., None], s_hp, zero)},
        )
