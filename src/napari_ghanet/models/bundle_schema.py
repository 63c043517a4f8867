"""Checks on a model bundle that run before anything is allocated.

A bundle is untrusted input: its metadata decides which model is built (and so how much
memory is allocated) and its header declares the tensors. This module reads the
safetensors header itself (8-byte little-endian length + JSON, never more than
:data:`MAX_HEADER_BYTES`), refuses deeply nested JSON before parsing it, checks the
metadata against a schema (types, ranges, lengths, caps on every size) and compares the
declared tensors with those the config implies, all without reading a weight.
:mod:`napari_ghanet.models.bundle` then builds the model and reads the weights one tensor
at a time (floating point only, every value finite).

Every problem is a :class:`~napari_ghanet.errors.BundleError` with a one-line message;
when several fields are wrong, the message lists them (``; ``-separated).

Examples
--------
>>> from napari_ghanet.models.bundle_schema import metadata_problems
>>> metadata_problems({"format": "napari-ghanet-bundle", "format_version": "9"})[:2]
["'format_version' must be a whole number, got '9'", "missing field 'model'"]
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.encoders.spec_rules import spec_problems
from napari_ghanet.errors import BundleError
from napari_ghanet.models import baselines
from napari_ghanet.models.distribution_summary import summary_problems
from napari_ghanet.models.ghanet import GHANetConfig

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MAX_ENSEMBLE_MEMBERS",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_BYTES",
    "MAX_PARAMETERS",
    "SafetensorsHeader",
    "TensorEntry",
    "check_json_depth",
    "metadata_problems",
    "parse_json",
    "read_header",
    "validate_metadata",
]

BUNDLE_FORMAT = "napari-ghanet-bundle"
BUNDLE_FORMAT_VERSION = 1

MAX_HEADER_BYTES = 32 * 2**20
MAX_METADATA_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 32
MAX_TEXT = 20_000  # intended_use and other free text, characters
MAX_NAME = 200
MAX_CATEGORIES = 256
MAX_GENES = 100_000  # per category
MAX_BINS = 1_000
MAX_QUANTILES = 100_001
MAX_ENSEMBLE_MEMBERS = 64
MAX_SIZE = 65_536  # any width / hidden size / feature dimension
MAX_PARAMETERS = 500_000_000  # 2 GB of float32 weights
_SMALL_CAPS = {"num_tokens": MAX_CATEGORIES, "heads": 256, "n_bins": MAX_BINS, "ffn_mult": 64,
               "depth": 64, "omic_depth": 64}

REQUIRED_FIELDS = (
    "format",
    "format_version",
    "model",
    "encoder",
    "categories",
    "survival_bins_months",
    "risk_quantiles",
    "intended_use",
)

# safetensors dtype -> bytes per element
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# --------------------------------------------------------------------------- JSON


def check_json_depth(text: str, max_depth: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of the JSON ``text`` (brackets outside strings), checked before parsing.

    Raises BundleError (a ValueError) when it exceeds ``max_depth``, so ``json.loads`` never recurses deeply.

    Examples
    --------
    >>> check_json_depth('{"a": [1, {"b": "[[[["}]}')
    3
    """
    stripped = _STRING_RE.sub('""', text).encode("utf-8", "replace")
    arr = np.frombuffer(stripped, dtype=np.uint8)
    step = np.zeros(arr.shape, np.int32)
    step[(arr == ord("[")) | (arr == ord("{"))] = 1
    step[(arr == ord("]")) | (arr == ord("}"))] = -1
    depth = int(np.cumsum(step).max()) if step.size else 0
    if depth > max_depth:
        raise BundleError(f"JSON nested {depth} levels deep (at most {max_depth} allowed)")
    return depth


