"""Losses of G-HANet and its baselines.

Conventions follow the paper's code: ``y`` is the discrete survival bin (0..K-1, long),
``c`` the censorship indicator (1 = censored, 0 = event observed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_ghanet.errors import ArgumentError

__all__ = ["nll_loss", "sce_loss", "mse_loss", "reconstruction_loss", "ghanet_loss"]


def nll_loss(
    hazards: Tensor,
    survival: Tensor | None,
    y: Tensor,
    c: Tensor,
    alpha: float = 0.0,
    eps: float = 1e-7,
) -> Tensor:
    """Negative log-likelihood of discrete-time survival, averaged over the batch.

    hazards, survival: (B, K); y: (B,) bin index; c: (B,) censorship (1 = censored).
    An uncensored patient contributes -log S(y-1) - log h(y); a censored one -log S(y),
    with S(-1) = 1. ``alpha`` up-weights the uncensored term:
    loss = (1 - alpha) * nll + alpha * uncensored_nll.
    """
    if hazards.dim() == 1:
        hazards = hazards[None]
        survival = None if survival is None else survival[None]
    b = hazards.shape[0]
    y = y.reshape(b, 1).long()
    c = c.reshape(b, 1).to(hazards.dtype)
    if survival is None:
        survival = torch.cumprod(1 - hazards, dim=1)
    s_padded = torch.cat([torch.ones_like(c), survival], dim=1)
    s_before = torch.gather(s_padded, 1, y).clamp(min=eps)
    h_at = torch.gather(hazards, 1, y).clamp(min=eps)
    s_at = torch.gather(s_padded, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_before) + torch.log(h_at))
    censored = -c * torch.log(s_at)
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def sce_loss(x: Tensor, y: Tensor, alpha: float = 3.0) -> Tensor:
    """Scaled cosine error (1 - cos(x, y))^alpha over the last axis, averaged."""
    x = F.normalize(x, p=2, dim=-1)
    y = F.normalize(y, p=2, dim=-1)
    return (1 - (x * y).sum(dim=-1)).pow(alpha).mean()


def mse_loss(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error over all elements."""
    return F.mse_loss(x, y)


def reconstruction_loss(
    reconstructed: Sequence[Tensor], targets: Sequence[Tensor], sce_alpha: float = 3.0
) -> tuple[Tensor, Tensor]:
    """(SCE, MSE) each summed over the categories. Tensors are (B, size_i) or (size_i,)."""
    if len(reconstructed) != len(targets):
        raise ArgumentError(
            f"{len(reconstructed)} reconstructed categories but {len(targets)} targets"
        )
    sce = sum(sce_loss(r, t.to(r.dtype), sce_alpha) for r, t in zip(reconstructed, targets))
    mse = sum(mse_loss(r, t.to(r.dtype)) for r, t in zip(reconstructed, targets))
    return sce, mse


def ghanet_loss(
    hazards: Tensor,
    survival: Tensor,
    reconstructed: Sequence[Tensor],
    targets: Sequence[Tensor],
    y: Tensor,
    c: Tensor,
    alpha: float = 0.0,
    recon_weight: float = 0.3,
    sce_alpha: float = 3.0,
) -> tuple[Tensor, dict[str, float]]:
    """The paper's total loss NLL + recon_weight * (SCE + MSE) and its parts."""
    nll = nll_loss(hazards, survival, y, c, alpha=alpha)
    sce, mse = reconstruction_loss(reconstructed, targets, sce_alpha)
    total = nll + recon_weight * (sce + mse)
    parts = {"nll": float(nll.detach()), "sce": float(sce.detach()), "mse": float(mse.detach())}
    return total, parts
