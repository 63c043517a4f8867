"""One slide's features written to a file (``ghanet embed``, cohorts, the training
recipe): the grid and feature stages of a prediction, with resume and a one-line outcome."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_ghanet.encoders import (
    PatchEncoder,
    create_encoder,
)
from napari_ghanet.errors import (
    Cancelled,
    GHANetError,
)
from napari_ghanet.inference.distribution import slide_acquisition
from napari_ghanet.inference.stages.run import ProgressCallback
from napari_ghanet.inference.stages.slide import (
    feature_spec,
    features_stage,
    grid_stage,
    open_stage,
)
from napari_ghanet.io.backends.dicomweb import SlideURL
from napari_ghanet.io.dicomweb import is_dicomweb_url
from napari_ghanet.io.features import (
    match_features,
)
from napari_ghanet.options import EmbedOptions, GridOptions, apply


@dataclass
class EmbedOutcome:
    """What :func:`embed_to_file` did with one slide.

    status: "done" (features computed and written), "skipped" (``path`` already held
    features of this slide, encoder and grid) or "failed" (``error`` says why; nothing
    written). n_patches: patches in the file; seconds: wall time; n_skipped: unreadable
    patches left out; rate: patches embedded per second; replaced: why a file already at
    ``path`` was not trusted and was replaced (unreadable, crafted, altered or not signed
    by this user), else None.
    """

    slide: str
    status: str
    n_patches: int = 0
    seconds: float = 0.0
    path: str | None = None
    error: str | None = None
    dim: int = 0
    n_skipped: int = 0
    rate: float = 0.0
    encoder: str = ""
    replaced: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def summary(self) -> str:
        """One line for a terminal, naming the slide."""
        name = Path(self.slide).name
        if self.status == "failed":
            return f"{name}: FAILED: {self.error}"
        if self.status == "skipped":
            return (
                f"{name}: {self.n_patches} patches, {self.dim}-d features already in "
                f"{self.path} (same slide, encoder and grid)"
            )
        skip = f" ({self.n_skipped} unreadable skipped)" if self.n_skipped else ""
        again = " (replaced a file that could not be trusted)" if self.replaced else ""
        return (
            f"{name}: {self.n_patches} patches{skip}, {self.dim}-d {self.encoder} features, "
            f"{self.rate:.1f} patches/s, {self.seconds:.1f} s -> {self.path}{again}"
        )


def embed_to_file(
    slide_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    encoder: PatchEncoder | str,
    *,
    grid: GridOptions | None = None,
    embed: EmbedOptions | None = None,
    encoder_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> EmbedOutcome:
    """Embed one slide's tissue patches into ``out_dir/<slide stem>.h5`` (CLAM layout).

    The same grid and feature stages as a prediction. A file already made from this
    slide with this encoder and grid is kept (status "skipped"); one made otherwise is
    replaced only with ``overwrite``. Failures (unreadable slide, no tissue, unwritable
    folder) come back as status "failed" with the reason, never as an exception;
    cancelling raises :class:`~napari_ghanet.errors.Cancelled`. A plain function of
    picklable arguments (give ``encoder`` as a registry name with ``encoder_kwargs``), so a
    process pool or Dask can run it per slide.

    Parameters
    ----------
    slide_path : path
        The slide file.
    out_dir : path
        Output folder (created).
    encoder : PatchEncoder or str
        An encoder, or its registry name (built with ``encoder_kwargs`` and the weights
        of ``embed``).
    grid : GridOptions, optional
        Level-0 mpp for slides that record none, patch size and resolution (default: the
        encoder's), tissue (:class:`~napari_ghanet.options.GridOptions`).
    embed : EmbedOptions, optional
        Device, CPU engine, batch size, reader threads, compile
        (:class:`~napari_ghanet.options.EmbedOptions`).
    overwrite : bool
        Replace a file made from another slide, encoder or grid.
    **options
        Fields of those groups by name (``batch_size=16``, ``mpp=0.25``), applied to them.
    progress : callable(stage, done, total), optional
    cancel : threading.Event, optional

    Returns
    -------
    EmbedOutcome

    Examples
    --------
    >>> import numpy as np, tempfile, tifffile
    >>> rgb = np.full((512, 512, 3), 240, np.uint8); rgb[128:384, 128:384] = (180, 90, 160)
    >>> tmp = tempfile.mkdtemp()
    >>> tifffile.imwrite(tmp + "/s.tif", rgb, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    >>> kw = dict(patch_px=64, target_mpp=2.0, device="cpu", workers=0)
    >>> out = embed_to_file(tmp + "/s.tif", tmp + "/out", "morphometric", **kw)
    >>> out.status, out.n_patches, out.dim
    ('done', 4, 64)
    >>> embed_to_file(tmp + "/s.tif", tmp + "/out", "morphometric", **kw).status
    'skipped'
    """
    t0 = time.perf_counter()
    g = apply({"grid": grid or GridOptions(), "embed": embed or EmbedOptions()}, **options)
    grid_opts, emb = g["grid"], g["embed"]
    # a DICOMweb series URL keeps its URL (str) and is named by its series UID (stem)
    slide_path = (SlideURL.from_url(str(slide_path)) if is_dicomweb_url(str(slide_path))
                  else Path(slide_path))
    out = Path(out_dir) / f"{slide_path.stem}.h5"
    outcome = EmbedOutcome(slide=str(slide_path), status="failed", path=str(out))
    try:
        encoder = _build_encoder(encoder, encoder_kwargs, emb)
        outcome.encoder = encoder.name
        result = _slide_to_file(slide_path, out, encoder, grid_opts, emb, outcome,
                                overwrite=overwrite, progress=progress, cancel=cancel)
    except Cancelled:
        raise
    except (GHANetError, ValueError, OSError, RuntimeError) as exc:
        outcome.error = str(exc)
        outcome.seconds = time.perf_counter() - t0
        return outcome
    if result is None:  # kept ("skipped") or refused: ``outcome`` says which
        return outcome
    feats = result.features
    outcome.seconds = time.perf_counter() - t0
    outcome.status = "done"
    outcome.n_patches, outcome.dim = len(feats), feats.dim
    outcome.n_skipped = int(feats.attrs.get("n_skipped", 0))
    outcome.rate = len(feats) / max(float(feats.attrs.get("seconds", outcome.seconds)), 1e-9)
    return outcome


def _build_encoder(encoder: PatchEncoder | str, encoder_kwargs: dict[str, Any] | None,
                   emb: EmbedOptions) -> PatchEncoder:
    """``encoder`` itself, or the registry's encoder of that name with ``encoder_kwargs``
    and the weights of ``emb``."""
    if not isinstance(encoder, str):
        return encoder
    kw = dict(encoder_kwargs or {})
    if emb.weights is not None:
        kw.setdefault("path" if encoder == "torchscript" else "weights", emb.weights)
    return create_encoder(encoder, **kw)


def _slide_to_file(
    slide_path: Path,
    out: Path,
    encoder: PatchEncoder,
    grid_opts: GridOptions,
    emb: EmbedOptions,
    outcome: EmbedOutcome,
    *,
    overwrite: bool,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> Any:
    """Open the slide, lay its grid and embed it into ``out``: the features stage's result,
    or None when ``out`` already holds these features or another's (``outcome`` updated)."""
    spec = encoder.spec()
    px = grid_opts.patch_px if grid_opts.patch_px is not None else spec.patch_px
    um = grid_opts.target_mpp if grid_opts.target_mpp is not None else spec.target_mpp
    slide, opened = open_stage(slide_path, mpp=grid_opts.mpp, progress=progress, cancel=cancel)
    try:
        mask, patches = grid_stage(
            slide,
            patch_px=px,
            target_mpp=um,
            tissue_params=grid_opts.tissue_params(),
            min_tissue_fraction=grid_opts.min_tissue_fraction,
            progress=progress,
            cancel=cancel,
            purpose="embed",
        )
        if os.path.lexists(out) and not overwrite and _existing_file(
                out, slide, encoder, patches, outcome):
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        return features_stage(
            slide,
            patches,
            encoder,
            cache_path=out,
            reuse=False,
            strict_save=True,
            device=emb.device,
            batch_size=emb.batch_size,
            workers=emb.workers,
            read_ahead=emb.read_ahead,
            progress=progress,
            cancel=cancel,
            backend=emb.backend,
            compile=emb.compile,
            attrs={"acquisition": slide_acquisition(slide.mpp, mask, len(patches))},
        )
    finally:
        if opened:
            slide.close()


def _existing_file(out: Path, slide: Any, encoder: PatchEncoder, patches: Any,
                   outcome: EmbedOutcome) -> bool:
    """``out`` exists: "skipped" when it holds this slide's features from this encoder and
    grid, a failure asking for overwrite when it holds sound features of another (True:
    nothing to do); False when it is unreadable, crafted or not signed by this user
    (it is re-embedded and replaced, ``outcome.replaced`` says why)."""
    hit, status, why = match_features(
        out,
        slide_fingerprint=slide.fingerprint(),
        encoder_spec=feature_spec(encoder, patches.patch_px, patches.target_mpp),
        grid=patches,
    )
    if status in ("damaged", "missing"):
        outcome.replaced = why or None
        return False
    if hit is None:
        outcome.error = (
            f"{out} exists but was made from another slide, encoder or grid: "
            "allow overwriting to replace it, or choose another output folder"
        )
        return True
    outcome.status, outcome.n_patches, outcome.dim = "skipped", len(hit), hit.dim
    return True
