"""G-HANet: genome-informed hyper-attention network for survival from a WSI bag.

The network has two branches that share the patch bag ``x`` (N patches x D features):

* **CAB**, the cross-modal associating branch: ``num_tokens`` learnable tokens (one per
  functional gene category) cross-attend over the patches in two rounds and each token
  reconstructs its category's genomic profile. Its cross-attention logits, averaged over
  heads, say which patches explain which category.
* **HSB**, the hyper-attention survival branch: a gated attention over the patches
  (morphology) and CAB's attention restricted to each token's top ``ratio`` fraction of
  patches (genome-informed) are averaged into hyperedge weights; the hyperedge features are
  fused with the CAB tokens, pass a self-attention block and feed a discrete-time
  survival head.

At inference only the WSI is needed. All tensors here are float32 unless autocast is on.
Shapes use B = bags, N = patches, D = input feature dim, W = width, T = tokens,
H = heads, K = survival bins.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ghanet.errors import ArgumentError, CheckpointError, FeaturesError

__all__ = [
    "GHANetConfig",
    "GHANet",
    "BagOutput",
    "BatchOutput",
    "SurvivalHeadMixin",
    "survival_from_logits",
    "load_official_checkpoint",
    "official_key_to_native",
    "CheckpointError",
]




@dataclass
class GHANetConfig:
    """Sizes of a G-HANet. Defaults are the paper's values.

    ``omic_sizes`` lists how many genomic features each token reconstructs (one entry per
    functional category, so ``len(omic_sizes) == num_tokens``).
    ``official_compat=True`` reproduces the official forward, which applies the first
    cross-attention block in both CAB rounds (the second block exists but is unused).

    Ablations (RQ2; each switch off changes one thing, the defaults are the paper's model):
    ``reconstruction=False`` computes no reconstruction (CAB's tokens are not taught by
    genomics: the training loss is the NLL alone); ``genome_edges=False`` builds the
    hyperedges from the morphology attention only (no genome-informed top-k weights);
    ``hypergraph=False`` replaces the hypergraph aggregation by attention pooling (the
    hyperedge weights' average of the patch features, without the hyperedge MLP).
    """

    omic_sizes: tuple[int, ...] = (100, 200, 300, 400, 500, 600)
    input_dim: int = 1024
    width: int = 512
    num_tokens: int = 6
    heads: int = 4
    dim_head: int = 128
    ratio: float = 0.2
    dropout: float = 0.25
    n_bins: int = 4
    gate_dim: int = 256
    compress_dim: int = 256
    ffn_mult: int = 4
    official_compat: bool = False
    reconstruction: bool = True
    genome_edges: bool = True
    hypergraph: bool = True

    def __post_init__(self) -> None:
        self.omic_sizes = tuple(int(s) for s in self.omic_sizes)
        if len(self.omic_sizes) != self.num_tokens:
            raise ArgumentError(
                f"omic_sizes has {len(self.omic_sizes)} entries but num_tokens is "
                f"{self.num_tokens}: give one reconstruction size per token"
            )
        if any(s < 1 for s in self.omic_sizes):
            raise ArgumentError(f"every omic size must be >= 1, got {self.omic_sizes}")
        if self.heads * self.dim_head != self.width:
            raise ArgumentError(
                f"heads x dim_head ({self.heads} x {self.dim_head}) must equal width "
                f"({self.width})"
            )
        if not 0.0 < self.ratio <= 1.0:
            raise ArgumentError(f"ratio must be in (0, 1], got {self.ratio}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["omic_sizes"] = list(self.omic_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GHANetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ArgumentError(f"unknown GHANetConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class BatchOutput:
    """Model outputs for B bags (padding positions hold zero attention).

    hazards, survival, logits: (B, K); risk: (B,) = -sum(survival) as the paper ranks
    patients; reconstructed: one (B, size_i) tensor per category; morphology_attention:
    (B, N); genome_attention and similarity: (B, T, N).
    """

    hazards: Tensor
    survival: Tensor
    risk: Tensor
    logits: Tensor
    reconstructed: list[Tensor] = field(default_factory=list)
    morphology_attention: Tensor | None = None
    genome_attention: Tensor | None = None
    similarity: Tensor | None = None
    attention: dict[str, Tensor] | None = None

    def bag(self, i: int, n: int | None = None) -> BagOutput:
        """The outputs of bag ``i``, attentions cut to its first ``n`` patches."""

        def cut(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            t = t[i]
            return t[..., :n] if n is not None else t

        return BagOutput(
            hazards=self.hazards[i],
            survival=self.survival[i],
            risk=self.risk[i],
            logits=self.logits[i],
            reconstructed=[r[i] for r in self.reconstructed],
            morphology_attention=cut(self.morphology_attention),
            genome_attention=cut(self.genome_attention),
            similarity=cut(self.similarity),
            attention=None if self.attention is None
            else {k: v[i] for k, v in self.attention.items()},
        )


@dataclass
class BagOutput:
    """Outputs for one bag of N patches: hazards/survival/logits (K,), risk (),
    reconstructed [(size_i,)], morphology_attention (N,), genome_attention (T, N),
    similarity (T, N); attention: a comparison model's own attention maps by name (see
    :mod:`napari_ghanet.models.official_mil`)."""

    hazards: Tensor
    survival: Tensor
    risk: Tensor
    logits: Tensor
    reconstructed: list[Tensor] = field(default_factory=list)
    morphology_attention: Tensor | None = None
    genome_attention: Tensor | None = None
    similarity: Tensor | None = None
    attention: dict[str, Tensor] | None = None


def survival_from_logits(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Discrete-time survival head: logits (B, K) -> hazards, survival S(k), risk.

    hazards = sigmoid(logits) are the conditional probabilities of the event in bin k;
    S = cumprod(1 - hazards); risk = -sum_k S(k) (higher = worse).
    """
    hazards = torch.sigmoid(logits)
    survival = torch.cumprod(1 - hazards, dim=-1)
    risk = -survival.sum(dim=-1)
    return hazards, survival, risk


class SurvivalHeadMixin:
    """Shared helper for models with a K-bin survival head."""

    def _survival_output(self, logits: Tensor, **extra) -> BatchOutput:
        hazards, survival, risk = survival_from_logits(logits)
        return BatchOutput(hazards=hazards, survival=survival, risk=risk, logits=logits, **extra)


def valid_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """Check bags x (B, N, D) and return their bool mask (B, N) (all True when None)."""
    if x.dim() != 3:
        raise ArgumentError(f"expected a batch of bags of shape (B, N, D), got {tuple(x.shape)}")
    b, n, _ = x.shape
    if n == 0:
        raise ArgumentError("empty bag: a slide needs at least one patch to be scored")
    if mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=x.device)
    if mask.shape != (b, n):
        raise ArgumentError(f"mask shape {tuple(mask.shape)} does not match bags {(b, n)}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        idx = torch.nonzero(empty).flatten().tolist()
        raise ArgumentError(f"empty bag(s) at batch index {idx}: every bag needs a patch")
    return mask


class Attention(nn.Module):
    """Multi-head attention of queries (B, T, W) over a context (B, N, W).

    Returns the output (B, T, W) and the scaled logits (B, H, T, N). Context positions
    outside ``mask`` (B, N) get no weight. Memory is O(T x N): the queries are tokens,
    never patches, so there is no N x N matrix.
    """

    def __init__(self, width: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_k = nn.Linear(width, inner, bias=False)
        self.to_v = nn.Linear(width, inner, bias=False)
        self.to_out = nn.Linear(inner, width)
        self.dropout = nn.Dropout(dropout)

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)  # (B, H, n, d)

    def forward(
        self, query: Tensor, context: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        q = self._split(self.to_q(query))
        k = self._split(self.to_k(context))
        v = self._split(self.to_v(context))
        sim = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, H, T, N)
        logits = sim
        if mask is not None:
            logits = sim.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = self.dropout(logits.softmax(dim=-1))
        out = torch.matmul(attn, v)  # (B, H, T, d)
        b, h, t, d = out.shape
        out = out.transpose(1, 2).reshape(b, t, h * d)
        return self.to_out(out), sim


class GEGLUFeedForward(nn.Module):
    """Linear -> GEGLU gate -> Linear -> dropout (the transformer block's MLP)."""

    def __init__(self, width: int, mult: int, dropout: float):
        super().__init__()
        self.proj_in = nn.Linear(width, width * mult * 2)
        self.proj_out = nn.Linear(width * mult, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.dropout(self.proj_out(h * F.gelu(gate)))


class GatedAttention(nn.Module):
    """Gated attention scores (Ilse et al.): tanh(W_a h) * sigmoid(W_b h) -> score.

    (B, N, W) -> (B, N) unnormalised logits.
    """

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.tanh_branch = nn.Linear(width, hidden)
        self.sigmoid_branch = nn.Linear(width, hidden)
        self.score = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        a = self.dropout(torch.tanh(self.tanh_branch(h)))
        b = self.dropout(torch.sigmoid(self.sigmoid_branch(h)))
        return self.score(a * b).squeeze(-1)


class HyperAttention(nn.Module):
    """Hypergraph aggregation: hyperedge features from weighted patch averages.

    ``G`` (B, T, N) holds each hyperedge's weights over the patches (rows sum to 1);
    ``x`` (B, N, W) the patch features. Returns (B, T, W).
    """

    def __init__(self, width: int):
        super().__init__()
        self.linear1 = nn.Linear(width, width)
        self.linear2 = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, G: Tensor) -> Tensor:
        pooled = torch.matmul(G, x)
        h = F.relu(self.norm1(self.linear1(pooled)))
        h = F.relu(self.norm2(self.linear2(h)))
        return h + pooled


class CrossModalAssociatingBranch(nn.Module):
    """CAB: tokens cross-attend over the patches and reconstruct genomic profiles."""

    def __init__(self, cfg: GHANetConfig):
        super().__init__()
        w = cfg.width
        self.official_compat = cfg.official_compat
        self.reconstruction = cfg.reconstruction
        self.patch_proj = nn.Sequential(nn.Linear(cfg.input_dim, w), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.tokens = nn.Parameter(torch.randn(1, cfg.num_tokens, w))
        self.cross_attn = nn.ModuleList(
            [Attention(w, cfg.heads, cfg.dim_head, cfg.dropout) for _ in range(2)]
        )
        self.ffn = nn.ModuleList([GEGLUFeedForward(w, cfg.ffn_mult, cfg.dropout) for _ in range(2)])
        self.norm_query1 = nn.LayerNorm(w)
        self.norm_context = nn.LayerNorm(w)
        self.norm_ffn1 = nn.LayerNorm(w)
        self.norm_query2 = nn.LayerNorm(w)
        self.norm_ffn2 = nn.LayerNorm(w)
        self.norm_out = nn.LayerNorm(w)
        self.reconstruct = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(w, w),
                    nn.LayerNorm(w),
                    nn.ELU(),
                    nn.Dropout(cfg.dropout),
                    nn.Linear(w, size),
                )
                for size in cfg.omic_sizes
            ]
        )

    @property
    def second_attention(self) -> Attention:
        """The cross-attention block of the second round (whose logits are the similarity)."""
        return self.cross_attn[0] if self.official_compat else self.cross_attn[1]

    def context(self, x: Tensor) -> Tensor:
        """Patch features x (B, N, D) -> the normalised context the tokens attend (B, N, W)."""
        return self.norm_context(self.patch_proj(x))

    def second_query(self, context: Tensor, mask: Tensor) -> Tensor:
        """The second round's queries (B, T, W), after the first round over ``context``."""
        tokens = self.tokens.expand(context.shape[0], -1, -1)
        h, _ = self.cross_attn[0](self.norm_query1(tokens), context, mask)
        h = self.ffn[0](self.norm_ffn1(h)) + h
        return self.norm_query2(tokens + h)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """x (B, N, D), mask (B, N) -> (reconstructed [(B, size_i)], sim (B, T, N), tokens (B, T, W))."""
        context = self.context(x)
        h, sim = self.second_attention(self.second_query(context, mask), context, mask)
        h = self.ffn[1](self.norm_ffn2(h)) + h
        h = self.norm_out(h)
        reconstructed = (
            [head(h[:, i]) for i, head in enumerate(self.reconstruct)] if self.reconstruction else []
        )
        return reconstructed, sim.mean(dim=1), h


