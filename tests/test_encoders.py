"""Encoder registry, ResNet50-trunc with weights made here, morphometric, TorchScript."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from conftest import E_OD, GLASS, H_OD, he_image
from napari_ghanet.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MORPHOMETRIC_FEATURES,
    EncoderError,
    EncoderSpec,
    PatchEncoder,
    create_encoder,
    describe_encoders,
    encoder_mismatch,
    find_resnet50_weights,
    from_spec,
    list_encoders,
    register_encoder,
)
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

IDX = {name: i for i, name in enumerate(MORPHOMETRIC_FEATURES)}


def _uint8_batch(arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays))


# ----------------------------------------------------------------------------- registry


def test_registry():
    assert {"resnet50_trunc", "morphometric", "torchscript"} <= set(list_encoders())
    with pytest.raises(EncoderError, match="unknown encoder 'nope'.*morphometric"):
        create_encoder("nope")

    @register_encoder("test_mean_rgb")
    class MeanRGB(PatchEncoder):
        name = "test_mean_rgb"
        dim = 3

        def forward(self, x):
            return x.mean((2, 3))

    enc = create_encoder("test_mean_rgb")
    assert not enc.training
    out = enc.encode(torch.full((2, 8, 8, 3), 51, dtype=torch.uint8))
    np.testing.assert_allclose(out.numpy(), 0.2, rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("test_mean_rgb")(lambda: None)


# ----------------------------------------------------------------------------- ResNet50


def test_resnet50_trunc_matches_torchvision(resnet50_weights):
    from torchvision.models import resnet50

    enc = create_encoder("resnet50_trunc", weights=resnet50_weights)
    assert enc.dim == 1024 and enc.input_size is None
    ref = resnet50(weights=None)
    ref.load_state_dict(torch.load(resnet50_weights, weights_only=True))
    ref.eval()
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8))
    x = enc.preprocess(batch)
    assert x.shape == (2, 3, 256, 256)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (batch.permute(0, 3, 1, 2) / 255.0 - mean) / std)
    with torch.inference_mode():
        t = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        t = ref.layer3(ref.layer2(ref.layer1(t)))
        expected = t.mean((2, 3))
        got = enc.encode(batch)
    assert got.shape == (2, 1024)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    spec = enc.spec().to_dict()
    assert spec["name"] == "resnet50_trunc" and spec["dim"] == 1024
    assert spec["resize"] is None and spec["patch_px"] == 256 and spec["target_mpp"] == 0.5
    assert spec["weights"].startswith("resnet50-test.pth sha256:")
    json.dumps(spec)


def test_resnet50_resize_option_changes_the_spec(resnet50_weights):
    enc = create_encoder("resnet50_trunc", weights=resnet50_weights, resize_to=224)
    x = enc.preprocess(torch.zeros(1, 256, 256, 3, dtype=torch.uint8))
    assert x.shape == (1, 3, 224, 224)
    assert enc.spec().to_dict()["resize"] == 224
    assert enc.spec() != create_encoder("resnet50_trunc", weights=resnet50_weights).spec()


def test_resnet50_weights_from_the_hub_cache(resnet50_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(EncoderError, match=r"not found.*checkpoints.*as the encoder weights") as e:
        create_encoder("resnet50_trunc")
    assert "--" not in str(e.value) and "weights=" not in str(e.value)  # the CLI adds its flag
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(resnet50_weights, tmp_path / "checkpoints" / "resnet50-0676ba61.pth")
    enc = create_encoder("resnet50_trunc")
    assert enc.spec().to_dict()["weights"].startswith("resnet50-0676ba61.pth sha256:")


def test_resnet50_bad_weights(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(EncoderError, match=r"r18\.pth: not ResNet50 weights"):
        create_encoder("resnet50_trunc", weights=tmp_path / "r18.pth")
    with open(tmp_path / "obj.pth", "wb") as fh:
        pickle.dump({"conv1.weight": object()}, fh)
    with pytest.raises(EncoderError, match=r"obj\.pth: cannot read the ResNet50 weights"):
        create_encoder("resnet50_trunc", weights=tmp_path / "obj.pth")
    with pytest.raises(EncoderError, match="not found"):
        create_encoder("resnet50_trunc", weights=tmp_path / "missing.pth")
    random = create_encoder("resnet50_trunc", pretrained=False)
    assert "random" in random.spec().to_dict()["weights"]


# ----------------------------------------------------------------------------- morphometric


def _raw(arrays) -> np.ndarray:
    enc = create_encoder("morphometric", standardize=False)
    return enc.encode(_uint8_batch(arrays)).numpy()


def _stain_patch(c_h: np.ndarray, c_e: np.ndarray) -> np.ndarray:
    od = c_h[..., None] * H_OD + c_e[..., None] * E_OD
    return np.clip(GLASS * np.power(10.0, -od) + 0.5, 0, 255).astype(np.uint8)


def _nuclei_patch(
    diameter_um: float, spacing_um: float, mpp: float = 0.5
) -> tuple[np.ndarray, int]:
    """Eosin stroma with a square lattice of haematoxylin disks; returns (rgb, count)."""
    n = 256
    c_h = np.full((n, n), 0.05, np.float32)
    c_e = np.full((n, n), 0.4, np.float32)
    yy, xx = np.mgrid[0:n, 0:n]
    step = spacing_um / mpp
    centres = np.arange(step / 2, n, step)
    count = 0
    for cy in centres:
        for cx in centres:
            d = (xx - cx) ** 2 + (yy - cy) ** 2 <= (diameter_um / 2 / mpp) ** 2
            c_h[d], c_e[d] = 0.8, 0.15
            count += 1
    return _stain_patch(c_h, c_e), count


def test_morphometric_shape_names_and_spec():
    enc = create_encoder("morphometric")
    assert enc.dim == 64 == len(enc.feature_names) == len(set(enc.feature_names))
    assert len(enc.feature_offsets) == len(enc.feature_scales) == 64
    spec = enc.spec().to_dict()
    assert spec["name"] == "morphometric" and spec["dim"] == 64 and spec["version"] == 1
    assert spec["standardize"] is True and spec["resize"] is None
    json.dumps(spec)
    assert not list(enc.parameters())  # weight-free


def test_morphometric_is_deterministic_and_batch_independent(he_slide):
    rgb = he_slide[0]
    patches = [rgb[y : y + 256, x : x + 256] for y, x in [(500, 400), (600, 900), (700, 1300)]]
    patches += [np.full((256, 256, 3), 255, np.uint8)]
    enc = create_encoder("morphometric")
    batch = _uint8_batch(patches * 3)  # 12 patches: more than one CPU chunk
    a = enc.encode(batch)
    b = enc.encode(batch)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    single = torch.cat([enc.encode(batch[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(a[:4], single, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(a).all()


def test_blank_patch_has_no_tissue_and_no_nuclei():
    raw = _raw(
        [
            np.full((256, 256, 3), 255, np.uint8),
            np.broadcast_to(GLASS.astype(np.uint8), (256, 256, 3)),
        ]
    )
    assert np.isfinite(raw).all()
    for name in ("tissue_fraction", "nuclei_density", "blob_density_s2", "nuclear_fraction_h050"):
        assert (raw[:, IDX[name]] == 0).all(), name


def test_stain_unmixing():
    ones = np.ones((256, 256), np.float32)
    raw = _raw([_stain_patch(0.0 * ones, 0.6 * ones), _stain_patch(0.6 * ones, 0.0 * ones)])
    eosin, haem = raw
    assert eosin[IDX["e_mean"]] == pytest.approx(0.6, abs=0.02)
    assert abs(eosin[IDX["h_mean"]]) < 0.02
    assert haem[IDX["h_mean"]] == pytest.approx(0.6, abs=0.02)
    assert abs(haem[IDX["e_mean"]]) < 0.02
    assert eosin[IDX["eosin_dominant_fraction"]] == 1.0
    assert haem[IDX["h_share"]] > 0.95


def test_nuclei_are_counted_per_tissue_area():
    rgb, count = _nuclei_patch(diameter_um=7.0, spacing_um=16.0)
    raw = _raw([rgb])[0]
    area_um2 = (256 * 0.5) ** 2
    expected = count / area_um2 * 1000
    assert raw[IDX["tissue_fraction"]] == 1.0
    assert raw[IDX["nuclei_density"]] == pytest.approx(expected, rel=0.1)
    assert raw[IDX["nuclei_density_patch"]] == pytest.approx(expected, rel=0.1)
    assert raw[IDX["blob_density_s2"]] == pytest.approx(expected, rel=0.2)
    disk_um2 = math.pi * 3.5**2
    assert raw[IDX["nuclear_area_per_nucleus"]] == pytest.approx(disk_um2, rel=0.25)
    assert raw[IDX["nuclear_h_mean"]] == pytest.approx(0.8, abs=0.05)


def test_nuclear_density_and_size_move_the_right_features():
    sparse, _ = _nuclei_patch(7.0, 24.0)
    dense, _ = _nuclei_patch(7.0, 12.0)
    big, _ = _nuclei_patch(10.0, 24.0)
    raw = _raw([sparse, dense, big])
    for name in ("nuclei_density", "blob_density_s1", "blob_density_s2", "nuclear_fraction_h050"):
        assert raw[1, IDX[name]] > 2 * raw[0, IDX[name]], name
    assert raw[2, IDX["nuclear_area_per_nucleus"]] > 1.5 * raw[0, IDX["nuclear_area_per_nucleus"]]
    assert raw[2, IDX["nuclear_boundary_per_um"]] < raw[0, IDX["nuclear_boundary_per_um"]]
    assert raw[2, IDX["nuclei_density"]] == pytest.approx(raw[0, IDX["nuclei_density"]], rel=0.1)


def test_nuclear_density_orders_regions_of_a_slide_image():
    rgb, _ = he_image(1024, 2048, seed=11, nuclei_per_1000um2=4.0, dense_left=True)
    left = rgb[384:640, 512:768]
    right = rgb[384:640, 1280:1536]
    raw = _raw([left, right])
    assert raw[0, IDX["nuclei_density"]] > 2 * raw[1, IDX["nuclei_density"]]


def test_real_slide_features_are_plausible(cmu_svs):
    """On real H&E the standardised features stay in range and the nuclear density agrees
    with an independent haematoxylin measure (scikit-image's Ruifrok deconvolution)."""
    from skimage.color import rgb2hed

    with open_slide(cmu_svs) as s:
        grid = patch_grid(s, tissue_mask(s))
        patches = [grid.read(s, i) for i in range(len(grid))]
    enc = create_encoder("morphometric")
    z = enc.encode(_uint8_batch(patches)).numpy()
    assert np.isfinite(z).all()
    assert (np.abs(np.median(z, axis=0)) < 3).all()
    raw = z * np.array(enc.feature_scales) + np.array(enc.feature_offsets)
    density = raw[:, IDX["nuclei_density"]]
    assert 1.5 < np.median(density) < 8.0  # nuclei per 1000 um^2 of H&E tissue
    hed = np.stack([rgb2hed(p)[..., 0] for p in patches])
    tissue = raw[:, IDX["tissue_fraction"]]
    independent = (hed > np.percentile(hed, 90)).mean((1, 2)) / np.maximum(tissue, 0.05)
    assert np.corrcoef(density, independent)[0, 1] > 0.6


def test_morphometric_scales_with_target_mpp():
    rgb, count = _nuclei_patch(diameter_um=7.0, spacing_um=16.0, mpp=0.5)
    coarse = rgb.reshape(128, 2, 128, 2, 3).mean((1, 3)).astype(np.uint8)  # 1 um/px
    fine = _raw([rgb])[0]
    enc = create_encoder("morphometric", target_mpp=1.0, patch_px=128, standardize=False)
    half = enc.encode(_uint8_batch([coarse])).numpy()[0]
    assert half[IDX["nuclei_density"]] == pytest.approx(fine[IDX["nuclei_density"]], rel=0.15)
    with pytest.raises(EncoderError, match="target_mpp"):
        create_encoder("morphometric", target_mpp=10.0)


# ----------------------------------------------------------------------------- TorchScript


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_torchscript_encoder(tmp_path):
    torch.manual_seed(0)
    model = _Tiny().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(model), path)
    enc = create_encoder(
        "torchscript", path=path, dim=16, input_size=64, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    assert enc.name == "torchscript:tiny" and enc.dim == 16
    batch = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    )
    x = enc.preprocess(batch)
    assert x.shape == (3, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(enc.encode(batch), model(x))
    spec = enc.spec().to_dict()
    assert spec["resize"] == 64 and spec["mean"] == [0.5] * 3 and spec["std"] == [0.25] * 3
    assert spec["weights"].startswith("tiny.pt sha256:")
    named = create_encoder("torchscript", path=path, dim=16, name="my-encoder")
    assert named.spec().to_dict()["name"] == "my-encoder"


def test_torchscript_errors(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(_Tiny()), path)
    with pytest.raises(EncoderError, match=r"returns shape \(2, 16\).*dim=32"):
        create_encoder("torchscript", path=path, dim=32)
    (tmp_path / "junk.pt").write_bytes(b"junk" * 100)
    with pytest.raises(EncoderError, match=r"junk\.pt: not a TorchScript file"):
        create_encoder("torchscript", path=tmp_path / "junk.pt", dim=16)
    with pytest.raises(EncoderError, match="not found"):
        create_encoder("torchscript", path=tmp_path / "missing.pt", dim=16)


def test_exported_program_encoder(tmp_path):
    torch.manual_seed(1)
    model = _Tiny().eval()
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        model, (torch.zeros(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch_dim}}
    )
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, path)
    enc = create_encoder("torchscript", path=path, dim=16, input_size=64)
    x = torch.rand(5, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), model(x))
    assert enc.spec().to_dict()["weights"].startswith("tiny.pt2 sha256:")


