"""The model stages: a bundle on a bag of features (:func:`model_stage`), patches scored
in a bag's context (:func:`score_patches_stage`) and smooth heatmaps from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_ghanet.inference.heatmap import Heatmap, overlap_factor, overlap_heatmap
from napari_ghanet.inference.stages.run import Clock, ProgressCallback, report
from napari_ghanet.inference.stages.slide import SlideRun
from napari_ghanet.models.bundle import ModelBundle


@dataclass
class ModelOutputs:
    """A model's outputs on one bag of N patches, as numpy (T categories, K bins).

    risk: float; hazards, survival float32 (K,); morphology_attention float32 (N,);
    genome_attention float32 (T, N); similarity float (T, N) or None; reconstructed:
    T float32 arrays, one per category's genes.
    """

    risk: float
    hazards: np.ndarray
    survival: np.ndarray
    morphology_attention: np.ndarray
    genome_attention: np.ndarray
    similarity: np.ndarray | None
    reconstructed: list[np.ndarray]


def model_stage(
    bundle: ModelBundle,
    features: np.ndarray,
    *,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> ModelOutputs:
    """Run the bundle's model on a bag of patch features, float32 (N, D), on ``device``
    (the model returns to its own device afterwards)."""
    import torch

    report(progress, "model", 0, 1)
    clock = Clock(timings)
    model = bundle.model
    model_device = next(model.parameters()).device
    try:
        if str(model_device) != device:
            model.to(device)
        x = torch.from_numpy(np.ascontiguousarray(features)).to(device)
        with torch.inference_mode():
            out = model.forward_bag(x)
    finally:
        if str(model_device) != device:
            model.to(model_device)

    def npy(t) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    result = ModelOutputs(
        risk=float(npy(out.risk)),
        hazards=npy(out.hazards).astype(np.float32),
        survival=npy(out.survival).astype(np.float32),
        morphology_attention=npy(out.morphology_attention).astype(np.float32),
        genome_attention=npy(out.genome_attention).astype(np.float32),
        similarity=npy(out.similarity) if out.similarity is not None else None,
        reconstructed=[npy(r).astype(np.float32).ravel() for r in out.reconstructed],
    )
    report(progress, "model", 1, 1)
    clock.lap("model")
    return result


def patch_scorers(model: Any) -> list[Any] | None:
    """The G-HANet models whose ``score_patches`` score patches outside a bag (the
    members of an ensemble); None for models without it (baselines)."""
    if callable(getattr(model, "score_patches", None)):
        return [model]
    members = getattr(model, "members", None)
    if members is not None and all(callable(getattr(m, "score_patches", None)) for m in members):
        return list(members)
    return None


def score_patches_stage(
    bundle: ModelBundle,
    bag: np.ndarray,
    patches: np.ndarray,
    *,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray] | None:
    """Attention-scale scores of ``patches`` (M, D) in the context of ``bag`` (N, D).

    Returns ``morphology`` float32 (M,) = ``exp(logit - logsumexp(bag logits))`` (for a
    bag patch this is its morphology attention) and ``genome`` float32 (T, M) = each
    category's softmax over the bag of the second-round cross-attention similarity, before
    the top-k cut (a smooth map; the reported genome attention keeps only the top-k
    patches); members of an ensemble are averaged. None for models without
    ``score_patches``.
    """
    import torch

    scorers = patch_scorers(bundle.model)
    if scorers is None:
        return None
    b = torch.from_numpy(np.ascontiguousarray(bag, np.float32))
    x = torch.from_numpy(np.ascontiguousarray(patches, np.float32))
    morph = np.zeros(len(patches), np.float64)
    genome = None
    model_device = next(bundle.model.parameters()).device
    try:
        if str(model_device) != device:
            bundle.model.to(device)
        b, x = b.to(device), x.to(device)
        with torch.inference_mode():
            for m in scorers:
                lb, sb = m.score_patches(b, b)
                lx, sx = m.score_patches(b, x)
                mo = torch.exp(lx - torch.logsumexp(lb, dim=0))
                ge = torch.exp(sx - torch.logsumexp(sb, dim=1, keepdim=True))
                morph += mo.double().cpu().numpy()
                g = ge.double().cpu().numpy()
                genome = g if genome is None else genome + g
    finally:
        if str(model_device) != device:
            bundle.model.to(model_device)
    n = len(scorers)
    return (morph / n).astype(np.float32), (genome / n).astype(np.float32)


def heatmap_stage(
    bundle: ModelBundle,
    bag: np.ndarray,
    runs: Sequence[SlideRun],
    overlap: float,
    *,
    device: str = "cpu",
    timings: dict[str, float] | None = None,
) -> list[dict[str, Heatmap]]:
    """One dict of smooth attention maps per slide ("morphology" and each category
    name): the bag's patches and the slide's overlapping extra patches (``run.extra``),
    all scored by :func:`score_patches_stage`, averaged per cell of pitch
    ``patch * (1 - overlap)`` (:func:`~napari_ghanet.inference.heatmap.overlap_heatmap`).
    Empty dicts when ``overlap`` is 0 or the model cannot score patches."""
    clock = Clock(timings)
    out: list[dict[str, Heatmap]] = []
    if not overlap_factor(overlap) > 1:
        return [{} for _ in runs]
    names = bundle.category_names
    for run in runs:
        own = run.features.features
        parts = [own.features]
        coords = [np.asarray(own.coords, np.int64)]
        if run.extra is not None and len(run.extra):
            parts.append(run.extra.features)
            coords.append(np.asarray(run.extra.coords, np.int64))
        feats = np.concatenate(parts)
        scored = score_patches_stage(bundle, bag, feats, device=device)
        if scored is None or len(feats) == 0:
            out.append({})
            continue
        morph, genome = scored
        xy = np.concatenate(coords)
        size = int(run.grid.patch_size_level0)
        maps = {"morphology": (morph, "morphology")}
        for t in range(genome.shape[0]):
            name = names[t] if t < len(names) else f"category {t + 1}"
            maps[name] = (genome[t], name)
        out.append({
            key: replace(overlap_heatmap(xy, size, sc, overlap), coords=xy, scores=sc)
            for key, (sc, _n) in maps.items()
        })
    clock.lap("heatmap")
    return out