def parse_json(text: str | bytes, what: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` with size and depth limits; BundleError naming ``what`` otherwise."""
    if len(text) > max_bytes:
        raise BundleError(
            f"{what} is {len(text) / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB "
            "a bundle may hold"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BundleError(f"{what} is not UTF-8 text ({e.reason})") from None
    try:
        check_json_depth(text, max_depth)
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BundleError(f"{what} is not valid JSON ({str(e)[:200]})") from None


# --------------------------------------------------------------------------- header


class TensorEntry:
    """One tensor declared in a safetensors header."""

    __slots__ = ("name", "dtype", "shape", "start", "end")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], start: int, end: int):
        self.name, self.dtype, self.shape, self.start, self.end = name, dtype, shape, start, end

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class SafetensorsHeader:
    """A parsed, checked safetensors header: ``tensors`` by name and ``metadata`` strings."""

    def __init__(self, tensors: dict[str, TensorEntry], metadata: dict[str, str], size: int):
        self.tensors = tensors
        self.metadata = metadata
        self.file_size = size


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and check the header of a ``.safetensors`` file without reading any tensor.

    The declared length must fit in the file and in :data:`MAX_HEADER_BYTES`; every
    tensor must have a known dtype, a shape whose byte count equals its data range, and a
    range inside the file.
    """
    path = Path(path)
    bad = f"{path} is not a readable .safetensors model bundle (corrupt or truncated?)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BundleError(f"{bad}: only {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise BundleError(
                    f"{bad}: its header claims {n} bytes but the file has {size - 8} after "
                    f"the length field (at most {MAX_HEADER_BYTES} allowed)"
                )
            raw = fh.read(n)
    except OSError as e:
        raise BundleError(f"{path}: cannot read the file ({e.strerror or e})") from e
    header = parse_json(raw, f"{path}: the safetensors header", MAX_HEADER_BYTES, 8)
    if not isinstance(header, dict):
        raise BundleError(f"{bad}: the header is not a JSON object")
    data_size = size - 8 - n
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BundleError(f"{bad}: '__metadata__' must map names to strings")
    tensors: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        where = f"{bad}: tensor {_short(name)}"
        if not isinstance(entry, dict):
            raise BundleError(f"{where} has no description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise BundleError(f"{where} has the unknown dtype {_short(dtype)}")
        if not (
            isinstance(shape, list)
            and len(shape) <= 8
            and all(type(s) is int and 0 <= s <= 2**40 for s in shape)
        ):
            raise BundleError(f"{where} has the invalid shape {_short(shape)}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise BundleError(f"{where} has invalid data offsets {_short(offsets)}")
        if offsets[1] > data_size:
            raise BundleError(
                f"{where} lies beyond the end of the file (declares bytes up to "
                f"{offsets[1]}, the file holds {data_size})"
            )
        if math.prod(shape) * DTYPE_SIZES[dtype] != offsets[1] - offsets[0]:
            raise BundleError(
                f"{where} declares shape {shape} of {dtype} but {offsets[1] - offsets[0]} bytes"
            )
        tensors[name] = TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
    return SafetensorsHeader(tensors, meta, size)


# --------------------------------------------------------------------------- metadata


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _text(problems: list[str], name: str, v: Any, limit: int, empty_ok: bool = False) -> None:
    if not isinstance(v, str):
        problems.append(f"{name!r} must be text, got {type(v).__name__}")
    elif len(v) > limit:
        problems.append(f"{name!r} is {len(v)} characters long (at most {limit})")
    elif not empty_ok and not v.strip():
        problems.append(f"{name!r} is empty")


def _config_class(name: str):
    if name == "ghanet":
        return GHANetConfig
    entry = getattr(baselines, "_BASELINES", {}).get(name)
    return entry[1] if entry else None


def _check_config(problems: list[str], where: str, name: Any, config: Any) -> None:
    if not isinstance(name, str) or not name:
        problems.append(f"'{where}.name' must be a model name, got {_short(name)}")
        return
    cls = _config_class(name)
    if cls is None:
        problems.append(f"unknown model {_short(name)} in '{where}.name'")
        return
    if config is None:
        config = {}
    if not isinstance(config, dict):
        problems.append(f"'{where}.config' must be an object, got {type(config).__name__}")
        return
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(config) - set(known))
    if unknown:
        problems.append(f"'{where}.config' has unknown field(s) {unknown[:8]}")
    values = {}
    for key, f in known.items():
        default = f.default if f.default is not MISSING else None
        v = config.get(key, default)
        values[key] = v
        label = f"'{where}.config.{key}'"
        if isinstance(default, bool):
            if not isinstance(v, bool):
                problems.append(f"{label} must be true or false, got {_short(v)}")
        elif isinstance(default, int):
            cap = _SMALL_CAPS.get(key, MAX_SIZE)
            if not _is_int(v) or not 1 <= v <= cap:
                problems.append(f"{label} must be a whole number from 1 to {cap}, got {_short(v)}")
        elif isinstance(default, float):
            lo_open = key == "ratio"
            ok = _is_num(v) and (0 < v <= 1 if lo_open else 0 <= v < 1)
            if not ok:
                rng = "(0, 1]" if lo_open else "[0, 1)"
                problems.append(f"{label} must be a number in {rng}, got {_short(v)}")
        elif isinstance(default, tuple):
            if not (
                isinstance(v, list | tuple)
                and 1 <= len(v) <= MAX_CATEGORIES
                and all(_is_int(s) and 1 <= s <= MAX_GENES for s in v)
            ):
                problems.append(
                    f"{label} must be a list of 1-{MAX_CATEGORIES} whole numbers from 1 to "
                    f"{MAX_GENES}, got {_short(v)}"
                )
    if name == "ghanet" and not problems:
        if len(values["omic_sizes"]) != values["num_tokens"]:
            problems.append(
                f"'{where}.config.omic_sizes' has {len(values['omic_sizes'])} entries for "
                f"{values['num_tokens']} tokens"
            )
        if values["heads"] * values["dim_head"] != values["width"]:
            problems.append(f"'{where}.config': heads x dim_head must equal width")


def _check_model(problems: list[str], model: Any) -> None:
    if not isinstance(model, dict):
        problems.append(f"'model' must be an object, got {type(model).__name__}")
        return
    if model.get("name") == "ensemble":
        n = model.get("n_members")
        if not _is_int(n) or not 1 <= n <= MAX_ENSEMBLE_MEMBERS:
            problems.append(
                f"'model.n_members' must be a whole number from 1 to {MAX_ENSEMBLE_MEMBERS}, "
                f"got {_short(n)}"
            )
        member = model.get("member")
        if not isinstance(member, dict):
            problems.append("'model.member' must be a model object")
        elif member.get("name") == "ensemble":
            problems.append("'model.member' cannot itself be an ensemble")
        else:
            _check_config(problems, "model.member", member.get("name"), member.get("config"))
        return
    _check_config(problems, "model", model.get("name"), model.get("config"))


def _check_encoder(problems: list[str], enc: Any) -> None:
    if not isinstance(enc, dict):
        problems.append(f"'encoder' must be an object, got {type(enc).__name__}")
        return
    _text(problems, "encoder.name", enc.get("name"), MAX_NAME)
    dim = enc.get("dim")
    if not _is_int(dim) or not 1 <= dim <= MAX_SIZE:
        problems.append(
            f"'encoder.dim' must be a whole number from 1 to {MAX_SIZE}, got {_short(dim)}"
        )
    if enc.get("extra") is not None and not isinstance(enc.get("extra"), dict):
        problems.append("'encoder.extra' must be an object")
    # name, geometry, preprocessing, loader keywords, timm arguments and the network's
    # size on the meta device: encoders.spec_rules (docs/security.md)
    problems += spec_problems(enc, build=not problems)


def _check_categories(problems: list[str], cats: Any) -> None:
    if not isinstance(cats, list) or not cats:
        problems.append("'categories' must be a non-empty list of {name, genes} entries")
        return
    if len(cats) > MAX_CATEGORIES:
        problems.append(f"'categories' has {len(cats)} entries (at most {MAX_CATEGORIES})")
        return
    for i, c in enumerate(cats):
        if not isinstance(c, dict):
            problems.append(f"'categories[{i}]' must be a {{name, genes}} object")
            continue
        _text(problems, f"categories[{i}].name", c.get("name"), MAX_NAME)
        genes = c.get("genes")
        if not isinstance(genes, list) or len(genes) > MAX_GENES or not all(
            isinstance(g, str) and len(g) <= MAX_NAME for g in genes
        ):
            problems.append(f"'categories[{i}].genes' must be a list of gene names")


def _check_bins(problems: list[str], edges: Any) -> None:
    msg = (
        f"'survival_bins_months' must be 2 to {MAX_BINS + 1} increasing, finite, "
        "non-negative bin edges (the last may be null for an open end)"
    )
    if not isinstance(edges, list) or not 2 <= len(edges) <= MAX_BINS + 1:
        problems.append(msg)
        return
    body = edges[:-1] if edges[-1] is None else edges
    if not all(_is_num(v) for v in body) or (body and body[0] < 0):
        problems.append(msg)
        return
    if any(b <= a for a, b in zip(body, body[1:])):
        problems.append(msg)


def _check_quantiles(problems: list[str], q: Any) -> None:
    if not isinstance(q, dict):
        problems.append("'risk_quantiles' must be an object with 'probs' and 'values'")
        return
    probs, values = q.get("probs"), q.get("values")
    if not (isinstance(probs, list) and isinstance(values, list)) or not probs or len(
        probs
    ) != len(values):
        problems.append("'risk_quantiles' needs equal-length, non-empty 'probs' and 'values'")
        return
    if len(probs) > MAX_QUANTILES:
        problems.append(f"'risk_quantiles' has {len(probs)} entries (at most {MAX_QUANTILES})")
        return
    if not all(_is_num(p) and 0 <= p <= 1 for p in probs) or any(
        b <= a for a, b in zip(probs, probs[1:])
    ):
        problems.append("'risk_quantiles.probs' must be increasing numbers in [0, 1]")
    if not all(_is_num(v) for v in values):
        problems.append("'risk_quantiles.values' must be finite numbers")
    elif any(b < a for a, b in zip(values, values[1:])):
        problems.append("'risk_quantiles.values' must not decrease")


def _check_groups(problems: list[str], groups: Any) -> None:
    if groups is None:
        return
    if not isinstance(groups, dict):
        problems.append("'risk_groups' must be an object with 'cutpoints' and 'labels'")
        return
    # 'cutpoints' (tertiles, since 0.2) or the older 'cutoffs' (a median split)
    key = "cutpoints" if "cutpoints" in groups else "cutoffs"
    cut, labels = groups.get(key), groups.get("labels")
    if cut is None or cut == []:
        return
    if not isinstance(cut, list) or len(cut) > 100 or not all(_is_num(c) for c in cut) or any(
        b <= a for a, b in zip(cut, cut[1:])
    ):
        problems.append(f"'risk_groups.{key}' must be up to 100 increasing finite numbers")
        return
    if not isinstance(labels, list) or len(labels) != len(cut) + 1 or not all(
        isinstance(s, str) and 0 < len(s) <= MAX_NAME for s in labels
    ):
        problems.append(
            f"'risk_groups.labels' must be {len(cut) + 1} group names (one more than {key})"
        )


def _check_followup(problems: list[str], value: Any) -> None:
    if value is not None and not (_is_num(value) and 0 < value < 10_000):
        problems.append("'followup_p90_months' must be a positive number of months")


def _n_bins(model: Any) -> int | None:
    if not isinstance(model, dict):
        return None
    if model.get("name") == "ensemble":
        model = model.get("member")
        if not isinstance(model, dict):
            return None
    config = model.get("config")
    n = config.get("n_bins", 4) if isinstance(config, dict) else 4
    return n if _is_int(n) else None


def _n_tokens(model: Any) -> int | None:
    if isinstance(model, dict) and model.get("name") == "ensemble":
        model = model.get("member")
    if not isinstance(model, dict) or model.get("name") != "ghanet":
        return None
    config = model.get("config")
    n = config.get("num_tokens", 6) if isinstance(config, dict) else None
    return n if _is_int(n) else None


def metadata_problems(meta: Any) -> list[str]:
    """Every problem of a bundle's metadata (empty when it is sound); see the module doc.

    The format and version are checked first: a newer version stops there, because the
    rest may follow rules this version does not know.
    """
    if not isinstance(meta, dict):
        return [f"the metadata must be a JSON object, got {type(meta).__name__}"]
    problems: list[str] = []
    if meta.get("format") != BUNDLE_FORMAT:
        return ["not a napari-ghanet model bundle ('format' is not napari-ghanet-bundle)"]
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        problems.append(f"'format_version' must be a whole number, got {_short(version)}")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    problems += [f"missing field {k!r}" for k in missing]
    if problems:
        return problems
    if "model" in meta:
        _check_model(problems, meta["model"])
    if "encoder" in meta:
        _check_encoder(problems, meta["encoder"])
    if "categories" in meta:
        _check_categories(problems, meta["categories"])
    if "survival_bins_months" in meta:
        _check_bins(problems, meta["survival_bins_months"])
    if "risk_quantiles" in meta:
        _check_quantiles(problems, meta["risk_quantiles"])
    _check_groups(problems, meta.get("risk_groups"))
    _check_followup(problems, meta.get("followup_p90_months"))
    if "intended_use" in meta:
        _text(problems, "intended_use", meta["intended_use"], MAX_TEXT)
    if meta.get("name") is not None:
        _text(problems, "name", meta["name"], MAX_NAME)
    for key in ("provenance", "genomic_stats", "metrics"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            problems.append(f"{key!r} must be an object, got {type(meta[key]).__name__}")
    if meta.get("distribution") is not None:  # the training-distribution summary
        enc = meta.get("encoder")
        dim = enc.get("dim") if isinstance(enc, dict) and _is_int(enc.get("dim")) else None
        problems += summary_problems(meta["distribution"], dim)
    if problems:
        return problems
    n_bins = _n_bins(meta["model"])
    edges = meta["survival_bins_months"]
    if n_bins is not None and len(edges) != n_bins + 1:
        problems.append(
            f"'survival_bins_months' has {len(edges)} edges but the model predicts {n_bins} "
            f"bins (needs {n_bins + 1})"
        )
    n_tok = _n_tokens(meta["model"])
    if n_tok is not None and len(meta["categories"]) != n_tok:
        problems.append(
            f"'categories' has {len(meta['categories'])} entries but the model has {n_tok} tokens"
        )
    return problems


def validate_metadata(meta: Any, where: str, current_version: str = "") -> dict[str, Any]:
    """Raise one BundleError listing every problem of ``meta``; return it when sound."""
    if isinstance(meta, dict) and meta.get("format") == BUNDLE_FORMAT:
        version = meta.get("format_version")
        if _is_int(version) and version > BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{where} has bundle format version {version}, newer than this napari-ghanet "
                f"({current_version}) reads (<= {BUNDLE_FORMAT_VERSION}): upgrade napari-ghanet"
            )
    problems = metadata_problems(meta)
    if not problems:
        return meta
    if problems[0].startswith("not a napari-ghanet"):
        raise BundleError(f"{where} is not a napari-ghanet model bundle")
    missing = [p.split("'")[1] for p in problems if p.startswith("missing field")]
    others = [p for p in problems if not p.startswith("missing field")]
    shown = others[:6] + ([f"and {len(others) - 6} more"] if len(others) > 6 else [])
    if missing:
        raise BundleError(
            f"{where} lacks the metadata field(s) {missing}" + "".join(f"; {p}" for p in shown)
        )
    raise BundleError(f"{where}: invalid bundle metadata: " + "; ".join(shown))