# ----------------------------------------------------------------------------- EncoderSpec


def test_spec_round_trips_every_stored_form():
    from napari_ghanet.models.bundle import demo_bundle_path, read_bundle_metadata

    shipped = read_bundle_metadata(demo_bundle_path())["encoder"]
    # the nested form bundles of version 0.1 (the first demo bundle) store
    demo = {"name": "morphometric", "dim": 64, "patch_px": 256, "target_mpp": 0.5,
            "resize": None, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
            "extra": {"standardize": True, "version": 1,
                      "weights": "none (fixed morphometric descriptor v1, standardised)"}}
    forms = [
        demo,
        shipped,
        create_encoder("morphometric").spec().to_dict(),  # feature-file form
        {"name": "morphometric", "dim": 16, "patch_px": 256, "target_mpp": 0.5},
        {"name": "unit", "dim": 8},
        {"name": "torchscript:tiny", "dim": 16, "patch_px": 224, "target_mpp": 0.25,
         "resize": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
         "weights": "tiny.pt sha256:0123456789abcdef"},
    ]
    for d in forms:
        spec = EncoderSpec.from_dict(d)
        assert spec.to_dict() == d
        assert json.dumps(spec.to_dict()) == json.dumps(d)  # same keys in the same order
        assert EncoderSpec.from_dict(json.loads(json.dumps(d))) == spec
    spec = EncoderSpec.from_dict(demo)
    assert spec.weights == demo["extra"]["weights"] and spec.extra["standardize"] is True
    # the old and the shipped bundle's specs are what the morphometric encoder records today
    assert spec == create_encoder("morphometric").spec()
    assert EncoderSpec.from_dict(shipped) == spec
    assert encoder_mismatch(spec, create_encoder("morphometric").spec()) is None
    # frozen: a changed copy keeps the stored form
    moved = spec.with_geometry(512, 0.25)
    assert moved.to_dict() == {**demo, "patch_px": 512, "target_mpp": 0.25}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.dim = 3
    with pytest.raises(EncoderError, match="lacks the field 'dim'"):
        EncoderSpec.from_dict({"name": "x"})
    with pytest.raises(EncoderError, match="mean must be 3 numbers"):
        EncoderSpec.from_dict({"name": "x", "dim": 2, "mean": [0.5]})


