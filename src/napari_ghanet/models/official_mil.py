"""WSI-only comparison models as their authors ran them: AMIL, DeepAttnMISL, TransMIL.

Written from the published descriptions of the official code (see
``docs/training-guide.md``); parameter names follow the official state_dicts, so an
official checkpoint loads with ``load_state_dict(strict=True)`` and reproduces the official
outputs (tests/test_official_baselines.py, 1e-5).

* :class:`AMIL`: ``MIL_Attention_FC_surv`` of MCAT / G-HANet (fusion=None, size "small"):
  Linear(1024, 512) + ReLU, gated attention 512 -> 256 -> 1, softmax over patches,
  weighted sum, ``rho`` Linear(512, 256) + ReLU, ``classifier`` Linear(256, 4).
* :class:`DeepAttnMISL`: ``MIL_Cluster_FC_surv`` (fusion=None): one MLP ``phis[i]`` per
  phenotype cluster (k-means ids given per patch), mean over the cluster's patches, gated
  attention over the cluster embeddings. An empty cluster contributes a zero row, as the
  official code does.
* :class:`TransMIL`: Linear(1024, 512) + ReLU, square padding with the bag's first
  patches, CLS token, Nystrom self-attention (nystrom-attention 0.0.9 semantics, including
  its front padding and its keeping of the *first* T rows), PPEG, second layer, LayerNorm,
  CLS -> Linear(512, 4) used as discrete-time hazard logits.

Every model: ``forward(x, mask=None, omics=None, cluster_id=None) -> BatchOutput`` on
padded bags ``x`` (B, N, D) with ``mask`` (B, N); ``forward_bag(x_path, omics=None,
cluster_id=None) -> BagOutput`` for one bag (N, D).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ghanet.errors import ArgumentError, FeaturesError
from napari_ghanet.models.ghanet import BagOutput, BatchOutput, SurvivalHeadMixin, valid_mask

__all__ = [
    "AMIL",
    "AMILConfig",
    "DeepAttnMISL",
    "DeepAttnMISLConfig",
    "TransMIL",
    "TransMILConfig",
    "GatedScore",
    "nystrom_attention",
    "transmil_square_pad",
    "OfficialModelMixin",
]


class GatedScore(nn.Module):
    """Gated attention scores (``Attn_Net_Gated``): ``attention_c(tanh(a) * sigmoid(b))``.

    (..., L) -> (..., 1) unnormalised logits; key names ``attention_a.0``,
    ``attention_b.0``, ``attention_c`` as in the official checkpoints.
    """

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(hidden, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h))


class OfficialModelMixin(SurvivalHeadMixin):
    """Shared entry points: ``describe()``, ``forward_batch`` and ``forward_bag``."""

    model_name: str
    config: object

    def describe(self) -> dict:
        return {"name": self.model_name, "config": asdict(self.config)}

    def forward_batch(self, x: Tensor, mask: Tensor | None = None, **kw) -> BatchOutput:
        return self.forward(x, mask, **kw)

    def forward_bag(
        self, x_path: Tensor, omics=None, cluster_id: Tensor | None = None
    ) -> BagOutput:
        """One bag ``x_path`` (N, D) (or (1, N, D)) -> BagOutput: hazards, survival,
        logits (K,), risk (), attentions cut to the bag."""
        if x_path.dim() == 3 and x_path.shape[0] == 1:
            x_path = x_path[0]
        if x_path.dim() != 2 or x_path.shape[0] == 0:
            raise ArgumentError(f"expected one non-empty bag of shape (N, D), got {tuple(x_path.shape)}")
        if omics is not None:
            omics = [o.reshape(1, -1) for o in omics] if isinstance(omics, list | tuple) else omics.reshape(1, -1)
        cid = None if cluster_id is None else cluster_id.reshape(1, -1)
        return self.forward(x_path[None], None, omics=omics, cluster_id=cid).bag(0)


def _check_dim(x: Tensor, dim: int) -> None:
    if x.shape[-1] != dim:
        raise FeaturesError(
            f"patch features have dimension {x.shape[-1]} but the model expects {dim}: "
            "the features were made with another encoder"
        )


# --------------------------------------------------------------------------------------
# AMIL
# --------------------------------------------------------------------------------------


@dataclass
class AMILConfig:
    """``MIL_Attention_FC_surv`` sizes (size "small": 1024 -> 512 -> 256)."""

    input_dim: int = 1024
    hidden: int = 512
    attn_dim: int = 256
    rho_dim: int = 256
    dropout: float = 0.25
    n_bins: int = 4


class AMIL(OfficialModelMixin, nn.Module):
    """Gated-attention MIL survival model (MCAT's / G-HANet's ``MIL_Attention_FC_surv``)."""

    model_name = "amil"
    inputs = ("wsi",)

    def __init__(self, config: AMILConfig | None = None, **overrides):
        super().__init__()
        self.config = c = config or AMILConfig(**overrides)
        self.attention_net = nn.Sequential(
            nn.Linear(c.input_dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout),
            GatedScore(c.hidden, c.attn_dim, c.dropout),
        )
        self.rho = nn.Sequential(nn.Linear(c.hidden, c.rho_dim), nn.ReLU(), nn.Dropout(c.dropout))
        self.classifier = nn.Linear(c.rho_dim, c.n_bins)

    def forward(self, x: Tensor, mask: Tensor | None = None, omics=None, cluster_id=None) -> BatchOutput:
        _check_dim(x, self.config.input_dim)
        mask = valid_mask(x, mask)
        h = self.attention_net[:3](x)  # (B, N, hidden)
        raw = self.attention_net[3](h)[..., 0]  # (B, N)
        attn = raw.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        pooled = torch.bmm(attn[:, None, :], h)[:, 0]
        logits = self.classifier(self.rho(pooled))
        zero = torch.zeros((), dtype=raw.dtype, device=raw.device)
        return self._survival_output(
            logits, morphology_attention=attn,
            attention={"attention_raw": torch.where(mask, raw, zero), "attention_softmax": attn},
        )


# --------------------------------------------------------------------------------------
# DeepAttnMISL
# --------------------------------------------------------------------------------------


@dataclass
class DeepAttnMISLConfig:
    """``MIL_Cluster_FC_surv`` sizes (size "small")."""

    input_dim: int = 1024
    num_clusters: int = 10
    hidden: int = 512
    attn_dim: int = 256
    rho_dim: int = 256
    dropout: float = 0.25
    n_bins: int = 4


class DeepAttnMISL(OfficialModelMixin, nn.Module):
    """Cluster-based deep attention MISL (``MIL_Cluster_FC_surv``).

    ``cluster_id`` (B, N) int64 in ``0 .. num_clusters - 1`` (padding positions are
    ignored) are the slide's phenotype clusters (k-means on its patch features, see
    :func:`napari_ghanet.models.official.phenotype_clusters`).
    """

    model_name = "deepattnmisl"
    inputs = ("wsi", "clusters")

    def __init__(self, config: DeepAttnMISLConfig | None = None, **overrides):
        super().__init__()
        self.config = c = config or DeepAttnMISLConfig(**overrides)
        self.phis = nn.ModuleList(
            nn.Sequential(
                nn.Linear(c.input_dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout),
                nn.Linear(c.hidden, c.hidden), nn.ReLU(), nn.Dropout(c.dropout),
            )
            for _ in range(c.num_clusters)
        )
        self.attention_net = nn.Sequential(
            nn.Linear(c.hidden, c.hidden), nn.ReLU(), nn.Dropout(c.dropout),
            GatedScore(c.hidden, c.attn_dim, c.dropout),
        )
        self.rho = nn.Sequential(nn.Linear(c.hidden, c.rho_dim), nn.ReLU(), nn.Dropout(c.dropout))
        self.classifier = nn.Linear(c.rho_dim, c.n_bins)

    def cluster_embeddings(self, x: Tensor, mask: Tensor, cluster_id: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, hidden) mean of ``phis[i]`` over each cluster's patches (zero when the
        cluster is empty) and the patch counts (B, C)."""
        c = self.config
        b = x.shape[0]
        out = x.new_zeros(b, c.num_clusters, c.hidden)
        counts = torch.zeros(b, c.num_clusters, dtype=x.dtype, device=x.device)
        bag_of = torch.arange(b, device=x.device)[:, None].expand_as(mask)
        for i, phi in enumerate(self.phis):
            sel = mask & (cluster_id == i)
            if not bool(sel.any()):
                continue
            h = phi(x[sel])  # (M, hidden)
            owner = bag_of[sel]
            sums = x.new_zeros(b, c.hidden).index_add(0, owner, h.to(x.dtype))
            n = torch.bincount(owner, minlength=b).to(x.dtype)
            counts[:, i] = n
            out[:, i] = sums / n.clamp(min=1)[:, None]
        return out, counts

    def forward(self, x: Tensor, mask: Tensor | None = None, omics=None,
                cluster_id: Tensor | None = None) -> BatchOutput:
        c = self.config
        _check_dim(x, c.input_dim)
        mask = valid_mask(x, mask)
        if cluster_id is None:
            raise ArgumentError("DeepAttnMISL needs the patches' phenotype cluster ids (cluster_id)")
        cluster_id = cluster_id.to(x.device).long()
        if cluster_id.shape != mask.shape:
            raise ArgumentError(f"cluster_id shape {tuple(cluster_id.shape)} does not match the bags {tuple(mask.shape)}")
        bad = mask & ((cluster_id < 0) | (cluster_id >= c.num_clusters))
        if bool(bad.any()):
            raise ArgumentError(f"cluster ids must lie in 0..{c.num_clusters - 1}")
        emb, counts = self.cluster_embeddings(x, mask, cluster_id)
        h = self.attention_net[:3](emb)  # (B, C, hidden)
        raw = self.attention_net[3](h)[..., 0]  # (B, C)
        attn = raw.softmax(dim=-1)
        pooled = torch.bmm(attn[:, None, :], h)[:, 0]
        logits = self.classifier(self.rho(pooled))
        # A patch's share: its cluster's weight spread evenly over the cluster's patches.
        share = attn / counts.clamp(min=1)
        per_patch = torch.gather(share, 1, cluster_id.clamp(0, c.num_clusters - 1)) * mask
        return self._survival_output(
            logits, morphology_attention=per_patch,
            attention={"attention_raw": raw, "attention_softmax": attn, "cluster_counts": counts},
        )


