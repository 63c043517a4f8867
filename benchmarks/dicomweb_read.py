"""DICOMweb reading speed: this package's reader against the local-file reader of the same
JPEG tiles and against wsidicom's per-frame web reads, over a loopback Orthanc.

Writes a JPEG-tiled OME-TIFF of generated H&E (``--size`` px square, 256 px tiles, 0.5
um/px), converts it with wsidicomizer (whose OME-TIFF source passes the JPEG tiles through,
checked here: the DICOM frames decode to the TIFF's pixels), starts Orthanc with its
DICOMweb plugin on a free loopback port and stores the DICOM files there (STOW-RS). Then
reads the same 256 x 256 px level-0 patches (a grid over the slide, in grid order, as the
embedding pipeline does, ``--workers`` reader threads) with

* ``file``: ``open_slide(TIFF)`` (the libjpeg-turbo tile reader, ``jpegtiles``);
* ``dicomweb``: ``open_slide(SERIES_URL)`` (batched WADO-RS frames with read-ahead);
* ``wsidicom``: ``WsiDicom.open_web(...).read_region`` (one request a frame; at most
  ``--wsidicom-patches`` patches, it is slow),

each round opening every reader afresh (cold caches), the readers interleaved round by
round, and prints patches/s (median of the rounds) and the ratios dicomweb/file and
dicomweb/wsidicom. Needs the Debian packages orthanc, orthanc-dicomweb, libturbojpeg0 and
the ``dicom`` extra.

Usage: python benchmarks/dicomweb_read.py [--size 8192] [--rounds 3] [--workers 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Orthanc launcher and the slide generator

PATCH = 256


def make_slide(folder: Path, size: int) -> tuple[Path, list[Path]]:
    from _orthanc import dicomize
    from conftest import he_image, write_pyramid

    rgb, _ = he_image(size, size, seed=7)
    tif = write_pyramid(folder / "bench.ome.tif", rgb, levels=3, tile=256, layout="ome")
    return tif, dicomize(tif, folder / "dcm", tile_size=256)


def patch_grid(size: int) -> list[tuple[int, int]]:
    return [(x, y) for y in range(0, size - PATCH + 1, PATCH)
            for x in range(0, size - PATCH + 1, PATCH)]


def run_reader(read, coords, workers: int) -> float:
    """Patches per second reading ``coords`` with ``read(x, y)`` on ``workers`` threads,
    in grid order (each thread takes the next patch)."""
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda c: read(*c), coords):
            pass
    return len(coords) / (time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--wsidicom-patches", type=int, default=120)
    args = ap.parse_args(argv)

    from wsidicom import WsiDicom, WsiDicomWebClient

    from _orthanc import Orthanc, series_url, stow_files
    from napari_ghanet.io.dicomweb import parse_url
    from napari_ghanet.io.slide import open_slide

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tif, files = make_slide(tmp, args.size)
        coords = patch_grid(args.size)
        with Orthanc(tmp / "orthanc") as srv:
            url = stow_files(srv, files)
            assert url == series_url(srv, files)
            ref = parse_url(url)
            with open_slide(url) as web, open_slide(tif) as local:
                assert local.backend == "jpegtiles", local.backend
                a = web.read_region((0, 0), 0, (2048, 2048))
                b = local.read_region((0, 0), 0, (2048, 2048))
                same = bool(np.array_equal(a, b))
            print(f"slide {args.size} x {args.size} px, {len(coords)} patches of {PATCH} px; "
                  f"DICOM frames equal the TIFF tiles: {same}; {args.workers} reader threads")

            def file_round():
                with open_slide(tif) as s:
                    return run_reader(lambda x, y: s.read_region((x, y), 0, (PATCH, PATCH)),
                                      coords, args.workers)

            def web_round():
                with open_slide(url) as s:
                    return run_reader(lambda x, y: s.read_region((x, y), 0, (PATCH, PATCH)),
                                      coords, args.workers)

            def wsidicom_round():
                client = WsiDicomWebClient.create_client(srv.url, qido_prefix="dicom-web",
                                                         wado_prefix="dicom-web")
                with WsiDicom.open_web(client, ref.study, ref.series) as w:
                    sub = coords[: args.wsidicom_patches]
                    return run_reader(lambda x, y: w.read_region((x, y), 0, (PATCH, PATCH)),
                                      sub, args.workers)

            rates: dict[str, list[float]] = {"file": [], "dicomweb": [], "wsidicom": []}
            for r in range(args.rounds):
                for name, fn in (("file", file_round), ("dicomweb", web_round),
                                 ("wsidicom", wsidicom_round)):
                    rates[name].append(fn())
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s"
                                                   for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print()
    print("| reader | patches/s (median) | rounds |")
    print("|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {med[k]:.0f} | {', '.join(f'{x:.0f}' for x in v)} |")
    print()
    print(f"dicomweb / file     = {med['dicomweb'] / med['file']:.2f}x (target >= 0.5x)")
    print(f"dicomweb / wsidicom = {med['dicomweb'] / med['wsidicom']:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