def test_spec_is_immutable_and_takes_the_grid_geometry():
    spec = create_encoder("morphometric").spec()
    assert spec.to_dict()["version"] == 1 and "standardize" in spec.to_dict()
    moved = spec.with_geometry(512, 0.25)
    assert (moved.patch_px, moved.target_mpp) == (512, 0.25)
    assert (spec.patch_px, spec.target_mpp) == (256, 0.5)  # the original is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.dim = 3


def test_mismatch_messages():
    exp = EncoderSpec.from_dict(
        {"name": "resnet50_trunc", "dim": 1024, "mean": list(IMAGENET_MEAN),
         "std": list(IMAGENET_STD), "weights": "resnet50-0676ba61.pth sha256:aaaa"}
    )
    same = exp.replace(weights="renamed.pth sha256:aaaa", target_mpp=0.51)
    assert encoder_mismatch(exp, same) is None and exp.differences(same) == []
    # a description without a digest cannot be compared with one that has it
    assert encoder_mismatch(exp, exp.replace(weights="resnet50-0676ba61.pth")) is None
    cases = {
        "encoder 'morphometric' instead of 'resnet50_trunc'": {"name": "morphometric"},
        "feature dimension 64 instead of 1024": {"dim": 64},
        "patch size 512 px instead of 256 px": {"patch_px": 512},
        "0.25 um/px instead of 0.5 um/px": {"target_mpp": 0.25},
        "resize 224 instead of None": {"resize": 224},
        "mean [0.5, 0.5, 0.5] instead of": {"mean": (0.5, 0.5, 0.5)},
        "weights 'resnet50-0676ba61.pth sha256:bbbb' instead of": {
            "weights": "resnet50-0676ba61.pth sha256:bbbb"
        },
        "weights 'random (untrained)' instead of": {"weights": "random (untrained)"},
    }
    for reason, change in cases.items():
        msg = encoder_mismatch(exp, exp.replace(**change))
        assert msg is not None and reason in msg, (reason, msg)
        assert msg.startswith("features from ") and msg.endswith("with the expected encoder.")
    morph = {"name": "morphometric", "dim": 64, "version": 1, "standardize": True}
    assert "version 2 instead of 1" in encoder_mismatch(morph, {**morph, "version": 2})
    assert "standardize False" in encoder_mismatch(morph, {**morph, "standardize": False})
    # entries one side does not record are not compared
    assert encoder_mismatch({"name": "morphometric", "dim": 64}, morph) is None


