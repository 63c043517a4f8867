"""``ghanet embed``: slides to patch-feature files (``OUT/<slide stem>.h5``)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet embed`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "embed",
        help="extract patch features from whole-slide images",
        description=(
            "Detect tissue, tile it into patches (default 256 px at 0.5 um/px) and embed "
            "every patch with an encoder. Writes OUT/<slide stem>.h5 (datasets 'features' "
            "and 'coords', the CLAM layout). A file made from the same slide with the same "
            "encoder and grid is reused."
        ),
    )
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="slide files")
    p.add_argument(
        "--encoder",
        default="resnet50_trunc",
        help="encoder name: resnet50_trunc (default), morphometric or torchscript",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="microns per pixel of level 0, for slides whose file does not record it",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    p.add_argument("--batch-size", type=int, default=64, help="patches per batch (64)")
    p.add_argument("--workers", type=int, default=4, help="patch reader threads (4)")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="resnet50_trunc: ResNet50 ImageNet state dict (.pth); torchscript: the model file",
    )
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        help="resnet50_trunc: resize patches to this side first (224 as today's CLAM)",
    )
    p.add_argument("--dim", type=int, default=None, help="torchscript: feature dimension")
    p.add_argument(
        "--input-size", type=int, default=None, help="torchscript: network input side (px)"
    )
    p.add_argument(
        "--mean", type=float, nargs=3, default=None, help="torchscript: RGB normalisation mean"
    )
    p.add_argument(
        "--std", type=float, nargs=3, default=None, help="torchscript: RGB normalisation std"
    )
    p.add_argument("--patch-px", type=int, default=256, help="patch side in pixels (256)")
    p.add_argument(
        "--target-mpp", type=float, default=0.5, help="patch resolution in um/px (0.5 = 20x)"
    )
    p.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        help="keep patches at least this fraction tissue (0.5)",
    )
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


class _Progress:
    """tqdm bar on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, label: str, quiet: bool):
        self.label = label
        self.quiet = quiet
        self.bar = None
        self.last = 0.0
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.tty:
            if self.bar is None:
                try:
                    from tqdm import tqdm
                except ImportError:  # pragma: no cover - tqdm is a dependency of ours
                    self.tty = False
                else:
                    self.bar = tqdm(total=total, desc=self.label, unit="patch", leave=False)
            if self.bar is not None:
                self.bar.update(done - self.bar.n)
                return
        now = time.monotonic()
        if done >= total or now - self.last > 5.0:
            self.last = now
            print(f"{self.label}: {done}/{total} patches", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _build_encoder(args):
    from napari_ghanet.encoders import create_encoder

    name = args.encoder
    kw: dict = {}
    if name == "resnet50_trunc":
        if args.weights is not None:
            kw["weights"] = args.weights
        if args.resize is not None:
            kw["resize_to"] = args.resize
    elif name == "torchscript":
        if args.weights is None or args.dim is None:
            raise ValueError("--encoder torchscript needs --weights MODEL_FILE and --dim D")
        kw.update(path=args.weights, dim=args.dim, input_size=args.input_size)
        if args.mean is not None:
            kw["mean"] = args.mean
        if args.std is not None:
            kw["std"] = args.std
    elif name == "morphometric":
        kw["target_mpp"] = args.target_mpp
    for opt in ("weights", "resize", "dim", "input_size", "mean", "std"):
        used = getattr(args, opt) is not None
        if used and not (
            (name == "resnet50_trunc" and opt in ("weights", "resize"))
            or (name == "torchscript" and opt != "resize")
        ):
            raise ValueError(f"--{opt.replace('_', '-')} does not apply to encoder {name}")
    if name in ("resnet50_trunc", "torchscript", "morphometric"):
        kw.update(patch_px=args.patch_px, target_mpp=args.target_mpp)
    return create_encoder(name, **kw)


def _embed_one(path: Path, args, encoder, cancel: threading.Event) -> tuple[bool, str]:
    """(ok, summary line) for one slide."""
    from napari_ghanet.inference.embedding import embed_slide
    from napari_ghanet.io.features import load_matching_features, save_features
    from napari_ghanet.io.slide import SlideError, open_slide
    from napari_ghanet.preprocessing.patches import patch_grid
    from napari_ghanet.preprocessing.tissue import tissue_mask

    t0 = time.perf_counter()
    out = args.out / f"{path.stem}.h5"
    try:
        with open_slide(path, mpp=args.mpp) as slide:
            mask = tissue_mask(slide)
            grid = patch_grid(
                slide,
                mask,
                patch_px=args.patch_px,
                target_mpp=args.target_mpp,
                min_tissue_fraction=args.min_tissue,
            )
            if grid.empty:
                return False, f"{path.name}: FAILED: {grid.message}"
            spec = encoder.spec()
            spec.update(patch_px=int(grid.patch_px), target_mpp=float(grid.target_mpp))
            if out.exists() and not args.overwrite:
                hit = load_matching_features(
                    out, slide_fingerprint=slide.fingerprint(), encoder_spec=spec, grid=grid
                )
                if hit is not None:
                    return True, (
                        f"{path.name}: {len(hit)} patches, {hit.dim}-d features already in "
                        f"{out} (same slide, encoder and grid)"
                    )
                return False, (
                    f"{path.name}: FAILED: {out} exists but was made from another slide, "
                    "encoder or grid; pass --overwrite to replace it"
                )
            progress = _Progress(path.name, args.quiet)
            try:
                feats = embed_slide(
                    slide,
                    grid,
                    encoder,
                    device=args.device,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    progress=progress,
                    cancel=cancel,
                )
            finally:
                progress.close()
            save_features(out, feats)
    except (SlideError, ValueError, OSError, RuntimeError) as exc:
        return False, f"{path.name}: FAILED: {exc}"
    dt = time.perf_counter() - t0
    skipped = feats.attrs.get("n_skipped", 0)
    skip = f" ({skipped} unreadable skipped)" if skipped else ""
    rate = len(feats) / max(float(feats.attrs.get("seconds", dt)), 1e-9)
    return True, (
        f"{path.name}: {len(feats)} patches{skip}, {feats.dim}-d {encoder.name} features, "
        f"{rate:.1f} patches/s, {dt:.1f} s -> {out}"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ghanet embed``; returns 0 when every slide succeeded, 1 when any failed,
    2 on a usage error, 130 when interrupted."""
    from napari_ghanet.encoders import EncoderError
    from napari_ghanet.inference.embedding import EmbeddingCancelled

    for name, value in (("--batch-size", args.batch_size), ("--patch-px", args.patch_px)):
        if value < 1:
            print(f"error: {name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.workers < 0:
        print(f"error: --workers must be >= 0, got {args.workers}", file=sys.stderr)
        return 2
    stems: dict[str, Path] = {}
    for s in args.slides:
        if s.stem in stems and stems[s.stem] != s:
            print(
                f"error: {stems[s.stem]} and {s} would both write {s.stem}.h5; "
                "embed them into different --out folders",
                file=sys.stderr,
            )
            return 2
        stems[s.stem] = s
    try:
        encoder = _build_encoder(args)
    except (EncoderError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create {args.out}: {exc}", file=sys.stderr)
        return 2

    cancel = threading.Event()
    failed: list[str] = []
    for path in args.slides:
        try:
            ok, line = _embed_one(path, args, encoder, cancel)
        except (KeyboardInterrupt, EmbeddingCancelled):
            cancel.set()
            print(f"\ninterrupted: {path.name} not written", file=sys.stderr)
            return 130
        print(line, file=sys.stderr if not ok else sys.stdout, flush=True)
        if not ok:
            failed.append(str(path))
    n = len(args.slides)
    if failed:
        print(
            f"{len(failed)} of {n} slide(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    print(f"{n} slide(s) embedded into {args.out}", file=sys.stderr)
    return 0
