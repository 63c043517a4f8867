"""Official comparison models by name: load their authors' checkpoints, build them fresh.

:func:`load_official_baseline` loads a state_dict saved by a comparison model's official
code (``torch.save(model.state_dict())``; ``.pt``/``.pth`` read with
``weights_only=True``, or ``.safetensors``) into this package's re-implementation, which
reproduces the official outputs (tests/test_official_baselines.py). Constructor keywords
are those of the official class (as recorded in each conformance case's ``meta.json``).

:func:`phenotype_clusters` gives DeepAttnMISL its per-slide phenotype clusters (k-means on
the slide's patch features), computed once per slide by the training module and cached
beside the features.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from napari_ghanet.errors import ArgumentError, CheckpointError
from napari_ghanet.models.clusters import phenotype_clusters
from napari_ghanet.models.official_mil import (
    AMIL,
    AMILConfig,
    DeepAttnMISL,
    DeepAttnMISLConfig,
    TransMIL,
    TransMILConfig,
)
from napari_ghanet.models.official_multimodal import MCAT, MCATConfig, SurvPath, SurvPathConfig

__all__ = ["OFFICIAL_MODELS", "load_official_baseline", "build_official", "phenotype_clusters"]

#: name -> (class, config class)
OFFICIAL_MODELS = {
    "amil": (AMIL, AMILConfig),
    "deepattnmisl": (DeepAttnMISL, DeepAttnMISLConfig),
    "transmil": (TransMIL, TransMILConfig),
    "mcat": (MCAT, MCATConfig),
    "survpath": (SurvPath, SurvPathConfig),
}


def _config_from_official(name: str, kwargs: dict) -> dict:
    """Map the official constructor's keywords onto this package's config fields."""
    kw = dict(kwargs)
    out: dict = {}
    n_bins = kw.pop("n_classes", kw.pop("num_classes", None))
    if n_bins is not None:
        out["n_bins"] = int(n_bins)
    if name in ("amil", "deepattnmisl"):
        fusion = kw.pop("fusion", None)
        kw.pop("omic_input_dim", None)
        if fusion is not None:
            raise CheckpointError(
                f"{name} with fusion={fusion!r} (a pathomic variant) is not supported: "
                "only the WSI-only model (fusion=None) is implemented"
            )
        size = kw.pop("size_arg", "small")
        if size != "small":
            raise CheckpointError(f"{name} size_arg={size!r} is not supported (only 'small')")
        if "dropout" in kw:
            d = kw.pop("dropout")
            out["dropout"] = 0.25 if d is True else 0.0 if d is False else float(d)
        if name == "deepattnmisl" and "num_clusters" in kw:
            out["num_clusters"] = int(kw.pop("num_clusters"))
    elif name == "mcat":
        fusion = kw.pop("fusion", "concat")
        if fusion != "concat":
            raise CheckpointError(f"mcat fusion={fusion!r} is not supported (only 'concat')")
        for key in ("model_size_wsi", "model_size_omic"):
            if kw.pop(key, "small") != "small":
                raise CheckpointError(f"mcat {key} other than 'small' is not supported")
        out["omic_sizes"] = tuple(kw.pop("omic_sizes", MCATConfig().omic_sizes))
        if "dropout" in kw:
            out["dropout"] = float(kw.pop("dropout"))
    elif name == "survpath":
        out["omic_sizes"] = tuple(kw.pop("omic_sizes", SurvPathConfig().omic_sizes))
        for src, dst in (("wsi_embedding_dim", "input_dim"), ("wsi_projection_dim", "width"),
                         ("dropout", "dropout")):
            if src in kw:
                out[dst] = type(getattr(SurvPathConfig(), dst))(kw.pop(src))
    if kw:
        raise CheckpointError(f"unsupported {name} constructor keyword(s) {sorted(kw)}")
    return out


def build_official(name: str, **config) -> nn.Module:
    """A fresh comparison model by name from this package's config fields."""
    if name not in OFFICIAL_MODELS:
        raise ArgumentError(f"unknown comparison model {name!r}; choose one of {sorted(OFFICIAL_MODELS)}")
    cls, cfg_cls = OFFICIAL_MODELS[name]
    return cls(cfg_cls(**config))


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; give the path of a saved state_dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many error types for bad files
        raise CheckpointError(
            f"{path} is not a loadable state_dict ({type(e).__name__}); give a .pt/.pth "
            "saved with torch.save(model.state_dict()) or a .safetensors file"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    # DataParallel ("module.") and PyTorch-Lightning ("model.") prefixes
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_official_baseline(name: str, state_dict_path, **constructor_kwargs) -> nn.Module:
    """Load an official comparison model's checkpoint into an eval-mode module.

    Parameters
    ----------
    name : str
        ``amil``, ``deepattnmisl``, ``transmil``, ``mcat`` or ``survpath``.
    state_dict_path : str or Path
        ``torch.save(model.state_dict())`` output of the official code (``.pt``/``.pth``,
        read with ``weights_only=True``: no code in the file runs) or ``.safetensors``.
    **constructor_kwargs
        The official constructor's keywords (e.g. ``omic_sizes``, ``n_classes``,
        ``fusion``), as recorded in a conformance case's ``meta.json``.

    Returns
    -------
    torch.nn.Module
        In eval mode; ``forward_bag(x_path, omics=None, cluster_id=None)`` returns a
        :class:`~napari_ghanet.models.ghanet.BagOutput` (hazards, survival, risk, logits
        and the model's attention maps).

    Raises
    ------
    CheckpointError
        Unknown name, unreadable file, or weights that do not fit the model.
    """
    if name not in OFFICIAL_MODELS:
        raise CheckpointError(f"unknown comparison model {name!r}; choose one of {sorted(OFFICIAL_MODELS)}")
    path = Path(state_dict_path)
    state = _read_state(path)
    config = _config_from_official(name, constructor_kwargs)
    if "input_dim" not in config:
        w = state.get({"amil": "attention_net.0.weight", "deepattnmisl": "phis.0.0.weight",
                       "transmil": "_fc1.0.weight", "mcat": "wsi_net.0.weight",
                       "survpath": "wsi_projection_net.0.weight"}[name])
        if w is not None:
            config["input_dim"] = int(w.shape[1])
    model = build_official(name, **config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match {name}: missing keys {missing[:5] or 'none'}; unexpected "
            f"keys {unexpected[:5] or 'none'} (check the constructor keywords)"
        )
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
           if v.shape != expected[k].shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch for {name}: " + "; ".join(bad[:5]))
    model.load_state_dict(state, strict=True)
    return model.eval()