# ----------------------------------------------------------------------------- from_spec


def test_from_spec_rebuilds_each_builtin(resnet50_weights, tmp_path):
    # morphometric: geometry and standardisation from the spec
    morph = create_encoder("morphometric", standardize=False, target_mpp=0.25, patch_px=512)
    again = from_spec(morph.spec().to_dict())
    assert again.spec() == morph.spec() and again.standardize is False
    with pytest.raises(EncoderError, match="v2"):
        from_spec({**morph.spec().to_dict(), "version": 2})
    # resnet50_trunc: resize from the spec, weights as an override
    res = create_encoder("resnet50_trunc", weights=resnet50_weights, resize_to=224)
    rebuilt = from_spec(res.spec(), weights=resnet50_weights)
    assert rebuilt.spec() == res.spec() and rebuilt.input_size == 224
    batch = torch.from_numpy(np.full((1, 256, 256, 3), 120, np.uint8))
    torch.testing.assert_close(rebuilt.encode(batch), res.encode(batch))
    # torchscript: dim, preprocessing and name from the spec, the file as an override
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(_Tiny().eval()), path)
    ts = create_encoder("torchscript", path=path, dim=16, input_size=64, mean=(0.5,) * 3,
                        std=(0.25,) * 3, name="my-encoder")
    with pytest.raises(EncoderError, match="no registered encoder builds.*'my-encoder'"):
        from_spec(ts.spec(), path=path)
    back = from_spec(ts.spec(), using="torchscript", path=path)
    assert back.spec() == ts.spec()
    plain = create_encoder("torchscript", path=path, dim=16)
    assert from_spec(plain.spec(), path=path).spec() == plain.spec()
    with pytest.raises(EncoderError, match="needs its model file: give it as the encoder") as e:
        from_spec(plain.spec())
    assert "--" not in str(e.value) and "path=" not in str(e.value)
    with pytest.raises(EncoderError, match="unknown encoder 'nope'"):
        from_spec({"name": "x", "dim": 2}, using="nope")


