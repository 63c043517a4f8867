"""A bundle's encoder spec is untrusted input (issue 19): each crafted spec is refused with
a one-line BundleError naming the bundle and the field before any encoder is built, or
(when harmless) gives a complete, finite prediction."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_ghanet.encoders import registry, spec_rules
from napari_ghanet.encoders.registry import from_spec
from napari_ghanet.errors import BundleError
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.io.slide import cmu_slide_path
from napari_ghanet.models.bundle import load_bundle, read_bundle_metadata, save_bundle
from napari_ghanet.models.ghanet import GHANet, GHANetConfig

SIZES = (3, 5, 4, 2, 6, 3)
MORPH = {"name": "morphometric", "dim": 64, "patch_px": 64, "target_mpp": 2.0}
#: a small ViT (32 px input, 8 px patches, 32 wide): 17 tokens, builds in milliseconds
VIT_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
VIT = {"name": "timm:vit_tiny_patch16_224", "dim": 32, "patch_px": 64, "target_mpp": 2.0,
       "resize": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
       "extra": {"resize_to": 32, "interpolation": "bilinear", "pool": "head",
                 "model_args": VIT_ARGS}}


def _model(dim: int) -> GHANet:
    torch.manual_seed(0)
    return GHANet(GHANetConfig(omic_sizes=SIZES, input_dim=dim, width=32, heads=2, dim_head=16,
                               gate_dim=16, compress_dim=8, ffn_mult=2)).eval()


def _metadata(encoder: dict) -> dict:
    return {
        "encoder": encoder,
        "categories": [{"name": f"cat{i}", "genes": [f"G{i}_{j}" for j in range(s)]}
                       for i, s in enumerate(SIZES)],
        "survival_bins_months": [0.0, 10.0, 20.0, 40.0, 200.0],
        "risk_quantiles": {"probs": [0.0, 0.5, 1.0], "values": [-3.5, -2.0, -0.5]},
        "intended_use": "Research only.",
    }


def _craft(path: Path, encoder: dict, dim: int = 32) -> Path:
    """A bundle whose metadata holds ``encoder`` as is (written around save_bundle's
    checks, as an attacker would)."""
    model = _model(dim)
    meta = {**_metadata(encoder), "format": "napari-ghanet-bundle", "format_version": 1,
            "model": {"name": "ghanet", "config": model.config.to_dict()}}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"ghanet": json.dumps(meta)})
    return path


def _vit(**changes) -> dict:
    spec = copy.deepcopy(VIT)
    for key, value in changes.items():
        if key in spec["extra"]["model_args"] or key in spec_rules.ARCH_ARGS or key in (
                "checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                "cache_dir", "hf_hub_id", "mlp_layer", "url", "weights_url", "num_classes"):
            spec["extra"]["model_args"][key] = value
        elif key in spec["extra"]:
            spec["extra"][key] = value
        else:
            spec[key] = value
    return spec


def _refused(path: Path, *fields: str) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 2000
    assert str(path) in msg
    for f in fields:
        assert f in msg, msg
    with pytest.raises(BundleError):
        read_bundle_metadata(path)
    return msg


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test when timm builds a real network or anything is torch.load-ed."""
    import timm

    calls = []
    real_create = timm.create_model

    def create(*args, **kw):
        if torch.empty(0).device.type != "meta":  # only meta-device dry builds allowed
            calls.append(("create_model", args, kw))
        return real_create(*args, **kw)

    monkeypatch.setattr(timm, "create_model", create)
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(("torch.load", a)))
    yield calls
    assert calls == []


# --------------------------------------------------------------------------- crafted specs


