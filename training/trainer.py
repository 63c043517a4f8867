"""Training loop shared by G-HANet and the baselines.

Bags are trained in padded micro-batches with masks through the model's batched
``forward(x, mask, omics)``, never one bag per step. Gradients are accumulated over
``accumulation`` bags (the paper's 32) and each optimizer step uses their mean; when the
number of bags is not a multiple of ``accumulation`` the remainder is stepped at the end
of the epoch, not carried into the next. Within an accumulation group bags are sorted by
size before cutting micro-batches, so padding stays small and the step is unchanged.
Random draws (patient order, patch sampling) come from one seeded generator and do not
depend on the micro-batch size, so ``batch_size=1`` reproduces the one-bag-per-step loop.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from napari_ghanet.training.metrics import harrell_c_index
from torch import nn

from napari_ghanet.device import resolve_device
from napari_ghanet.errors import ArgumentError, Cancelled, CohortError
from napari_ghanet.models.baselines import model_inputs
from napari_ghanet.models.losses import ghanet_loss, nll_loss
from napari_ghanet.options.training import TrainOptions

__all__ = [
    "TrainConfig",
    "SurvivalData",
    "TrainingCancelled",
    "FitResult",
    "resolve_device",
    "seed_everything",
    "train_epoch",
    "predict",
    "fit",
]


TrainingCancelled = Cancelled  # the package's one cancellation type


#: the optimisation recipe: declared once, with its defaults (the paper's), units, ranges
#: and help, as :class:`napari_ghanet.options.TrainOptions` (a frozen, validated group;
#: ``dataclasses.replace`` / ``.replace(...)`` makes a changed copy)
TrainConfig = TrainOptions


@dataclass
class SurvivalData:
    """Patients of one set (train, test, inner validation) ready for the trainer.

    y: int64 (n,) survival bin; c: int64 (n,) censorship (1 = censored); times: float64
    (n,) months; omics: float32 (n, G) standardised genomics or None; targets: per
    category float32 (n, size_i) reconstruction targets or None; bag(i): float32 (N, D)
    patch features of patient i (local index) or None for genomics-only models.
    """

    ids: list[str]
    y: np.ndarray
    c: np.ndarray
    times: np.ndarray
    omics: np.ndarray | None = None
    targets: list[np.ndarray] | None = None
    bag: Callable[[int], np.ndarray] | None = None
    sizes: np.ndarray | None = None  # patches per bag, for batching; filled lazily
    clusters: Callable[[int], np.ndarray] | None = None  # int64 (N,) phenotype ids per bag

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> SurvivalData:
        idx = np.asarray(idx, np.int64)
        parent = self.bag
        return SurvivalData(
            ids=[self.ids[i] for i in idx],
            y=self.y[idx],
            c=self.c[idx],
            times=self.times[idx],
            omics=None if self.omics is None else self.omics[idx],
            targets=None if self.targets is None else [t[idx] for t in self.targets],
            bag=None if parent is None else (lambda i, _p=parent, _ix=idx: _p(int(_ix[i]))),
            sizes=None if self.sizes is None else self.sizes[idx],
            clusters=None if self.clusters is None
            else (lambda i, _p=self.clusters, _ix=idx: _p(int(_ix[i]))),
        )


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    selected_epoch: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _bag_sizes(data: SurvivalData) -> np.ndarray:
    if data.sizes is None:
        data.sizes = np.array([len(data.bag(i)) for i in range(len(data))], np.int64)
    return data.sizes


def _collate(
    data: SurvivalData,
    idx: list[int],
    uses: tuple[str, ...],
    device: torch.device,
    patch_index: dict[int, np.ndarray] | None = None,
) -> dict:
    """Micro-batch tensors: x (B, Nmax, D) zero-padded + mask (B, Nmax), omics (B, G),
    targets [(B, size_i)], y (B,), c (B,); cluster_id (B, Nmax) (-1 = padding) for
    models that read phenotype clusters."""
    batch: dict = {
        "y": torch.as_tensor(data.y[idx], device=device),
        "c": torch.as_tensor(data.c[idx], dtype=torch.float32, device=device),
        "x": None,
        "mask": None,
        "omics": None,
        "targets": None,
        "cluster_id": None,
    }
    if "wsi" in uses:
        bags = []
        for i in idx:
            b = data.bag(i)
            if patch_index is not None and i in patch_index:
                b = b[patch_index[i]]
            bags.append(b)
        n_max = max(len(b) for b in bags)
        x = np.zeros((len(bags), n_max, bags[0].shape[1]), np.float32)
        mask = np.zeros((len(bags), n_max), bool)
        for k, b in enumerate(bags):
            x[k, : len(b)] = b
            mask[k, : len(b)] = True
        batch["x"] = torch.from_numpy(x).to(device, non_blocking=True)
        batch["mask"] = torch.from_numpy(mask).to(device, non_blocking=True)
    if "clusters" in uses:
        if data.clusters is None:
            raise CohortError("this model needs phenotype clusters but the data carries none: "
                              "cluster the patches first")
        ids = np.full((len(idx), batch["x"].shape[1]), -1, np.int64)
        for k, i in enumerate(idx):
            cl = data.clusters(i)
            if patch_index is not None and i in patch_index:
                cl = cl[patch_index[i]]
            ids[k, : len(cl)] = cl
        batch["cluster_id"] = torch.from_numpy(ids).to(device)
    if "omics" in uses:
        if data.omics is None:
            raise CohortError("this model needs genomics but the data carries none: "
                              "give the cohort a genomics table")
        batch["omics"] = torch.from_numpy(data.omics[idx]).to(device)
    if data.targets is not None:
        batch["targets"] = [torch.from_numpy(t[idx]).to(device) for t in data.targets]
    return batch


def _autocast(device: torch.device, cfg: TrainConfig):
    if cfg.amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def _forward(model: nn.Module, batch: dict):
    if batch["cluster_id"] is not None:
        return model(batch["x"], mask=batch["mask"], omics=batch["omics"],
                     cluster_id=batch["cluster_id"])
    return model(batch["x"], mask=batch["mask"], omics=batch["omics"])


def _loss(out, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    hazards, survival = out.hazards.float(), out.survival.float()
    if out.reconstructed and batch["targets"] is not None:
        return ghanet_loss(
            hazards,
            survival,
            [r.float() for r in out.reconstructed],
            batch["targets"],
            batch["y"],
            batch["c"],
            alpha=cfg.alpha_surv,
            recon_weight=cfg.recon_weight,
        )
    nll = nll_loss(hazards, survival, batch["y"], batch["c"], alpha=cfg.alpha_surv)
    return nll, {"nll": float(nll.detach())}


def _micro_batches(
    group: np.ndarray, sizes: np.ndarray | None, batch_size: int
) -> list[list[int]]:
    if sizes is not None:  # largest first: similar sizes share a batch, less padding
        group = group[np.argsort(-sizes[group], kind="stable")]
    return [group[k : k + batch_size].tolist() for k in range(0, len(group), batch_size)]


def train_epoch(
    model: nn.Module,
    data: SurvivalData,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    rng: np.random.Generator,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """One pass over ``data`` in random order. Returns mean loss parts per bag and the
    (dropout-on, informative only) training c-index."""
    model.train()
    uses = model_inputs(model)
    wsi = "wsi" in uses
    order = rng.permutation(len(data))
    sizes = _bag_sizes(data) if wsi else None
    patch_index: dict[int, np.ndarray] = {}
    if wsi and cfg.max_patches:
        for i in order:  # drawn in visiting order: independent of batch_size
            if sizes[i] > cfg.max_patches:
                patch_index[int(i)] = np.sort(rng.choice(sizes[i], cfg.max_patches, replace=False))
    eff_sizes = None
    if wsi:
        eff_sizes = np.minimum(sizes, cfg.max_patches) if cfg.max_patches else sizes
    batch_size = cfg.batch_size if wsi else cfg.accumulation
    totals: dict[str, float] = {}
    risks = np.zeros(len(data))
    optimizer.zero_grad(set_to_none=True)
    for start in range(0, len(order), cfg.accumulation):
        group = order[start : start + cfg.accumulation]
        for mb in _micro_batches(group, eff_sizes, batch_size):
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training cancelled")
            batch = _collate(data, mb, uses, device, patch_index)
            with _autocast(device, cfg):
                out = _forward(model, batch)
            loss, parts = _loss(out, batch, cfg)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss ({float(loss)}); lower the learning rate or "
                    "check the inputs for extreme values"
                )
            scaled = loss * (len(mb) / len(group))
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            risks[mb] = out.risk.detach().float().cpu().numpy()
            parts["loss"] = float(loss.detach())
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v * len(mb)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stats = {f"train_{k}": v / len(data) for k, v in totals.items()}
    stats["train_c_index"] = _c_index_or_none(data.times, data.c == 0, risks)
    return stats


def _c_index_or_none(times, events, risks) -> float | None:
    try:
        return harrell_c_index(times, events, risks)
    except ValueError:
        return None


@torch.no_grad()
def predict(
    model: nn.Module,
    data: SurvivalData,
    cfg: TrainConfig | None = None,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Eval-mode predictions on whole bags: risk (n,), survival and hazards (n, K),
    and the mean loss (NLL only) per patient. ``device`` defaults to the model's."""
    cfg = cfg or TrainConfig()
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    model.eval()
    uses = model_inputs(model)
    n = len(data)
    risk = np.zeros(n)
    surv = hazards = None
    nll_total = 0.0
    if "wsi" in uses:
        sizes = _bag_sizes(data)
        order = np.argsort(-sizes, kind="stable")
        batches, cur, cur_max = [], [], 0
        for i in order:  # greedy: keep (bags x longest bag) under the token budget
            m = max(cur_max, int(sizes[i]))
            if cur and m * (len(cur) + 1) > cfg.eval_max_tokens:
                batches.append(cur)
                cur, m = [], int(sizes[i])
            cur.append(int(i))
            cur_max = m
        if cur:
            batches.append(cur)
    else:
        batches = [list(range(k, min(k + 256, n))) for k in range(0, n, 256)]
    for mb in batches:
        batch = _collate(data, mb, uses, device)
        with _autocast(device, cfg):
            out = _forward(model, batch)
        s = out.survival.float().cpu().numpy()
        h = out.hazards.float().cpu().numpy()
        if surv is None:
            surv = np.zeros((n, s.shape[1]))
            hazards = np.zeros((n, s.shape[1]))
        surv[mb], hazards[mb] = s, h
        risk[mb] = out.risk.float().cpu().numpy()
        nll_total += float(nll_loss(out.hazards.float(), out.survival.float(), batch["y"], batch["c"])) * len(mb)
    return {"risk": risk, "survival": surv, "hazards": hazards, "nll": nll_total / max(n, 1)}