# ----------------------------------------------------------------------------- families


def test_prefix_family_and_describe_encoders(tmp_path, monkeypatch):
    from napari_ghanet.encoders import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    built = []

    @register_encoder("dummy:")
    class Dummy(PatchEncoder):
        name = "dummy:"
        dim = 4
        input_size = 32
        target_mpp = 1.0

        def __init__(self, arch: str, width: int = 4, patch_px: int = 256,
                     target_mpp: float = 1.0):
            super().__init__(input_size=32, patch_px=patch_px, target_mpp=target_mpp)
            built.append(arch)
            self.name, self.dim = f"dummy:{arch}", width

        @classmethod
        def find_weights(cls):
            return tmp_path / "dummy.bin" if (tmp_path / "dummy.bin").exists() else None

        def forward(self, x):
            return x.mean((2, 3)).repeat(1, 2)[:, : self.dim]

    enc = create_encoder("dummy:small_v2", width=6)
    assert built == ["small_v2"] and enc.name == "dummy:small_v2" and enc.dim == 6
    assert from_spec(enc.spec()).name == "dummy:small_v2" and built[-1] == "small_v2"
    with pytest.raises(EncoderError, match="needs an architecture"):
        create_encoder("dummy:")
    rows = {r["name"]: r for r in describe_encoders()}
    # a prefix family is listed with a placeholder for its architecture
    assert rows["dummy:<arch>"] == {"name": "dummy:<arch>", "dim": 4, "input_size": 32, "patch_px": 256,
                              "target_mpp": 1.0, "weights": "missing"}
    (tmp_path / "dummy.bin").write_bytes(b"w")
    assert {r["name"]: r for r in describe_encoders()}["dummy:<arch>"]["weights"] == (
        f"found: {tmp_path / 'dummy.bin'}"
    )
    assert rows["morphometric"]["weights"] == "none needed"
    assert rows["resnet50_trunc"]["dim"] == 1024
    assert rows["resnet50_trunc"]["weights"] in ("missing", f"found: {find_resnet50_weights()}")
    assert rows["torchscript"]["dim"] is None
    assert list(rows) == sorted(rows)


def test_stain_vectors_are_defined_once():
    from napari_ghanet.datasets import synthetic
    from napari_ghanet.encoders import morphometric
    from napari_ghanet.preprocessing import stain

    assert synthetic.STAIN_VECTORS is stain.STAIN_VECTORS
    assert morphometric.HEMATOXYLIN_OD is stain.HEMATOXYLIN_OD
    assert morphometric.EOSIN_OD is stain.EOSIN_OD
