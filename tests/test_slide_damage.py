"""Damaged slides: unreadable basic TIFF tags are refused with the reason, a fallback from
one backend to another is recorded on the slide, and one bad tile of a one-level slide
does not fail tissue detection."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from conftest import he_image, write_pyramid
from napari_ghanet.io.slide import SlideError, backend_names, open_slide
from napari_ghanet.preprocessing.tissue import tissue_mask


def _damage_tag(src, dst, code: int, how: str):
    """Copy ``src`` to ``dst`` with 4 bytes of tag ``code`` of the first directory changed:
    its data type (``type``), its value count (``count``) or the tag code itself (``code``)."""
    with tifffile.TiffFile(src) as tif:
        tag = tif.pages[0].tags[code]
        off = tag.offset
        assert tif.byteorder == "<" and not tif.is_bigtiff
    data = bytearray(src.read_bytes())
    assert int.from_bytes(data[off : off + 2], "little") == code
    if how == "type":
        data[off + 2 : off + 6] = b"\x63\x00\x00\x00"  # type 99, count's low bytes zeroed
    elif how == "count":
        data[off + 4 : off + 8] = b"\xff\xff\xff\x7f"
    else:
        data[off : off + 4] = b"\xff\xff\xff\xff"
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("how", ["type", "count", "code"])
def test_svs_with_an_unreadable_photometric_tag_is_refused_with_the_reason(cmu_svs, tmp_path, how):
    with open_slide(cmu_svs) as s:  # the sound file opens without a word
        assert s.backend == "jpegtiles" and s.warnings == []
    path = _damage_tag(cmu_svs, tmp_path / f"damaged-{how}.svs", 262, how)
    # before: OpenSlide refused, tifffile guessed min-is-white and the colours changed
    if how == "code":
        reason = r"the required TIFF tag PhotometricInterpretation \(262\) is missing"
    else:
        reason = r"the TIFF tag PhotometricInterpretation \(262\) cannot be read \(.*TiffTag 262"
    with pytest.raises(SlideError, match=rf"damaged-{how}\.svs: level 0: {reason}"):
        open_slide(path)


def test_tifffile_pyramid_with_damaged_tags_is_refused(tmp_path):
    rgb, _ = he_image(512, 512)
    src = write_pyramid(tmp_path / "sub.tif", rgb, levels=2, layout="subifd")
    with open_slide(src) as s:
        assert s.backend == "jpegtiles" and s.warnings == []
    bad = _damage_tag(src, tmp_path / "photometric.tif", 262, "count")
    with pytest.raises(SlideError, match=r"PhotometricInterpretation \(262\) cannot be read"):
        open_slide(bad)
    # samples per pixel rewritten from 3 to 1: RGB with one sample is inconsistent
    with tifffile.TiffFile(src) as tif:
        off = tif.pages[0].tags[277].offset
    data = bytearray(src.read_bytes())
    data[off + 8 : off + 10] = (1).to_bytes(2, "little")
    (tmp_path / "spp.tif").write_bytes(bytes(data))
    with pytest.raises(
        SlideError, match=r"spp\.tif: (level|directory) 0: .*(inconsistent|cannot be read)"
    ):
        open_slide(tmp_path / "spp.tif")


def test_fallback_from_openslide_to_tifffile_is_recorded(tmp_path):
    rgb, _ = he_image(512, 512)
    path = write_pyramid(tmp_path / "webp.tif", rgb, levels=2, compression="webp")
    with open_slide(path) as s:  # OpenSlide detects a generic TIFF but has no WebP codec
        assert s.backend == "tifffile"
        assert len(s.warnings) == 1
        assert "openslide" in s.warnings[0] and "50001" in s.warnings[0]
        assert "read with the tifffile backend instead" in s.warnings[0]
        region = s.read_region((0, 0), 0, (512, 512)).astype(int)
        assert np.abs(region - rgb).mean() < 4.0
    with open_slide(path, backend="tiff") as s:  # forced: nothing fell back
        assert s.warnings == []
    with pytest.raises(SlideError, match="the openslide backend cannot open it.*50001"):
        open_slide(path, backend="openslide")
    assert backend_names() == ["jpegtiles", "openslide", "tifffile", "pillow", "dicomweb"]


def _corrupt_tile(path, tile_index):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        off, n = page.dataoffsets[tile_index], page.databytecounts[tile_index]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00garbage" * (n // 8) + b"\x00" * (n % 8))


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_one_bad_tile_of_a_one_level_slide_does_not_fail_tissue_detection(
    tmp_path, he_slide, backend
):
    rgb, truth = he_slide
    path = write_pyramid(tmp_path / "one-level.tif", rgb, levels=1)
    _corrupt_tile(path, 9)  # tile (x=1, y=1) of 8 x 6, inside the tissue
    with open_slide(path, backend=backend) as s:
        assert s.level_count == 1 and s.warnings == []
        with pytest.raises(SlideError, match="one-level"):  # strict reads still fail
            s.read_downsampled(8)
        tm = tissue_mask(s)
        assert len(s.warnings) == 1
        assert "1 unreadable tile(s) of level 0 were read as background" in s.warnings[0]
    ds = tm.downsample
    small = truth[:: int(ds), :: int(ds)][: tm.mask.shape[0], : tm.mask.shape[1]]
    agree = (tm.mask == small).mean()
    assert agree > 0.95, agree
    # the bad tile is background in the mask, the rest of the tissue is found
    t0, t1 = int(256 / ds), int(512 / ds)
    assert not tm.mask[t0 + 2 : t1 - 2, t0 + 2 : t1 - 2].all()
    assert tm.mask[int(768 / ds), int(1024 / ds)]
