"""embed_slide: order, batching, threads, progress, cancel, bounded prefetch, bad tiles."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tifffile
import torch

from conftest import write_pyramid
from napari_ghanet.encoders import EncoderError, PatchEncoder, create_encoder, register_encoder
from napari_ghanet.inference.embedding import EmbeddingCancelled, embed_slide, resolve_device
from napari_ghanet.io.features import grid_key
from napari_ghanet.io.slide import SlideError, open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask


@register_encoder("test_rgb_stats")
class RGBStats(PatchEncoder):
    """Cheap encoder for pipeline tests: per-channel mean and std (6-d)."""

    name = "test_rgb_stats"
    dim = 6

    def __init__(self, delay_first: float = 0.0, wrong_dim: bool = False):
        super().__init__()
        self.delay_first = delay_first
        self.wrong_dim = wrong_dim
        self.calls = 0
        self.on_first_call = None

    def forward(self, x):
        self.calls += 1
        if self.calls == 1 and self.on_first_call is not None:
            self.on_first_call()
        out = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        return out[:, :5] if self.wrong_dim else out


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ghanet-reader")]


def test_features_follow_grid_order_and_match_direct_encoding(tiled_tiff):
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, tissue_mask(s))
        enc = create_encoder("morphometric")
        feats = embed_slide(s, grid, enc, batch_size=7, workers=3)
        direct = enc.encode(torch.from_numpy(np.stack([grid.read(s, i) for i in range(len(grid))])))
        fingerprint = s.fingerprint()
    assert feats.features.shape == (len(grid), 64) and feats.features.dtype == np.float32
    np.testing.assert_array_equal(feats.coords, grid.coords)
    np.testing.assert_allclose(feats.features, direct.numpy(), rtol=1e-5, atol=1e-5)
    a = feats.attrs
    assert a["encoder"] == "morphometric" and a["feature_dim"] == 64
    assert a["encoder_spec"]["patch_px"] == 256 and a["encoder_spec"]["target_mpp"] == 0.5
    assert a["patch_size"] == 256 and a["patch_size_level0"] == 256
    assert a["slide_mpp"] == 0.5 and a["target_mpp"] == 0.5
    assert a["slide_fingerprint"] == fingerprint
    assert a["grid_key"] == grid_key(grid)
    assert a["n_skipped"] == 0 and a["n_patches"] == len(grid) and a["device"] == "cpu"


def test_threads_and_batch_sizes_do_not_change_the_result(subifd_tiff):
    with open_slide(subifd_tiff) as s:
        grid = patch_grid(s, None, step_px=192)
        runs = [
            embed_slide(s, grid, RGBStats(), batch_size=bs, workers=w)
            for bs, w in [(64, 0), (5, 4), (1, 2), (200, 1)]
        ]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.coords, runs[0].coords)
        np.testing.assert_allclose(r.features, runs[0].features, rtol=1e-6, atol=1e-6)
    assert not _reader_threads()


def test_progress_reports_patches_done(tiled_tiff):
    calls = []
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, None)
        embed_slide(s, grid, RGBStats(), batch_size=10, progress=lambda d, t: calls.append((d, t)))
    n = len(grid)
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(t == n for _, t in calls)
    assert len(calls) == 1 + -(-n // 10)


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_between_batches(tiled_tiff, kind):
    event = threading.Event()
    cancel = event if kind == "event" else event.is_set
    seen = []

    def progress(done, total):
        seen.append(done)
        if done > 0:
            event.set()

    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, None, step_px=128)
        with pytest.raises(EmbeddingCancelled):
            embed_slide(
                s, grid, RGBStats(), batch_size=8, workers=3, progress=progress, cancel=cancel
            )
    assert max(seen) < len(grid)
    assert not _reader_threads()


class _CountingSlide:
    """Delegates to a slide and counts patch reads (thread-safe)."""

    def __init__(self, slide):
        self._slide = slide
        self.reads = 0
        self._lock = threading.Lock()
        self.path = slide.path

    def fingerprint(self):
        return self._slide.fingerprint()

    def read_patch(self, *args):
        with self._lock:
            self.reads += 1
        return self._slide.read_patch(*args)


def test_prefetch_bounds_the_patches_held_in_memory(tiled_tiff):
    with open_slide(tiled_tiff) as s:
        counting = _CountingSlide(s)
        grid = patch_grid(s, None, step_px=128)
        assert len(grid) > 100
        enc = RGBStats()
        reads_during_first_batch = []

        def stall():
            time.sleep(0.3)  # readers run ahead meanwhile, until the bound stops them
            reads_during_first_batch.append(counting.reads)

        enc.on_first_call = stall
        feats = embed_slide(counting, grid, enc, batch_size=8, workers=4, prefetch=2)
    assert len(feats) == len(grid)
    # batch 0 taken + at most 2 batches read ahead
    assert reads_during_first_batch[0] <= 3 * 8


def _corrupt_tile(path, tile_index):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        off, n = page.dataoffsets[tile_index], page.databytecounts[tile_index]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00garbage" * (n // 8) + b"\x00" * (n % 8))


@pytest.mark.parametrize("layout", ["ifd", "subifd"])
def test_unreadable_tile_skips_its_patch(tmp_path, he_slide, layout, caplog):
    path = write_pyramid(tmp_path / f"bad-{layout}.tif", he_slide[0], layout=layout)
    _corrupt_tile(path, 9)  # level-0 tile at x=256, y=256
    with open_slide(path) as s:
        grid = patch_grid(s, None)
        feats = embed_slide(s, grid, RGBStats(), batch_size=8, workers=2)
    assert len(grid) == 48
    assert feats.attrs["n_skipped"] == 1
    assert feats.attrs["skipped_coords"] == [[256, 256]]
    assert len(feats) == 47
    assert [256, 256] not in feats.coords.tolist()
    keep = ~np.all(grid.coords == [256, 256], axis=1)
    np.testing.assert_array_equal(feats.coords, grid.coords[keep])
    assert "skipping patch 9 at (256, 256)" in caplog.text


class _BrokenSlide(_CountingSlide):
    def read_patch(self, *args):
        raise SlideError(f"{self.path}: cannot read")


def test_nothing_readable_is_an_error(tiled_tiff):
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, None)
        with pytest.raises(SlideError, match="none of the 48 patches could be read"):
            embed_slide(_BrokenSlide(s), grid, RGBStats())


def test_empty_grid_and_argument_errors(blank_tiff, tiled_tiff):
    with open_slide(blank_tiff) as s:
        grid = patch_grid(s, tissue_mask(s))
        feats = embed_slide(s, grid, "morphometric")
    assert grid.empty and feats.features.shape == (0, 64) and feats.coords.shape == (0, 2)
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, None)
        with pytest.raises(ValueError, match="batch_size"):
            embed_slide(s, grid, RGBStats(), batch_size=0)
        with pytest.raises(EncoderError, match=r"returned shape \(8, 5\)"):
            embed_slide(s, grid, RGBStats(wrong_dim=True), batch_size=8)
    assert not _reader_threads()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")


def test_resnet50_pipeline_on_the_real_slide(cmu_svs, resnet50_weights):
    enc = create_encoder("resnet50_trunc", weights=resnet50_weights)
    with open_slide(cmu_svs) as s:
        grid = patch_grid(s, tissue_mask(s)).select([0, 10])
        feats = embed_slide(s, grid, enc, batch_size=2, workers=2)
        direct = enc.encode(torch.from_numpy(np.stack([grid.read(s, i) for i in range(2)])))
    assert feats.features.shape == (2, 1024)
    np.testing.assert_allclose(feats.features, direct.numpy(), rtol=1e-4, atol=1e-4)
    assert feats.attrs["encoder_spec"]["weights"].startswith("resnet50-test.pth")
