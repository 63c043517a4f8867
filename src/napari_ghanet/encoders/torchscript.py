"""A user's own encoder from a local TorchScript file or ``torch.export`` program.

The file maps float (N, 3, S, S) to (N, dim); the user declares ``dim`` (checked on a
dummy batch), the normalisation ``mean`` / ``std`` of [0, 1] RGB and the input side
``input_size`` (px). The spec records the name (default ``torchscript:<file stem>``),
these values and the file's sha256 digest, but not its location: rebuilding from a spec
needs ``path=FILE``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from napari_ghanet.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    PatchEncoder,
    file_digest,
)
from napari_ghanet.encoders.registry import register_encoder
from napari_ghanet.errors import EncoderError

__all__ = ["TorchScriptEncoder"]

@register_encoder("torchscript")
class TorchScriptEncoder(PatchEncoder):
    """A user's encoder from a local TorchScript file (``torch.jit.save``) or a
    ``torch.export`` program (``.pt2``, exported with a dynamic batch dimension).

    Parameters
    ----------
    path : str or Path
        The model file; it must map float (N, 3, S, S) to (N, dim).
    dim : int
        Declared feature dimension, checked on a dummy batch.
    mean, std : 3 floats
        Normalisation of [0, 1] RGB the model expects.
    input_size : int, optional
        Side the patch is resized to (e.g. 224); None = as is.
    name : str, optional
        Name recorded in the spec (default ``torchscript:<file stem>``).
    """

    name = "torchscript"
    dim = 0
    #: spec names of this encoder's features (see registry.from_spec)
    spec_prefix = "torchscript:"
    #: describe_encoders: the weights are the user's file
    weights_hint = "user file (its TorchScript file as the encoder weights)"

    @classmethod
    def spec_kwargs(cls, spec: EncoderSpec) -> dict[str, Any]:
        """Declared dim, preprocessing, name and geometry; the file is an override
        (``path=FILE``)."""
        kw = {**super().spec_kwargs(spec), "dim": spec.dim, "input_size": spec.resize}
        kw["name"] = spec.name
        if spec.mean is not None:
            kw["mean"] = spec.mean
        if spec.std is not None:
            kw["std"] = spec.std
        return kw

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        dim: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_size: int | None = None,
        name: str | None = None,
        patch_px: int = 256,
        target_mpp: float = 0.5,
    ):
        super().__init__(
            input_size=input_size, mean=mean, std=std, patch_px=patch_px, target_mpp=target_mpp
        )
        if path is None:
            raise EncoderError(
                f"the TorchScript encoder {name or 'torchscript'!r} needs its model file: "
                "give it as the encoder weights"
            )
        path = Path(path).expanduser()
        if not path.is_file():
            raise EncoderError(f"{path}: TorchScript encoder file not found")
        if dim is None or int(dim) < 1:
            raise EncoderError(f"give the feature dimension dim >= 1 of {path.name}, got {dim}")
        self._exported = path.suffix == ".pt2"
        try:
            if self._exported:  # a torch.export program (TorchScript's successor)
                self.model = torch.export.load(str(path)).module()
            else:
                # A TorchScript file has no other loader: torch.jit.load is deprecated in
                # favour of torch.export (the .pt2 branch above), which cannot read it. Only
                # that one deprecation notice is silenced, here; any other warning shows.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* deprecated",
                                            category=FutureWarning)
                    self.model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch raises many types here
            raise EncoderError(
                f"{path}: not a TorchScript file (torch.jit.save) or exported program "
                f"(.pt2, torch.export.save): {exc}"
            ) from exc
        self.train(False)
        self.dim = int(dim)
        self.name = name or f"torchscript:{path.stem}"
        self._weights_desc = f"{path.name} sha256:{file_digest(path)}"
        side = self.input_size or patch_px
        with torch.inference_mode():
            try:
                out = self.forward(torch.zeros(2, 3, side, side))
            except Exception as exc:  # noqa: BLE001
                raise EncoderError(
                    f"{path}: the model fails on a (2, 3, {side}, {side}) batch: {exc}"
                ) from exc
        if tuple(out.shape) != (2, self.dim):
            raise EncoderError(
                f"{path}: the model returns shape {tuple(out.shape)} for a batch of 2, "
                f"but dim={self.dim} was declared"
            )

    def weights_description(self) -> str:
        return self._weights_desc

    def train(self, mode: bool = True) -> TorchScriptEncoder:
        # exported programs have no train/eval switch; they run as exported
        self.training = mode
        if not self._exported:
            self.model.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, tuple | list):
            out = out[0]
        if out.ndim == 4 and out.shape[-2:] == (1, 1):
            out = out.flatten(1)
        return out