def baseline_hazards(y: np.ndarray, c: np.ndarray, n_bins: int) -> np.ndarray:
    """Discrete hazard per bin without covariates (the NLL's maximum): events in bin k over
    patients still at risk at its start (censored in bin k counts as surviving it)."""
    y, events = np.asarray(y), np.asarray(c) == 0
    at_risk = np.array([(y >= k).sum() for k in range(n_bins)], float)
    deaths = np.array([((y == k) & events).sum() for k in range(n_bins)], float)
    return np.clip(deaths / np.maximum(at_risk, 1), 1e-3, 1 - 1e-3)


def init_survival_bias(model: nn.Module, data: SurvivalData) -> bool:
    """Set the survival head's bias to the logit of the baseline hazards (see
    TrainConfig.init_hazards). Returns False when the model has no ``classifier`` head."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear) or head.bias is None:
        return False
    h = baseline_hazards(data.y, data.c, head.out_features)
    with torch.no_grad():
        head.bias.copy_(torch.as_tensor(np.log(h / (1 - h)), dtype=head.bias.dtype))
    return True


def fit(
    model: nn.Module,
    train: SurvivalData,
    cfg: TrainConfig,
    monitor: SurvivalData | None = None,
    inner: SurvivalData | None = None,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train ``model`` in place for ``cfg.epochs`` epochs.

    monitor: held-out patients scored after each epoch for the record only (the
    "optimistic" best-epoch figure); they never influence training or selection.
    inner: inner validation patients (carved from the training set); with
    ``cfg.selection == "inner"`` the weights of the epoch with the best inner c-index
    are restored at the end. Otherwise the model is left as after the last epoch.
    """
    if cfg.selection not in ("last", "inner"):
        raise ArgumentError(f"selection must be 'last' or 'inner', got {cfg.selection!r}")
    if cfg.selection == "inner" and inner is None:
        raise ArgumentError("selection 'inner' needs inner validation patients: pass inner=")
    device = resolve_device(cfg.device)
    if cfg.init_hazards:
        init_survival_bias(model, train)
    model.to(device)
    rng = np.random.default_rng(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_scaler = (
        cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    result = FitResult()
    best_inner, best_state = -math.inf, None
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        row = {"epoch": epoch, "epochs": cfg.epochs}
        row.update(train_epoch(model, train, optimizer, cfg, rng, device, scaler, should_stop))
        if inner is not None:
            p = predict(model, inner, cfg, device)
            row["inner_c_index"] = _c_index_or_none(inner.times, inner.c == 0, p["risk"])
            row["inner_nll"] = p["nll"]
            score = row["inner_c_index"] if row["inner_c_index"] is not None else -p["nll"]
            if cfg.selection == "inner" and score > best_inner:
                best_inner, result.selected_epoch = score, epoch
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if monitor is not None:
            p = predict(model, monitor, cfg, device)
            row["test_c_index"] = _c_index_or_none(monitor.times, monitor.c == 0, p["risk"])
            row["test_nll"] = p["nll"]
        row["seconds"] = time.perf_counter() - te
        result.history.append(row)
        if progress is not None:
            progress(row)
    if cfg.selection == "inner":
        model.load_state_dict(best_state)
    else:
        result.selected_epoch = cfg.epochs
    result.seconds = time.perf_counter() - t0
    return result
