"""How long the napari reader takes to open a 100,000 x 100,000 pixel slide.

Writes (once, into a temporary folder) a JPEG-tiled pyramidal TIFF of 100,000 x 100,000
RGB pixels at 0.25 um/px whose tiles all hold the same small H&E-like image (the file
is ~200 MB instead of 30 GB), then times:

* ``napari_get_reader`` + reading the layer data (what File > Open does before drawing);
* adding the layer to a viewer and drawing the first frame (needs a display: run under
  ``xvfb-run -a`` or on a desktop; skipped with ``--no-viewer``);
* how many pixels were read for that first frame, against the size of level 0.

Usage: python benchmarks/reader_open.py [--size 100000] [--keep PATH] [--no-viewer]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _tile_bytes(tile: int) -> bytes:
    """One JPEG-compressed RGB tile as tifffile writes it."""
    import tifffile

    rng = np.random.default_rng(0)
    img = np.full((tile, tile, 3), (230, 160, 200), np.uint8)
    for _ in range(40):
        y, x = rng.integers(4, tile - 4, 2)
        img[y - 3:y + 4, x - 3:x + 4] = (110, 60, 150)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tile.tif"
        tifffile.imwrite(path, img, tile=(tile, tile), photometric="rgb", compression="jpeg")
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            with open(path, "rb") as fh:
                fh.seek(page.dataoffsets[0])
                return fh.read(page.databytecounts[0])


def write_big_slide(path: Path, size: int, mpp: float = 0.25, tile: int = 256) -> Path:
    """A ``size`` x ``size`` JPEG-tiled pyramid (downsample 4 per level) at ``mpp``."""
    import tifffile

    data = _tile_bytes(tile)
    shapes = [size]
    while shapes[-1] // 4 >= 1024:
        shapes.append(shapes[-1] // 4)
    px_per_cm = 1e4 / mpp
    description = f"Aperio Image Library benchmark\r\n{size}x{size} ({tile}x{tile}) JPEG/RGB " \
                  f"|AppMag = 40|MPP = {mpp}"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, side in enumerate(shapes):
            n = (-(-side // tile)) ** 2
            scale = size / side
            tif.write(
                iter([data] * n),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                resolution=(px_per_cm / scale, px_per_cm / scale),
                resolutionunit="CENTIMETER",
                description=description if i == 0 else None,
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None, help="write/reuse the slide here")
    parser.add_argument("--no-viewer", action="store_true")
    args = parser.parse_args()

    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "big.tif"
    else:
        path = args.keep
    if not path.exists():
        t0 = time.perf_counter()
        write_big_slide(path, args.size)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s")

    from napari_ghanet._reader import napari_get_reader
    from napari_ghanet.io.slide import Slide

    reads: list[tuple[int, int, int]] = []
    original = Slide.read_region

    def counting(self, location, level, size):
        reads.append((level, int(size[0]), int(size[1])))
        return original(self, location, level, size)

    Slide.read_region = counting  # count what napari asks for

    times = []
    for _ in range(2):  # the first open includes importing OpenSlide, tifffile and dask
        t0 = time.perf_counter()
        reader = napari_get_reader(str(path))
        [(levels, kwargs, _)] = reader(str(path))
        times.append(time.perf_counter() - t0)
    print(f"reader: {len(levels)} levels {[lv.shape[:2] for lv in levels]}, "
          f"scale {kwargs['scale']} um; opened in {times[0] * 1000:.0f} ms the first time "
          f"(with imports), {times[1] * 1000:.0f} ms the second; {len(reads)} regions read")

    if not args.no_viewer:
        import napari
        from qtpy.QtWidgets import QApplication

        viewer = napari.Viewer(show=True)
        QApplication.processEvents()
        t0 = time.perf_counter()
        viewer.add_image(levels, **kwargs)
        viewer.screenshot(canvas_only=True, flash=False)
        t_draw = time.perf_counter() - t0
        level0 = sum(w * h for lvl, w, h in reads if lvl == 0)
        total = sum(w * h for _, w, h in reads)
        print(f"viewer: layer added and first frame drawn in {t_draw * 1000:.0f} ms; "
              f"{total / 1e6:.2f} Mpx read ({level0 / 1e6:.2f} Mpx at level 0 of "
              f"{args.size * args.size / 1e6:.0f} Mpx), levels read {sorted({r[0] for r in reads})}")
        viewer.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