CRAFTED = {
    # the four attacks
    "width not divisible by heads": (_vit(embed_dim=33, num_heads=2), "divisible"),
    "width not divisible by the default heads": (
        {**_vit(), "extra": {**VIT["extra"], "model_args": {"img_size": 32, "patch_size": 8,
                                                            "embed_dim": 32, "depth": 1}}},
        "cannot be built"),
    "checkpoint_path to a pickle": (_vit(checkpoint_path="PICKLE"), "model_args.checkpoint_path"),
    "patch_px 1": ({**MORPH, "patch_px": 1}, "encoder.patch_px"),
    "enormous resize target": (_vit(resize_to=10_000_000), "resize_to"),
    "enormous resize": ({**MORPH, "resize": 600_000}, "encoder.resize"),
    # loader / network keywords, anywhere
    "pretrained": (_vit(pretrained=True), "model_args.pretrained"),
    "pretrained_cfg": (_vit(pretrained_cfg={"url": "http://x"}), "pretrained_cfg"),
    "pretrained_cfg_overlay": (_vit(pretrained_cfg_overlay={"file": "/etc/passwd"}),
                               "pretrained_cfg_overlay"),
    "cache_dir": (_vit(cache_dir="/tmp"), "cache_dir"),
    "hf_hub_id": (_vit(hf_hub_id="evil/model"), "hf_hub_id"),
    "a url keyword": (_vit(weights_url="https://example.com/w.pth"), "weights_url"),
    "a loader key at the top": ({**MORPH, "checkpoint_path": "PICKLE"}, "encoder.checkpoint_path"),
    "a loader key in extra": ({**MORPH, "extra": {"cache_dir": "/tmp"}}, "encoder.extra.cache_dir"),
    # the allow-list: types, ranges, names
    "unknown timm argument": (_vit(num_classes=1000), "not an allowed timm architecture"),
    "layer by an import path": (_vit(mlp_layer="os.system"), "mlp_layer"),
    "depth a string": (_vit(depth="12"), "model_args.depth"),
    "heads 0": (_vit(num_heads=0), "model_args.num_heads"),
    "img_size not divisible by patch": (_vit(img_size=36), "divisible"),
    "model_args a list": (_vit(model_args=[1, 2]), "model_args"),
    "model_args for a non-timm encoder": ({**MORPH, "model_args": {"depth": 1}},
                                          "only read for timm"),
    # the meta-device budget
    "51 billion parameters": (_vit(embed_dim=8192, num_heads=64, depth=64, img_size=1024,
                                  resize=1024, resize_to=1024, patch_size=64),
                             "parameters"),
    "a quarter million tokens": (_vit(img_size=1024, patch_size=2, resize=1024, resize_to=1024),
                                 "tokens"),
    "attention scores": (_vit(img_size=256, patch_size=8, embed_dim=64, num_heads=64,
                              resize=256, resize_to=256), "attention"),
    "input the network refuses": (_vit(resize=48, resize_to=48), "image size 32"),
    # names
    "unregistered name": ({**MORPH, "name": "evil"}, "not a registered encoder"),
    "unknown timm architecture": ({**VIT, "name": "timm:no_such_net"}, "not a timm architecture"),
    # geometry and preprocessing ranges
    "target_mpp 0": ({**MORPH, "target_mpp": 0}, "encoder.target_mpp"),
    "target_mpp 1e9": ({**MORPH, "target_mpp": 1e9}, "encoder.target_mpp"),
    "patch side 16 mm": ({**MORPH, "patch_px": 1024, "target_mpp": 16.0}, "patch side"),
    "std 0": ({**MORPH, "std": [0.0, 0.2, 0.2]}, "encoder.std"),
    "mean 1e30": ({**MORPH, "mean": [1e30, 0, 0]}, "encoder.mean"),
    "mean of 4": ({**MORPH, "mean": [0.5] * 4}, "encoder.mean"),
    "resize_to below resize": (_vit(resize_to=16), "resize_to"),
    "interpolation nearest": (_vit(interpolation="nearest"), "interpolation"),
    "pool evil": (_vit(pool="evil"), "pool"),
    "standardize as text": ({**MORPH, "standardize": "no"}, "standardize"),
    "descriptor version 2": ({**MORPH, "version": 2}, "version"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_spec_is_refused_in_one_line(tmp_path, case, no_build):
    spec, field = CRAFTED[case]
    pickled = tmp_path / "evil.pkl"
    pickled.write_bytes(pickle.dumps({"boom": 1}))
    spec = json.loads(json.dumps(spec).replace("PICKLE", str(pickled)))
    path = _craft(tmp_path / f"{case.replace(' ', '_')}.safetensors", spec)
    built = []
    real = registry.from_spec
    monkey = pytest.MonkeyPatch()
    monkey.setattr(registry, "from_spec", lambda *a, **k: (
        built.append(k.get("device")), real(*a, **k))[1])
    try:
        _refused(path, field)
    finally:
        monkey.undo()
    assert all(d == "meta" for d in built)  # nothing but the meta-device dry build
    with pytest.raises(BundleError, match="invalid bundle metadata"):
        save_bundle(tmp_path / "again.safetensors", _model(spec.get("dim", 32) if isinstance(
            spec.get("dim"), int) else 32), _metadata(spec))
    assert not (tmp_path / "again.safetensors").exists()


def test_the_cli_names_the_bundle_and_field_without_a_traceback(tmp_path):
    bad = _craft(tmp_path / "evil.safetensors", _vit(checkpoint_path=str(tmp_path / "x.pkl")))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", "import sys; from napari_ghanet.cli import main;"
                        " sys.exit(main(sys.argv[1:]))", "predict", str(cmu_slide_path()),
                        "--model", str(bad), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NAPARI_GHANET_CACHE": str(tmp_path / "cache")})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr  # as for every other bad bundle
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(bad) in lines[0] and "model_args.checkpoint_path" in lines[0]
    assert not out.exists()


# --------------------------------------------------------------------------- what passes


def _vit_weights(tmp_path: Path, spec: dict) -> Path:
    """A seeded random weights file for the network ``spec`` describes."""
    enc = from_spec(spec, pretrained=False)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(path))
    return path


def _finite(pred) -> None:
    assert np.isfinite(pred.risk) and 0.0 <= pred.percentile <= 100.0
    for name in ("hazards", "survival", "morphology_attention", "genome_attention"):
        assert np.isfinite(np.asarray(getattr(pred, name))).all(), name
    assert len(pred.categories) == len(SIZES)


def test_a_sound_timm_spec_predicts_with_the_users_weights(tmp_path):
    bundle = load_bundle(save_bundle(tmp_path / "vit-model.safetensors", _model(32),
                                     _metadata(VIT)))
    weights = _vit_weights(tmp_path, VIT)
    pred = predict_slide(cmu_slide_path(), bundle, device="cpu", weights=weights,
                         backend="torch", cache_dir=tmp_path / "cache")
    _finite(pred)


def test_card_layers_travel_by_name_and_round_trip(tmp_path):
    from timm.layers import SwiGLUPacked

    spec = _vit(mlp_layer="SwiGLUPacked", act_layer="SiLU")
    assert spec_rules.spec_problems(spec) == []
    enc = from_spec(spec, pretrained=False)
    assert enc.model_args["mlp_layer"] is SwiGLUPacked
    assert type(enc.model.blocks[0].mlp).__name__ == "GluMlp"
    again = enc.spec().to_dict()
    assert again["model_args"]["mlp_layer"] == "SwiGLUPacked"  # JSON, as the cards name it
    json.dumps(again)
    assert spec_rules.spec_problems(again) == []


def test_the_allow_list_follows_the_registered_cards(monkeypatch):
    """Keywords of cards registered later (another module) are allowed without editing the
    rules; a keyword no card uses stays refused."""
    from napari_ghanet.encoders.timm_models import FOUNDATION_MODELS

    assert "pool_include_prefix" not in spec_rules.allowed_model_args()
    card = FOUNDATION_MODELS["uni"]
    late = type("LateCard", (), {"card": type(card)(**{
        **{f: getattr(card, f) for f in card.__dataclass_fields__},
        "name": "late-card", "model_args": lambda: {"img_size": 224,
                                                    "pool_include_prefix": True}})})
    monkeypatch.setitem(registry._REGISTRY, "late-card", late)
    rules = spec_rules.allowed_model_args()
    assert rules["pool_include_prefix"](True) is None
    assert rules["pool_include_prefix"]("yes") is not None
    monkeypatch.delitem(registry._REGISTRY, "late-card")
    assert "pool_include_prefix" not in spec_rules.allowed_model_args()


def test_every_registered_card_passes_its_own_rules():
    """The cards' arguments (TRIDENT's too) are inside the allow-list and its ranges."""
    rules = spec_rules.allowed_model_args()
    cards = spec_rules._cards()
    assert len(cards) >= 5
    for card in cards:
        for key, value in spec_rules.layer_names(card.model_args()).items():
            assert key in rules, (card.name, key)
            assert rules[key](value) is None, (card.name, key, value)


def test_the_demo_bundle_and_the_foundation_specs_pass():
    from napari_ghanet.models.bundle import demo_bundle_path

    assert spec_rules.spec_problems(read_bundle_metadata(demo_bundle_path())["encoder"]) == []
    for name in ("uni", "virchow2", "gigapath"):
        enc = from_spec({"name": name, "dim": 1}, device="meta")
        assert spec_rules.spec_problems(enc.spec().to_dict()) == [], name


# --------------------------------------------------------------------------- fuzz

WEIRD = [None, -1, 0, 1, 10**9, 1e308, -0.5, 1.5, "abc", "", "8", [], {}, [8], True,
         "x" * 300, {"a": 1}, "https://example.com/w.pth", "/etc/passwd"]
#: sound values: patches of at most 256 um, so the real slide always has tissue patches
GOOD = {
    "patch_px": [32, 64, 128], "target_mpp": [1.0, 2.0], "resize": [None, 0, 32, 64],
    "mean": [[0.5, 0.5, 0.5], [0.7, 0.6, 0.7]], "std": [[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]],
    "standardize": [True, False], "version": [1], "name": ["morphometric"],
    "dim": [64], "extra": [{}, {"note": "x"}], "model_args": [], "cache_dir": [],
}
#: sound values of the small ViT: at most 48 wide, 2 deep, 64 px (a real build is cheap)
VIT_ARGS_GOOD = {
    "img_size": [32, 64], "patch_size": [4, 8, 16], "embed_dim": [16, 32, 48],
    "depth": [1, 2], "num_heads": [1, 2, 4], "mlp_ratio": [1.0, 2.0], "reg_tokens": [0, 2],
    "class_token": [True], "global_pool": ["token", "avg"], "init_values": [None, 1e-5],
    "checkpoint_path": [], "pretrained": [], "drop_rate": [],
}
VIT_EXTRA_GOOD = {"resize_to": [32, 40], "interpolation": ["bicubic"], "pool": ["head"]}
VIT_TOP_GOOD = {"resize": [32], "mean": [[0.5, 0.5, 0.5]], "patch_px": [32, 64]}


def _pick(rng, pool: list):
    """A sound value half of the time (when the field has any), else a weird one."""
    pool = pool if pool and rng.random() < 0.5 else WEIRD
    return copy.deepcopy(pool[int(rng.integers(len(pool)))])


def _fuzz_cases(seed: int, n: int, vit: bool):
    """``n`` specs, each the sound base with one or two fields set from the pools."""
    rng = np.random.default_rng(seed)
    places = ([("model_args", VIT_ARGS_GOOD), ("extra", VIT_EXTRA_GOOD), ("top", VIT_TOP_GOOD)]
              if vit else [("top", GOOD)])
    fields = [(where, key) for where, pools in places for key in pools]
    for _ in range(n):
        spec = copy.deepcopy(VIT if vit else MORPH)
        for j in rng.choice(len(fields), size=int(rng.integers(1, 3)), replace=False):
            where, key = fields[int(j)]
            value = _pick(rng, dict(places)[where][key])
            if where == "model_args":
                spec["extra"]["model_args"][key] = value
            elif where == "extra":
                spec["extra"][key] = value
            else:
                spec[key] = value
        yield spec


def _outcome(tmp_path: Path, i: int, spec: dict, dim: int, vit: bool) -> str:
    path = _craft(tmp_path / f"f{i}.safetensors", spec, dim)
    try:
        bundle = load_bundle(path)
    except BundleError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return "refused"
    kw = {}
    if vit:  # accepted: the network is small by construction of the pools; give weights
        kw["weights"] = _vit_weights(tmp_path, bundle.encoder.to_dict())
    try:
        pred = predict_slide(cmu_slide_path(), bundle, device="cpu", backend="torch",
                             cache_dir=tmp_path / "cache", **kw)
    except BundleError as e:  # e.g. EncoderMismatchError: features that do not fit
        assert "\n" not in str(e)
        return "refused"
    _finite(pred)
    return "finite"


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_morphometric_specs(tmp_path, seed):
    seen = [_outcome(tmp_path, i, spec, 64, vit=False)
            for i, spec in enumerate(_fuzz_cases(seed, 14, vit=False))]
    assert "refused" in seen and "finite" in seen, seen


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_timm_specs(tmp_path, seed):
    seen = [_outcome(tmp_path, i, spec, 32, vit=True)
            for i, spec in enumerate(_fuzz_cases(seed, 14, vit=True))]
    assert "refused" in seen and "finite" in seen, seen


def test_a_features_only_name_loads_but_builds_nothing(tmp_path):
    """The synthetic training cohorts' bundles load (their model scores features), but
    nothing is built from the name: predicting from a slide is one line."""
    from napari_ghanet.errors import PredictionError

    spec = {"name": "synthetic", "dim": 32, "patch_px": 256, "target_mpp": 0.5}
    bundle = load_bundle(save_bundle(tmp_path / "synth.safetensors", _model(32),
                                     _metadata(spec)))
    assert bundle.encoder.name == "synthetic"
    with pytest.raises(PredictionError, match="cannot build the model's patch encoder") as e:
        predict_slide(cmu_slide_path(), bundle, device="cpu", cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)
    _refused(_craft(tmp_path / "s2.safetensors", {**spec, "model_args": {"depth": 1}}),
             "only read for timm")