def topk_edge_mask(sim: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """Keep, per token, each bag's top ``max(1, int(n_valid * ratio))`` patches.

    sim (B, T, N) float, mask (B, N) bool -> bool (B, T, N). Ties with the k-th value are
    kept, as in the official code.
    """
    n_valid = mask.sum(dim=1)  # (B,)
    k = torch.clamp((n_valid.to(torch.float64) * ratio).floor().long(), min=1)
    k = torch.minimum(k, n_valid)
    k_max = int(k.max())
    masked = sim.masked_fill(~mask[:, None, :], float("-inf"))
    top = torch.topk(masked, k=k_max, dim=-1).values  # (B, T, k_max)
    idx = (k - 1).view(-1, 1, 1).expand(-1, sim.shape[1], 1)
    threshold = torch.gather(top, -1, idx)  # (B, T, 1)
    return (masked >= threshold) & mask[:, None, :]


class GHANet(SurvivalHeadMixin, nn.Module):
    """G-HANet survival model on WSI patch-feature bags (see module docstring)."""

    def __init__(self, config: GHANetConfig | None = None, **overrides):
        super().__init__()
        cfg = config or GHANetConfig(**overrides)
        if config is not None and overrides:
            cfg = GHANetConfig(**{**config.to_dict(), **overrides})
        self.config = cfg
        w = cfg.width
        self.cab = CrossModalAssociatingBranch(cfg)
        self.patch_proj = nn.Sequential(
            nn.Linear(cfg.input_dim, w), nn.LayerNorm(w), nn.ReLU(), nn.Dropout(cfg.dropout)
        )
        self.gate = GatedAttention(w, cfg.gate_dim)
        self.hyper = HyperAttention(w)
        self.self_attn = Attention(w, cfg.heads, cfg.dim_head, cfg.dropout)
        self.norm_ffn = nn.LayerNorm(w)
        self.ffn = GEGLUFeedForward(w, cfg.ffn_mult, cfg.dropout)
        self.compress = nn.Sequential(
            nn.Linear(w, cfg.compress_dim),
            nn.LayerNorm(cfg.compress_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
        )
        self.classifier = nn.Linear(cfg.num_tokens * cfg.compress_dim, cfg.n_bins)

    @property
    def name(self) -> str:
        return "ghanet"

    def forward(
        self, x: Tensor, mask: Tensor | None = None, omics: Tensor | list[Tensor] | None = None
    ) -> BatchOutput:
        """The trainer's entry point (shared with the baselines). ``omics`` is ignored:
        G-HANet predicts from the WSI alone."""
        return self.forward_batch(x, mask)

    def forward_batch(self, x: Tensor, mask: Tensor | None = None) -> BatchOutput:
        """Padded bags x (B, N, D) with mask (B, N) (True = real patch) -> BatchOutput.

        Each bag is processed as if alone: softmaxes and top-k only see its own patches.
        """
        cfg = self.config
        if x.shape[-1] != cfg.input_dim:
            raise FeaturesError(
                f"patch features have dimension {x.shape[-1]} but the model expects "
                f"{cfg.input_dim}: the features were made with another encoder"
            )
        mask = valid_mask(x, mask)
        reconstructed, sim, cab_tokens = self.cab(x, mask)

        h = self.patch_proj(x)  # (B, N, W)
        gate_logits = self.gate(h).masked_fill(~mask, float("-inf"))  # (B, N)
        morph = gate_logits.softmax(dim=-1)

        edge = topk_edge_mask(sim, mask, cfg.ratio)
        # Non-top patches get a large negative offset (as the official code) rather than
        # -inf so that fp16 autocast cannot produce NaNs; padding is excluded outright.
        genome_logits = (sim + (~edge).to(sim.dtype) * -1e5).masked_fill(
            ~mask[:, None, :], float("-inf")
        )
        # Genome-informed weights guide the hyperedges but are not trained through here.
        genome = genome_logits.softmax(dim=-1).detach()

        if cfg.genome_edges:
            G = (morph[:, None, :] + genome) / 2  # (B, T, N)
        else:  # ablation: every hyperedge is the morphology attention
            G = morph[:, None, :].expand_as(genome)
        # ablation: attention pooling (G's weighted average) instead of the hypergraph MLP
        hyper = self.hyper(h, G) if cfg.hypergraph else torch.matmul(G, h)
        fused = (hyper + cab_tokens) / 2
        fused = self.self_attn(fused, fused)[0] + fused
        fused = self.ffn(self.norm_ffn(fused)) + fused
        logits = self.classifier(self.compress(fused).flatten(1))
        zero = torch.zeros((), dtype=sim.dtype, device=sim.device)
        return self._survival_output(
            logits,
            reconstructed=reconstructed,
            morphology_attention=morph,
            genome_attention=genome,
            similarity=torch.where(mask[:, None, :], sim, zero),
        )

    def forward_bag(self, x: Tensor) -> BagOutput:
        """One bag x (N, D) -> BagOutput with hazards (K,), attentions (N,) and (T, N)."""
        if x.dim() != 2:
            raise ArgumentError(f"expected one bag of shape (N, D), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ArgumentError("empty bag: a slide needs at least one patch to be scored")
        return self.forward_batch(x[None]).bag(0)

    def score_patches(
        self, bag: Tensor, extra: Tensor, chunk: int = 65536
    ) -> tuple[Tensor, Tensor]:
        """Score patches that are not in the bag, in the bag's context.

        G-HANet's per-patch scores are a patch's gated-attention logit (morphology; it
        depends on the patch alone) and its cross-attention similarity to each CAB token
        in the second round (genome; the tokens' queries depend on the whole bag). This
        scores ``extra`` patches exactly as the bag's own patches are scored, without
        letting them change the bag's prediction: the overlapping-stride heatmaps
        (:mod:`napari_ghanet.inference.heatmap`) score the extra patches of a grid shifted
        by a fraction of a patch. Their cost is embedding them: about
        ``1 / (1 - overlap)**2`` times the bag's patches (4x at 50 % overlap, 16x at 75 %);
        the scoring here is one linear pass.

        Parameters
        ----------
        bag : Tensor, shape (N, D)
            The bag's patch features (the model's own grid).
        extra : Tensor, shape (M, D)
            Features of the patches to score (may include the bag's own).
        chunk : int
            Patches scored per pass (bounds memory to ``chunk x width`` floats).

        Returns
        -------
        morphology_logits : Tensor, shape (M,)
            Gated-attention logits; the bag's morphology attention is their softmax over
            the bag, so ``exp(logit - logsumexp(bag logits))`` puts an extra patch on the
            same scale.
        genome_similarity : Tensor, shape (T, M)
            Head-averaged second-round cross-attention logits, as ``BagOutput.similarity``.

        Notes
        -----
        Call in eval mode (dropout off), under ``torch.no_grad()`` for inference.

        Examples
        --------
        >>> model = GHANet(omic_sizes=(3, 4), num_tokens=2, input_dim=8, width=16, heads=2,
        ...                dim_head=8, gate_dim=8, compress_dim=8).eval()
        >>> bag = torch.randn(10, 8)
        >>> with torch.no_grad():
        ...     logits, sim = model.score_patches(bag, torch.randn(5, 8))
        >>> tuple(logits.shape), tuple(sim.shape)
        ((5,), (2, 5))
        """
        cfg = self.config
        for name, t in (("bag", bag), ("extra", extra)):
            if t.dim() != 2 or t.shape[-1] != cfg.input_dim:
                raise ArgumentError(
                    f"{name} must be patch features of shape (n, {cfg.input_dim}), "
                    f"got {tuple(t.shape)}"
                )
        if bag.shape[0] == 0:
            raise ArgumentError("empty bag: a slide needs at least one patch to be scored")
        x = bag[None]
        mask = valid_mask(x, None)
        query = self.cab.second_query(self.cab.context(x), mask)  # (1, T, W)
        attn = self.cab.second_attention
        q = attn._split(attn.to_q(query))  # (1, H, T, d)
        logits, sims = [], []
        for a in range(0, extra.shape[0], max(1, int(chunk))):
            e = extra[a : a + chunk][None]
            k = attn._split(attn.to_k(self.cab.context(e)))  # (1, H, m, d)
            sim = torch.matmul(q, k.transpose(-1, -2)) * attn.scale  # (1, H, T, m)
            sims.append(sim.mean(dim=1)[0])
            logits.append(self.gate(self.patch_proj(e))[0])
        if not logits:
            return extra.new_zeros(0), extra.new_zeros(cfg.num_tokens, 0)
        return torch.cat(logits), torch.cat(sims, dim=1)


# --------------------------------------------------------------------------------------
# Official checkpoints
# --------------------------------------------------------------------------------------

# (official pattern, native replacement); applied in order, first match wins.
_OFFICIAL_KEY_MAP: list[tuple[str, str]] = [
    (r"^recon_net\.tokens$", "cab.tokens"),
    (r"^recon_net\.wsi_net\.0\.", "cab.patch_proj.0."),
    (r"^recon_net\.sig_reconstruct_net\.(\d+)\.", r"cab.reconstruct.\1."),
    (r"^recon_net\.cross_attention(\d)\.to_(q|k)\.0\.", r"cab.cross_attn.\1.to_\2."),
    (r"^recon_net\.cross_attention(\d)\.", r"cab.cross_attn.\1."),
    (r"^recon_net\.ffn(\d)\.net\.0\.", r"cab.ffn.\1.proj_in."),
    (r"^recon_net\.ffn(\d)\.net\.2\.", r"cab.ffn.\1.proj_out."),
    (r"^recon_net\.ln_1\.", "cab.norm_query1."),
    (r"^recon_net\.ln_2\.", "cab.norm_context."),
    (r"^recon_net\.ln_3\.", "cab.norm_ffn1."),
    (r"^recon_net\.ln_4\.", "cab.norm_query2."),
    (r"^recon_net\.ln_5\.", "cab.norm_ffn2."),
    (r"^recon_net\.ln_6\.", "cab.norm_out."),
    (r"^wsi_net\.", "patch_proj."),
    (r"^gate\.attention_a\.0\.", "gate.tanh_branch."),
    (r"^gate\.attention_b\.0\.", "gate.sigmoid_branch."),
    (r"^gate\.attention_c\.", "gate.score."),
    (r"^hyperconv1\.ln(\d)\.", r"hyper.norm\1."),
    (r"^hyperconv1\.", "hyper."),
    (r"^attention\.to_(q|k)\.0\.", r"self_attn.to_\1."),
    (r"^attention\.", "self_attn."),
    (r"^ffn\.net\.0\.", "ffn.proj_in."),
    (r"^ffn\.net\.2\.", "ffn.proj_out."),
    (r"^ln1\.", "norm_ffn."),
    (r"^butter\.", "compress."),
    (r"^classifier\.", "classifier."),
]


def official_key_to_native(key: str) -> str | None:
    """Map a state_dict key of the official ``G_HANet_Surv`` to this module's name."""
    key = key.removeprefix("module.")
    for pattern, repl in _OFFICIAL_KEY_MAP:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def _infer_official_config(state: dict[str, Tensor]) -> GHANetConfig:
    sizes = []
    i = 0
    while f"recon_net.sig_reconstruct_net.{i}.4.weight" in state:
        sizes.append(int(state[f"recon_net.sig_reconstruct_net.{i}.4.weight"].shape[0]))
        i += 1
    if not sizes:
        raise CheckpointError(
            "no 'recon_net.sig_reconstruct_net.<i>.4.weight' keys: this is not a G-HANet "
            "(G_HANet_Surv) state_dict"
        )
    try:
        tokens = state["recon_net.tokens"]
        wsi = state["wsi_net.0.weight"]
        classifier = state["classifier.weight"]
        gate = state["gate.attention_a.0.weight"]
        compress = state["butter.0.weight"]
        ffn_in = state["ffn.net.0.weight"]
    except KeyError as e:
        raise CheckpointError(f"official checkpoint lacks the key {e.args[0]!r}") from None
    width = int(tokens.shape[-1])
    heads = 4  # the official code fixes 4 heads; head count is not stored in the weights
    return GHANetConfig(
        omic_sizes=tuple(sizes),
        input_dim=int(wsi.shape[1]),
        width=width,
        num_tokens=int(tokens.shape[1]),
        heads=heads,
        dim_head=width // heads,
        n_bins=int(classifier.shape[0]),
        gate_dim=int(gate.shape[0]),
        compress_dim=int(compress.shape[0]),
        ffn_mult=int(ffn_in.shape[0]) // (2 * width),
        official_compat=True,
    )


def load_official_checkpoint(
    path: str | Path, *, ratio: float = 0.2, map_location: str = "cpu"
) -> GHANet:
    """Load a state_dict saved by the paper's official code into an eval-mode GHANet.

    Category sizes, widths and the number of bins are inferred from the weights; the
    result runs in official-compatible mode (first cross-attention block used in both
    CAB rounds), which reproduces the official forward exactly. Loading uses
    ``torch.load(weights_only=True)``: no code from the file is ever executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many error types for bad files
        raise CheckpointError(
            f"{path} is not a loadable PyTorch state_dict ({type(e).__name__}: {e})"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    cfg = _infer_official_config(state)
    cfg.ratio = ratio
    model = GHANet(cfg)
    native: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        new = official_key_to_native(key)
        if new is None:
            unexpected.append(key)
        else:
            native[new] = value
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in native)
    unexpected += sorted(k for k in native if k not in expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match G-HANet: missing keys {missing or 'none'}; "
            f"unexpected keys {unexpected or 'none'}"
        )
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in native.items()
        if v.shape != expected[k].shape
    ]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch for " + "; ".join(bad))
    model.load_state_dict(native)
    return model.eval()
