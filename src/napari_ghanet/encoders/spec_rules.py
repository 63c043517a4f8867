"""Rules for an encoder spec read from a file: a model bundle's ``encoder`` entry is
untrusted input, checked here before any encoder is built.

A stored :class:`~napari_ghanet.io.encoder_spec.EncoderSpec` decides which network is built
(``timm:<arch>`` with its architecture arguments), how large the patches read from the
slide are and what the preprocessing allocates. :func:`spec_problems` returns one line per
problem, each naming the field and what is allowed (empty when the spec is sound):

* ``name`` must be a registered encoder (a name, a ``family:`` member such as
  ``timm:<arch>`` with an architecture timm knows, or a ``spec_prefix`` such as
  ``torchscript:<stem>``) or one of :data:`FEATURE_ONLY_NAMES` (features no encoder here
  computes, e.g. the synthetic training cohorts: nothing is built from them);
* geometry and preprocessing have ranges: ``patch_px`` :data:`PATCH_PX` px,
  ``target_mpp`` :data:`TARGET_MPP` um/px, the patch side ``patch_px x target_mpp`` at
  most :data:`MAX_PATCH_UM` um, ``resize`` / ``resize_to`` :data:`INPUT_PX` px (null or 0
  for ``resize``), ``mean`` :data:`MEAN_RANGE` and ``std`` :data:`STD_RANGE` (3 numbers
  each), ``interpolation`` and ``pool`` from their lists;
* loader and network keywords (:data:`LOADER_KEYS`, and any key naming a path, file,
  URL, cache, hub, download, checkpoint or pretrained option) are refused by name
  wherever they appear in the spec;
* ``model_args`` (``timm:<arch>`` only) is an allow-list: :data:`ARCH_ARGS` (types and
  ranges) plus every keyword a registered foundation-model card passes to timm, computed
  from the registry when checked (:func:`allowed_model_args`), so cards registered later
  are covered; class-valued card keywords (``mlp_layer``, ``act_layer``) are given by the
  class name the card uses (``"SwiGLUPacked"``) and resolved by
  :func:`resolve_model_args`; consistency (``embed_dim`` divisible by ``num_heads``,
  ``img_size`` by ``patch_size``);
* the network is then built on PyTorch's meta device (no memory, no weights): at most
  :data:`MAX_ENCODER_PARAMETERS` parameters, at most :data:`MAX_TOKENS` tokens per image
  and :data:`MAX_ATTENTION_BYTES` of float32 attention scores per image (the unfused
  worst case), and a network input the architecture accepts.

Allocation caps that follow: one patch is at most 1024 x 1024 x 3 float32 values
(12 MiB) before and after resizing, so a default batch of 64 patches holds at most 768 MiB
of pixels; a ViT's attention scores stay under 128 MiB per image; encoder weights under
8 GB of float32.

Examples
--------
>>> spec_problems({"name": "morphometric", "dim": 64, "patch_px": 256, "target_mpp": 0.5})
[]
>>> spec_problems({"name": "morphometric", "dim": 64, "patch_px": 1})
["'encoder.patch_px' must be a whole number from 16 to 1024 (px), got 1"]
>>> spec_problems({"name": "timm:vit_tiny_patch16_224", "dim": 192,
...                "model_args": {"checkpoint_path": "/tmp/x.pth"}}, build=False)[0][:60]
"'encoder.model_args.checkpoint_path' is a loader keyword: a "
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from napari_ghanet.encoders import registry
from napari_ghanet.errors import EncoderError
from napari_ghanet.io.encoder_spec import EncoderSpec

__all__ = [
    "ARCH_ARGS",
    "FEATURE_ONLY_NAMES",
    "INPUT_PX",
    "LOADER_KEYS",
    "MAX_ATTENTION_BYTES",
    "MAX_ENCODER_PARAMETERS",
    "MAX_PATCH_UM",
    "MAX_TOKENS",
    "MEAN_RANGE",
    "PATCH_PX",
    "STD_RANGE",
    "TARGET_MPP",
    "allowed_model_args",
    "resolve_model_args",
    "spec_problems",
]

PATCH_PX = (16, 1024)  # px at target_mpp
TARGET_MPP = (0.05, 16.0)  # um/px
MAX_PATCH_UM = 2048.0  # patch side patch_px x target_mpp, um
INPUT_PX = (16, 1024)  # resize / resize_to / img_size, px
MEAN_RANGE = (-1.0, 2.0)  # of [0, 1] RGB
STD_RANGE = (1e-3, 10.0)
INTERPOLATIONS = ("bilinear", "bicubic")
POOLS = ("head", "cls+mean")
MAX_ENCODER_PARAMETERS = 2_000_000_000  # 8 GB of float32 weights
MAX_TOKENS = 4096  # per image, prefix tokens included
MAX_ATTENTION_BYTES = 128 * 2**20  # tokens^2 x heads x 4 B per image
MAX_MODEL_ARGS = 64

#: refused by name: keywords that make timm (or a loader) read a file or the network
LOADER_KEYS = frozenset({
    "checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
    "pretrained_strict", "cache_dir", "hf_hub_id", "hf_hub_filename", "hf_hub_revision",
    "url", "file", "path", "weights_path", "state_dict", "model_path", "source",
})
_LOADER_RE = re.compile(r"path|file|url|uri|dir|cache|hub|download|checkpoint|pretrain|"
                        r"load|http|repo", re.IGNORECASE)
#: encoder entries a spec may carry besides model_args (checked here or by the encoders)
_NOT_LOADER = frozenset({"weights", "name"})


def _int_rule(lo: int, hi: int, unit: str = "") -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return None
        return f"must be a whole number from {lo} to {hi}{unit}"
    return check


def _num_rule(lo: float, hi: float, null: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None and null:
            return None
        if (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                and lo <= v <= hi):
            return None
        return f"must be a number from {lo:g} to {hi:g}" + (" or null" if null else "")
    return check


def _bool_rule(null: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or (v is None and null):
            return None
        return "must be true or false" + (" or null" if null else "")
    return check


def _one_of(*choices: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if any(type(v) is type(c) and v == c for c in choices):
            return None
        return f"must be one of {list(choices)}"
    return check


#: architecture arguments of timm's Vision Transformers a spec may set, with their rules
ARCH_ARGS: dict[str, Callable[[Any], str | None]] = {
    "img_size": _int_rule(*INPUT_PX, " (px)"),
    "patch_size": _int_rule(2, 64, " (px)"),
    "embed_dim": _int_rule(8, 8192),
    "depth": _int_rule(1, 64),
    "num_heads": _int_rule(1, 64),
    "mlp_ratio": _num_rule(0.25, 16.0),
    "reg_tokens": _int_rule(0, 64),
    "class_token": _bool_rule(),
    "no_embed_class": _bool_rule(),
    "global_pool": _one_of("", "token", "avg", "avgmax", "max", "map"),
    "init_values": _num_rule(0.0, 10.0, null=True),
    "qkv_bias": _bool_rule(),
    "qk_norm": _bool_rule(),
    "proj_bias": _bool_rule(),
    "pre_norm": _bool_rule(),
    "final_norm": _bool_rule(),
    "fc_norm": _bool_rule(null=True),
    "pos_embed": _one_of("learn", "none"),
    "dynamic_img_size": _bool_rule(),
    "dynamic_img_pad": _bool_rule(),
    "act_layer": _one_of("gelu", "gelu_tanh", "quick_gelu", "silu", "swish", "relu", "mish"),
}


def _loader_key(key: str) -> bool:
    return key in LOADER_KEYS or bool(_LOADER_RE.search(key))


def _cards() -> list[Any]:
    """The foundation-model cards of every registered encoder (read at call time)."""
    return [c for c in (getattr(ctor, "card", None) for ctor in registry._REGISTRY.values())
            if c is not None and callable(getattr(c, "model_args", None))]


def _card_args() -> dict[str, list[Any]]:
    """Every keyword the registered cards pass to timm, with the values they use."""
    out: dict[str, list[Any]] = {}
    for card in _cards():
        try:
            args = card.model_args()
        except Exception:  # pragma: no cover - a card that cannot say is skipped
            continue
        for k, v in args.items():
            out.setdefault(k, []).append(v)
    return out


def _layer_name(v: Any) -> str | None:
    """The name of a class or partial a card passes (``SwiGLUPacked`` is a partial: named
    by the module attribute that holds it); None for JSON values."""
    if v is None or isinstance(v, str | int | float | bool) or not callable(v):
        return None
    name = getattr(v, "__name__", None)
    if name:
        return name
    func = getattr(v, "func", None)
    for module_name in ("timm.layers", getattr(func, "__module__", None)):
        module = sys.modules.get(module_name or "")
        for attr, obj in (vars(module).items() if module is not None else ()):
            if obj is v:
                return attr
    return getattr(func, "__name__", None)


def _card_rule(values: list[Any]) -> Callable[[Any], str | None]:
    """A rule for a card keyword that :data:`ARCH_ARGS` does not cover, from its values."""
    if all(isinstance(v, bool) for v in values):
        return _bool_rule()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return _int_rule(0, max(64, 4 * max(values)))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return _num_rule(0.0, max(16.0, 4.0 * max(values)))
    names = sorted({n for n in map(_layer_name, values) if n})
    strings = sorted({v for v in values if isinstance(v, str)})
    return _one_of(*(strings + names + ([None] if None in values else [])))


def allowed_model_args() -> dict[str, Callable[[Any], str | None]]:
    """The ``model_args`` allow-list now: :data:`ARCH_ARGS` plus the registered cards'
    keywords (class-valued ones as the class names the cards use).

    Examples
    --------
    >>> rules = allowed_model_args()
    >>> rules["mlp_layer"]("SwiGLUPacked") is None, rules["embed_dim"](100_000) is None
    (True, False)
    """
    rules = dict(ARCH_ARGS)
    for key, values in _card_args().items():
        if key in rules and key != "act_layer":
            continue
        if key == "act_layer":  # timm's names plus the card's classes
            names = sorted({n for n in map(_layer_name, values) if n})
            base = ("gelu", "gelu_tanh", "quick_gelu", "silu", "swish", "relu", "mish")
            rules[key] = _one_of(*base, *names)
            continue
        rules[key] = _card_rule(values)
    return rules


def resolve_model_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """``model_args`` with class names (``"SwiGLUPacked"``) replaced by the classes the
    registered cards use under the same keyword; other values unchanged.

    Examples
    --------
    >>> from timm.layers import SwiGLUPacked
    >>> resolve_model_args({"mlp_layer": "SwiGLUPacked", "depth": 2}) == {
    ...     "mlp_layer": SwiGLUPacked, "depth": 2}
    True
    """
    classes = {(k, _layer_name(v)): v for k, vs in _card_args().items() for v in vs
               if _layer_name(v) and not isinstance(v, str)}
    return {k: classes.get((k, v), v) if isinstance(v, str) else v
            for k, v in model_args.items()}


def layer_names(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`resolve_model_args`: classes as their names (JSON values)."""
    return {k: (_layer_name(v) or v) for k, v in model_args.items()}


