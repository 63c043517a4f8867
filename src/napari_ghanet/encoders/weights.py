"""Loading encoder weights from checkpoint files, offline and without unpickling.

Accepted forms: ``.safetensors``, or a file of plain tensors readable by
``torch.load(weights_only=True)`` (``.bin``, ``.pth``, ``.pt``), possibly wrapped in a
``state_dict`` / ``model`` / ``teacher`` entry. Keys are matched to the model after removing
the usual prefixes (``module.``, ``model.``, ``backbone.``, ``encoder.``); a classifier
``head.*`` is dropped when the model has no head. Anything else that does not fit (a missing,
extra or differently shaped tensor) is refused with an :class:`EncoderError` naming the
first such tensor.

>>> import torch
>>> net = torch.nn.Linear(2, 3)
>>> state = {"module." + k: v for k, v in net.state_dict().items()}
>>> sorted(match_state_dict(state, net, source="example"))
['bias', 'weight']
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from napari_ghanet.encoders.base import file_digest
from napari_ghanet.errors import EncoderError

__all__ = ["file_digest", "load_checkpoint", "match_state_dict"]

PREFIXES = ("module.", "model.", "backbone.", "encoder.", "_orig_mod.")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "teacher", "student", "module")


def load_checkpoint(path: str | os.PathLike, what: str = "encoder") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, on the CPU: ``{name: tensor}``.

    Raises
    ------
    EncoderError
        Missing, truncated or corrupt file, or one holding something other than tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise EncoderError(f"{path}: {what} weights file not found")
    if path.stat().st_size == 0:
        raise EncoderError(f"{path}: the {what} weights file is empty (interrupted download?)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise EncoderError(
                f"{path}: not a readable safetensors file (truncated or corrupt? download it "
                f"again): {exc}"
            ) from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (
            pickle.UnpicklingError,
            RuntimeError,
            EOFError,
            OSError,
            ValueError,
            zipfile.BadZipFile,
        ) as exc:
            raise EncoderError(
                f"{path}: cannot read the {what} weights: the file is truncated or corrupt, or "
                f"holds more than plain tensors (only tensor state dicts are accepted; download "
                f"it again): {exc}"
            ) from exc
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
    if not isinstance(obj, Mapping):
        raise EncoderError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise EncoderError(f"{path}: holds no tensors")
    return state


def _strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    for _ in range(len(PREFIXES)):
        if sum(k in wanted for k in state) >= len(wanted) // 2 + 1:
            break
        for p in PREFIXES:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p) :]: v for k, v in state.items()}
                break
        else:  # no common prefix: keep the keys under one of them, if any
            for p in PREFIXES:
                sub = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
                if sum(k in wanted for k in sub) > sum(k in wanted for k in state):
                    state = sub
                    break
            else:
                break
    return state


def match_state_dict(
    state: Mapping[str, torch.Tensor], model: nn.Module, *, source: str, what: str = "encoder"
) -> dict[str, torch.Tensor]:
    """Map ``state``'s keys onto ``model``'s and check every tensor's shape.

    Returns the state dict to load with ``strict=True``.

    Raises
    ------
    EncoderError
        Naming the first tensor that is missing, unexpected or of the wrong shape.
    """
    ref = model.state_dict()
    wanted = set(ref)
    state = _strip_prefixes(dict(state), wanted)
    if not any(k.startswith("head.") for k in wanted):
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm_head."))}
    hint = "these are not the weights of this architecture"
    for k, v in ref.items():
        if k not in state:
            raise EncoderError(
                f"{source}: {hint}: tensor {k!r} (shape {tuple(v.shape)}) is missing "
                f"from the file ({len(state)} tensors found, {len(ref)} expected)"
            )
        if tuple(state[k].shape) != tuple(v.shape):
            raise EncoderError(
                f"{source}: {hint}: tensor {k!r} has shape {tuple(state[k].shape)} in the "
                f"file, the {what} expects {tuple(v.shape)}"
            )
    extra = [k for k in state if k not in wanted]
    if extra:
        raise EncoderError(
            f"{source}: {hint}: the file has {len(extra)} tensor(s) the {what} does not, "
            f"e.g. {extra[0]!r} (shape {tuple(state[extra[0]].shape)})"
        )
    return {k: state[k] for k in ref}
