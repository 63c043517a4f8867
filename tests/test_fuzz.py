"""Seeded fuzz over damaged bundles (issue 12): random byte flips and truncations of a
small valid bundle, and random mutations of its JSON metadata. Every outcome is either a
BundleError or a bundle that loads, answers its metadata questions and predicts finite
numbers (or a PredictionError, never a report) on a small random bag."""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import torch

from napari_ghanet.errors import BundleError, PredictionError
from napari_ghanet.inference.checks import require_finite
from napari_ghanet.models.bundle import load_bundle, save_bundle
from napari_ghanet.models.ghanet import GHANet, GHANetConfig

SIZES = (2, 3)
WEIRD = [None, -1, 0, 1, 10**9, 1e308, -0.5, "abc", "", [], {}, [None], [1, "x"], True,
         "x" * 300, [[[[[[1]]]]]], {"a": {"b": 1}}]


def _bundle(tmp_path):
    torch.manual_seed(0)
    model = GHANet(GHANetConfig(omic_sizes=SIZES, num_tokens=2, input_dim=8, width=16,
                                heads=2, dim_head=8, gate_dim=8, compress_dim=8, ffn_mult=2))
    meta = {
        "encoder": {"name": "morphometric", "dim": 8, "patch_px": 256, "target_mpp": 0.5},
        "categories": [{"name": "a", "genes": ["g1", "g2"]}, {"name": "b", "genes": ["h1"] * 3}],
        "survival_bins_months": [0.0, 10.0, 20.0, 40.0, None],
        "risk_quantiles": {"probs": [0.0, 0.5, 1.0], "values": [-3.5, -2.0, -0.5]},
        "risk_groups": {"cutoffs": [-2.0], "labels": ["low", "high"]},
        "intended_use": "Research only.",
    }
    return save_bundle(tmp_path / "good.safetensors", model.eval(), meta)


def _use(path, bag) -> str:
    """'refused' / 'finite' / 'non-finite refused'; any other exception fails the test."""
    try:
        b = load_bundle(path)
    except BundleError as e:
        assert "\n" not in str(e)
        return "refused"
    # the metadata questions the prediction asks must all be answerable
    assert b.encoder.dim >= 1 and isinstance(b.intended_use, str)
    assert len(b.category_names) == len(b.gene_names) and len(b.bin_edges_months) >= 2
    assert 0.0 <= b.percentile(-2.5) <= 100.0 and isinstance(b.risk_group(-2.5), str)
    with torch.inference_mode():
        out = b.model.forward_bag(bag)
    try:
        for name in ("risk", "survival", "hazards", "morphology_attention", "genome_attention"):
            require_finite(name, getattr(out, name).numpy())
    except PredictionError:
        return "non-finite refused"
    return "finite"


def _mutate(obj, rng, depth=0):
    """A copy of ``obj`` with one random value replaced, deleted or nested."""
    obj = copy.deepcopy(obj)
    node, parent_key = obj, None
    for _ in range(int(rng.integers(1, 5))):
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(
            node, list) else []
        if not keys:
            break
        k = keys[int(rng.integers(len(keys)))]
        if not isinstance(node[k], dict | list) or rng.random() < 0.3:
            parent_key = k
            break
        node = node[k]
    if parent_key is None:
        return obj
    if isinstance(node, dict) and rng.random() < 0.2:
        del node[parent_key]
    else:
        node[parent_key] = copy.deepcopy(WEIRD[int(rng.integers(len(WEIRD)))])
    return obj


def test_fuzzed_bundles_give_bundle_error_or_finite_numbers(tmp_path):
    good = _bundle(tmp_path)
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["ghanet"])
    bag = torch.from_numpy(np.random.default_rng(1).normal(size=(9, 8)).astype(np.float32))
    assert _use(good, bag) == "finite"
    rng = np.random.default_rng(12)
    outcomes: dict[str, int] = {}
    path = tmp_path / "fuzz.safetensors"
    for i in range(120):
        data = bytearray(raw)
        if i % 3 == 0:  # truncation
            data = data[: int(rng.integers(0, len(data)))]
        elif i % 3 == 1:  # byte flips, anywhere
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
                data[pos] ^= 1 << int(rng.integers(8))
        else:  # a metadata mutation, written as a well-formed safetensors file
            h = dict(header)
            h["__metadata__"] = {"ghanet": json.dumps(_mutate(meta, rng))}
            body = json.dumps(h).encode()
            body += b" " * ((8 - len(body) % 8) % 8)
            data = bytearray(struct.pack("<Q", len(body)) + body + raw[8 + n :])
        path.write_bytes(bytes(data))
        result = _use(path, bag)
        outcomes[result] = outcomes.get(result, 0) + 1
    assert outcomes.get("refused", 0) > 40 and outcomes.get("finite", 0) > 10, outcomes