# --------------------------------------------------------------------------- checks


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


#: names that describe features no encoder here computes, allowed in a bundle without a
#: registered encoder (nothing is built from them: predicting from a slide is refused with
#: a one-line error): the synthetic cohorts of ``ghanet-train synth`` (training.synth)
FEATURE_ONLY_NAMES = frozenset({"synthetic"})


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return None  # the bundle schema names a missing or empty name
    if name in FEATURE_ONLY_NAMES:
        return None
    try:
        registry._spec_constructor(name)
    except EncoderError:
        return (f"'encoder.name' {_short(name)} is not a registered encoder (allowed: "
                f"{', '.join(registry.list_encoders())}; families as family:<arch>)")
    if name.startswith("timm:"):
        import timm

        arch = name[5:]
        if not timm.is_model(arch):
            return (f"'encoder.name' {_short(name)}: {_short(arch)} is not a timm "
                    f"architecture (timm {timm.__version__}; see timm.list_models())")
    return None


def _geometry(problems: list[str], enc: Mapping[str, Any]) -> None:
    px, mpp = enc.get("patch_px", 256), enc.get("target_mpp", 0.5)
    if not _is_int(px) or not PATCH_PX[0] <= px <= PATCH_PX[1]:
        problems.append(f"'encoder.patch_px' must be a whole number from {PATCH_PX[0]} to "
                        f"{PATCH_PX[1]} (px), got {_short(px)}")
        px = None
    if not _is_num(mpp) or not TARGET_MPP[0] <= mpp <= TARGET_MPP[1]:
        problems.append(f"'encoder.target_mpp' must be a number from {TARGET_MPP[0]:g} to "
                        f"{TARGET_MPP[1]:g} (um/px), got {_short(mpp)}")
        mpp = None
    if px is not None and mpp is not None and px * mpp > MAX_PATCH_UM:
        problems.append(f"'encoder.patch_px' x 'encoder.target_mpp' (the patch side) must be "
                        f"at most {MAX_PATCH_UM:g} um, got {px * mpp:g} um")
    resize = enc.get("resize")
    if resize not in (None, 0) and (not _is_int(resize)
                                    or not INPUT_PX[0] <= resize <= INPUT_PX[1]):
        problems.append(f"'encoder.resize' must be null, 0 or a whole number from "
                        f"{INPUT_PX[0]} to {INPUT_PX[1]} (px), got {_short(resize)}")
    for key, (lo, hi) in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
        v = enc.get(key)
        if v is not None and not (isinstance(v, list) and len(v) == 3
                                  and all(_is_num(x) and lo <= x <= hi for x in v)):
            problems.append(f"'encoder.{key}': {key} must be 3 numbers from {lo:g} to {hi:g} "
                            f"(or null), got {_short(v)}")


