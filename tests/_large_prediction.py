"""A prediction of a few thousand patches over a whole-slide extent, for the tests of the
result layers and exports at size (no slide is read: the features are random, the model
is a small random-weight G-HANet run by ``model_stage``, and ``assemble_stage`` makes
the Prediction, as the pipeline does).

Geometry: level 0 at ``MPP`` um/px, patches of ``PATCH0`` level-0 px on a regular grid whose
origin is offset from the slide's corner by ``ORIGIN`` (x, y) level-0 px; the tissue is a
lobed region of the grid; the tissue mask has one pixel per ``MASK_DOWN`` level-0 px.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from _plugin_helpers import MORPHOMETRIC_DIM, make_bundle
from napari_ghanet.inference.stages import SlideFeatures, SlideRun, assemble_stage, model_stage
from napari_ghanet.io.features import PatchFeatures
from napari_ghanet.models.bundle import load_bundle
from napari_ghanet.preprocessing.tissue import TissueMask

MPP, PATCH0, MASK_DOWN = 0.25, 512, 64
ORIGIN = (3 * PATCH0 + 128, 2 * PATCH0 + 64)  # (x, y): the grid does not start at 0


def lobed_cells(rows: int, cols: int, n: int, seed: int = 0) -> np.ndarray:
    """bool (rows, cols): the ``n`` cells where a smooth random field plus a central
    bump is highest (an irregular tissue outline with holes and islands)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    bump = -(((yy - rows / 2) / rows) ** 2 + ((xx - cols / 2) / cols) ** 2)
    field = 6 * bump + ndi.gaussian_filter(rng.standard_normal((rows, cols)), 3)
    cells = np.zeros(rows * cols, bool)
    cells[np.argsort(-field.ravel(), kind="stable")[:n]] = True
    return cells.reshape(rows, cols)


def _slide_run(name: str, cells: np.ndarray, flagged: np.ndarray, feats: np.ndarray):
    rows, cols = cells.shape
    r, c = np.nonzero(cells & ~flagged)
    coords = np.stack([c, r], axis=1).astype(np.int64) * PATCH0 + np.array(ORIGIN)
    fr, fc = np.nonzero(flagged)
    qc_coords = np.stack([fc, fr], axis=1).astype(np.int64) * PATCH0 + np.array(ORIGIN)
    reasons = np.array(["pen", "blur", "fold"])[np.arange(len(fr)) % 3].astype("<U4")
    w0 = ORIGIN[0] + (cols + 2) * PATCH0
    h0 = ORIGIN[1] + (rows + 2) * PATCH0
    mh, mw = -(-h0 // MASK_DOWN), -(-w0 // MASK_DOWN)
    mask = np.zeros((mh, mw), bool)
    for y, x in coords[:, ::-1] // MASK_DOWN:
        mask[y : y + PATCH0 // MASK_DOWN, x : x + PATCH0 // MASK_DOWN] = True
    return SlideRun(
        info={"name": name, "path": None, "dimensions_level0": (int(w0), int(h0)),
              "mpp": MPP, "mpp_source": "given"},
        mask=TissueMask(mask, float(MASK_DOWN), MPP * MASK_DOWN, 0.1),
        grid=SimpleNamespace(patch_size_level0=PATCH0, step_level0=PATCH0),
        features=SlideFeatures(PatchFeatures(feats[: len(coords)], coords), cached=True),
        qc_coords=qc_coords,
        qc_reasons=reasons,
    )


def large_prediction(tmp: Path, n_patches: int = 3000, *, slides: int = 1,
                     categories: list[dict] | None = None, seed: int = 0):
    """A Prediction of about ``n_patches`` patches per slide (2 % more flagged by QC) over
    a grid of about 1.6x as many cells; ``slides`` slides scored as one bag."""
    kw = {"categories": categories} if categories is not None else {}
    bundle = load_bundle(make_bundle(tmp / f"model-{seed}.safetensors", seed=seed, **kw))
    rng = np.random.default_rng(seed)
    runs = []
    for k in range(slides):
        n_flag = max(3, n_patches // 50)
        cols = int(np.ceil(np.sqrt(1.6 * (n_patches + n_flag) * 1.3)))
        rows = int(np.ceil(1.6 * (n_patches + n_flag) / cols))
        cells = lobed_cells(rows, cols, n_patches + n_flag, seed + k)
        flagged = np.zeros_like(cells)
        r, c = np.nonzero(cells)
        pick = rng.choice(len(r), n_flag, replace=False)
        flagged[r[pick], c[pick]] = True
        feats = rng.standard_normal((n_patches, MORPHOMETRIC_DIM)).astype(np.float32)
        runs.append(_slide_run(f"large-{k}.svs", cells, flagged, feats))
    bag = np.concatenate([r.features.features.features for r in runs])
    outputs = model_stage(bundle, bag, device="cpu")
    settings = {"device": "cpu", "patch_px": 256, "target_mpp": 0.5, "heatmap_overlap": 0.0}
    return assemble_stage(bundle, outputs, runs, settings=settings, timings={},
                          warnings=[], top_k=10)