# --------------------------------------------------------------------------------------
# TransMIL
# --------------------------------------------------------------------------------------


@dataclass
class TransMILConfig:
    """TransMIL sizes as its authors fixed them (512 wide, 8 heads x 64, 256 landmarks)."""

    input_dim: int = 1024
    width: int = 512
    heads: int = 8
    landmarks: int = 256
    pinv_iterations: int = 6
    res_kernel: int = 33
    dropout: float = 0.1
    n_bins: int = 4


def _pinv_iterative(x: Tensor, iters: int) -> Tensor:
    """Iterative Moore-Penrose inverse of x (B, H, m, m) as nystrom-attention 0.0.9: the
    start scale uses the maxima of the row and column sums over every head jointly (per
    bag, so that bags stacked in one batch are each computed as alone)."""
    a = x.abs()  # maxima per bag (dim 0), over its heads jointly: B = 1 is the official
    row = a.sum(dim=-1).flatten(1).max(dim=1).values
    col = a.sum(dim=-2).flatten(1).max(dim=1).values
    z = x.transpose(-1, -2) / (row * col).view(-1, *([1] * (x.dim() - 1)))
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class _Nystrom(nn.Module):
    """Parameters of one Nystrom attention (keys ``to_qkv``, ``to_out.0``, ``res_conv``)."""

    def __init__(self, c: TransMILConfig):
        super().__init__()
        self.heads, self.landmarks, self.iters = c.heads, c.landmarks, c.pinv_iterations
        self.dim_head = c.width // c.heads
        self.to_qkv = nn.Linear(c.width, 3 * c.width, bias=False)
        self.to_out = nn.Sequential(nn.Linear(c.width, c.width), nn.Dropout(c.dropout))
        k = c.res_kernel
        self.res_conv = nn.Conv2d(c.heads, c.heads, (k, 1), padding=(k // 2, 0), groups=c.heads, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return nystrom_attention(self, x)


def nystrom_attention(mod: _Nystrom, x: Tensor) -> Tensor:
    """Nystrom self-attention of x (B, T, W) exactly as nystrom-attention 0.0.9 runs it.

    The sequence is zero-padded at the front to a multiple of the landmark count, and the
    output keeps the *first* T rows of the padded sequence (so it is shifted by the
    padding length relative to the input tokens): the quirk TransMIL was trained with.
    """
    b, t, w = x.shape
    m, h = mod.landmarks, mod.heads
    pad = (m - t % m) % m
    if pad:
        x = F.pad(x, (0, 0, pad, 0), value=0.0)
    n = x.shape[1]
    q, k, v = mod.to_qkv(x).chunk(3, dim=-1)
    q, k, v = (u.reshape(b, n, h, -1).transpose(1, 2) for u in (q, k, v))  # (B, H, n, d)
    q = q * mod.dim_head**-0.5
    groups = n // m
    q_l = q.reshape(b, h, m, groups, -1).sum(dim=3) / groups
    k_l = k.reshape(b, h, m, groups, -1).sum(dim=3) / groups
    attn1 = (q @ k_l.transpose(-1, -2)).softmax(dim=-1)
    attn2 = (q_l @ k_l.transpose(-1, -2)).softmax(dim=-1)
    attn3 = (q_l @ k.transpose(-1, -2)).softmax(dim=-1)
    out = (attn1 @ _pinv_iterative(attn2, mod.iters)) @ (attn3 @ v)
    out = out + mod.res_conv(v)
    out = out.transpose(1, 2).reshape(b, n, w)
    return mod.to_out(out)[:, :t]


class _TransLayer(nn.Module):
    def __init__(self, c: TransMILConfig):
        super().__init__()
        self.norm = nn.LayerNorm(c.width)
        self.attn = _Nystrom(c)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(self.norm(x))


class _PPEG(nn.Module):
    """Pyramid position encoding: depthwise 7/5/3 convolutions on the g x g token grid."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Conv2d(width, width, 7, 1, 3, groups=width)
        self.proj1 = nn.Conv2d(width, width, 5, 1, 2, groups=width)
        self.proj2 = nn.Conv2d(width, width, 3, 1, 1, groups=width)

    def forward(self, x: Tensor, g: int) -> Tensor:
        b, _, w = x.shape
        cls, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(b, w, g, g)
        y = self.proj(grid) + grid + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls, y.flatten(2).transpose(1, 2)], dim=1)


def transmil_square_pad(h: Tensor) -> tuple[Tensor, int]:
    """(B, N, W) -> (B, g*g, W) with g = ceil(sqrt(N)): the first g*g - N tokens repeated
    at the end, as TransMIL does; returns the grid side g."""
    n = h.shape[1]
    g = math.ceil(math.sqrt(n))
    extra = g * g - n
    if extra:  # g*g - N <= N for every N >= 1
        h = torch.cat([h, h[:, :extra]], dim=1)
    return h, g


class TransMIL(OfficialModelMixin, nn.Module):
    """TransMIL with its 4 class logits read as discrete-time hazard logits.

    Bags of a batch are run one by one (each has its own square grid); the cost is
    O(T x landmarks) per layer.
    """

    model_name = "transmil"
    inputs = ("wsi",)

    def __init__(self, config: TransMILConfig | None = None, **overrides):
        super().__init__()
        self.config = c = config or TransMILConfig(**overrides)
        self.pos_layer = _PPEG(c.width)
        self._fc1 = nn.Sequential(nn.Linear(c.input_dim, c.width), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.width))
        self.layer1 = _TransLayer(c)
        self.layer2 = _TransLayer(c)
        self.norm = nn.LayerNorm(c.width)
        self._fc2 = nn.Linear(c.width, c.n_bins)

    @property
    def classifier(self) -> nn.Linear:
        """The survival head (for the trainer's hazard initialisation)."""
        return self._fc2

    def _grid(self, h: Tensor, g: int) -> Tensor:
        """Square-padded bags h (b, g*g, W) of one grid side -> logits (b, K)."""
        h = torch.cat([self.cls_token.to(h.dtype).expand(h.shape[0], -1, -1), h], dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, g)
        h = self.layer2(h)
        return self._fc2(self.norm(h)[:, 0])

    def forward(self, x: Tensor, mask: Tensor | None = None, omics=None, cluster_id=None) -> BatchOutput:
        """Each bag is square-padded with its own first patches; bags with the same grid
        side run stacked (each computed as alone), the others one group at a time."""
        _check_dim(x, self.config.input_dim)
        mask = valid_mask(x, mask)
        padded = [transmil_square_pad(self._fc1(x[i][mask[i]][None])) for i in range(x.shape[0])]
        logits: list[Tensor | None] = [None] * len(padded)
        for g in sorted({g for _, g in padded}):
            idx = [i for i, (_, gi) in enumerate(padded) if gi == g]
            out = self._grid(torch.cat([padded[i][0] for i in idx]), g)
            for k, i in enumerate(idx):
                logits[i] = out[k]
        return self._survival_output(torch.stack(logits))