def _extras(problems: list[str], extra: Mapping[str, Any], where: Mapping[str, str]) -> None:
    for key in extra:
        if not isinstance(key, str):
            continue
        if key not in _NOT_LOADER and _loader_key(key):
            problems.append(_loader_message(f"{where[key]}{key}"))
    rt = extra.get("resize_to")
    if rt is not None and (not _is_int(rt) or not INPUT_PX[0] <= rt <= INPUT_PX[1]):
        problems.append(f"'{where['resize_to']}resize_to' must be null or a whole number from "
                        f"{INPUT_PX[0]} to {INPUT_PX[1]} (px), got {_short(rt)}")
    resize = extra.get("resize")
    if _is_int(rt) and _is_int(resize) and resize > 0 and rt < resize:
        problems.append(f"'{where['resize_to']}resize_to' ({rt} px) must be at least "
                        f"'encoder.resize' ({resize} px, the network input it is cropped to)")
    if "interpolation" in extra and extra["interpolation"] not in INTERPOLATIONS:
        problems.append(f"'{where['interpolation']}interpolation' must be one of "
                        f"{list(INTERPOLATIONS)}, got {_short(extra['interpolation'])}")
    if "pool" in extra and extra["pool"] not in POOLS:
        problems.append(f"'{where['pool']}pool' must be one of {list(POOLS)}, got "
                        f"{_short(extra['pool'])}")
    if "standardize" in extra and not isinstance(extra["standardize"], bool):
        problems.append(f"'{where['standardize']}standardize' must be true or false, got "
                        f"{_short(extra['standardize'])}")
    if "version" in extra and not (_is_int(extra["version"]) and 0 <= extra["version"] <= 10**6):
        problems.append(f"'{where['version']}version' must be a whole number, got "
                        f"{_short(extra['version'])}")


def _loader_message(field: str) -> str:
    return (f"'{field}' is a loader keyword: a bundle may not name files, URLs, caches or "
            "pretrained/download options (the encoder weights are always the user's own "
            "file)")


def _model_args(problems: list[str], name: Any, args: Any, label: str) -> bool:
    """Check ``model_args``; True when they may be used to build the network."""
    if args is None:
        return True
    if not isinstance(name, str) or not name.startswith("timm:"):
        problems.append(f"'{label}' is only read for timm:<arch> encoders, not {_short(name)}")
        return False
    if not isinstance(args, dict) or len(args) > MAX_MODEL_ARGS:
        problems.append(f"'{label}' must be an object of at most {MAX_MODEL_ARGS} timm "
                        f"architecture arguments, got {_short(args)}")
        return False
    rules = allowed_model_args()
    ok = True
    for key, value in args.items():
        if _loader_key(str(key)):
            problems.append(_loader_message(f"{label}.{key}"))
            ok = False
        elif key not in rules:
            problems.append(f"'{label}.{str(key)[:60]}' is not an allowed timm architecture "
                            f"argument (allowed: {', '.join(sorted(rules))})")
            ok = False
        else:
            why = rules[key](value)
            if why:
                problems.append(f"'{label}.{key}' {why}, got {_short(value)}")
                ok = False
    if not ok:
        return False
    width, heads = args.get("embed_dim"), args.get("num_heads")
    if width is not None and heads is not None and width % heads:
        problems.append(f"'{label}.embed_dim' ({width}) must be divisible by "
                        f"'{label}.num_heads' ({heads})")
        ok = False
    size, patch = args.get("img_size"), args.get("patch_size")
    if size is not None and patch is not None and size % patch:
        problems.append(f"'{label}.img_size' ({size}) must be divisible by "
                        f"'{label}.patch_size' ({patch})")
        ok = False
    return ok


def _build_problems(spec_json: str) -> list[str]:
    """Build a ``timm:<arch>`` spec on the meta device and check its size (cached)."""
    return list(_build_cached(spec_json))


@functools.lru_cache(maxsize=64)
def _build_cached(spec_json: str) -> tuple[str, ...]:
    spec = EncoderSpec.from_dict(json.loads(spec_json))
    try:
        enc = registry.from_spec(spec, device="meta")
    except EncoderError as e:
        return (f"'encoder': {' '.join(str(e).split())[:300]}",)
    except Exception as e:  # timm's own asserts and type errors: one line
        text = " ".join(str(e).split())[:200] or "no message"
        return (f"'encoder.model_args': {spec.name} cannot be built with these arguments "
                f"({type(e).__name__}: {text}); allowed: the architecture's own arguments "
                "within the ranges of the security rules",)
    model = enc.model
    problems = []
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    if n > MAX_ENCODER_PARAMETERS:
        problems.append(f"'encoder.model_args': {spec.name} would have {n:,} parameters, more "
                        f"than the {MAX_ENCODER_PARAMETERS:,} an encoder may have")
    embed = getattr(model, "patch_embed", None)
    blocks = getattr(model, "blocks", None)
    if embed is not None and blocks is not None and len(blocks):
        side = int(enc.input_size or 0)
        ps = tuple(getattr(embed, "patch_size", (1, 1)))
        img = tuple(getattr(embed, "img_size", None) or (side, side))
        strict = bool(getattr(embed, "strict_img_size", False)) and not bool(
            getattr(embed, "dynamic_img_pad", False))
        if strict and img != (side, side):
            problems.append(f"'encoder.resize' (the network input, {side} px) must equal "
                            f"{spec.name}'s image size {img[0]} px (or set "
                            "model_args.dynamic_img_size to true)")
        if side % ps[0] and not getattr(embed, "dynamic_img_pad", False):
            problems.append(f"'encoder.resize' ({side} px) must be divisible by the patch "
                            f"size {ps[0]} px of {spec.name}")
        tokens = (side // ps[0]) * (side // ps[1]) + int(getattr(model, "num_prefix_tokens", 0))
        heads = int(getattr(getattr(blocks[0], "attn", None), "num_heads", 1) or 1)
        if tokens > MAX_TOKENS:
            problems.append(f"'encoder.resize' / 'encoder.model_args.patch_size': {spec.name} "
                            f"would see {tokens} tokens per image, at most {MAX_TOKENS} "
                            "allowed")
        elif tokens * tokens * heads * 4 > MAX_ATTENTION_BYTES:
            problems.append(f"'encoder.model_args': {tokens} tokens x {heads} heads need "
                            f"{tokens * tokens * heads * 4 / 2**20:.0f} MiB of attention "
                            f"scores per image, at most {MAX_ATTENTION_BYTES // 2**20} MiB "
                            "allowed")
    return tuple(problems)


def spec_problems(enc: Any, *, build: bool = True) -> list[str]:
    """Every problem of a stored encoder spec (a bundle's ``encoder`` entry); see the
    module docstring for the rules. Empty when it is sound.

    Parameters
    ----------
    enc : dict
        The spec as stored (flat, or with a nested ``extra`` object).
    build : bool
        Also build a ``timm:<arch>`` network on the meta device (no memory) and check its
        parameter count, tokens and input size; only when every other rule passed.

    Returns
    -------
    list of str
        One line per problem, each naming the field (``'encoder.<field>'``).
    """
    if not isinstance(enc, Mapping):
        return []  # the bundle schema names a non-object encoder entry
    nested = enc.get("extra") if isinstance(enc.get("extra"), Mapping) else {}
    where = {k: "encoder." for k in enc}
    where.update({k: "encoder.extra." for k in nested})
    merged = {k: v for k, v in enc.items() if k != "extra"}
    merged.update(nested)
    problems: list[str] = []
    name = enc.get("name")
    why = _name_problem(name)
    if why:
        problems.append(why)
    _geometry(problems, enc)
    _extras(problems, merged, {**{k: "encoder." for k in ("resize_to", "interpolation", "pool",
                                                           "standardize", "version")}, **where})
    if (not why and isinstance(name, str) and name not in FEATURE_ONLY_NAMES
            and _is_int(merged.get("version"))):
        _, ctor, _ = registry._spec_constructor(name)
        known = getattr(ctor, "version", None)
        if _is_int(known) and merged["version"] != known:
            problems.append(f"'{where.get('version', 'encoder.')}version' must be {known} "
                            f"(the version of {name} this napari-ghanet computes), got "
                            f"{merged['version']}")
    label = f"{where.get('model_args', 'encoder.')}model_args"
    args_ok = _model_args(problems, name, merged.get("model_args"), label)
    if (build and not problems and args_ok and isinstance(name, str)
            and name.startswith("timm:")):
        problems += _build_problems(json.dumps(dict(enc), sort_keys=True))
    return problems
