"""The encoder base class (preprocessing + network), re-exporting the one :class:`EncoderSpec`.

An :class:`EncoderSpec` describes how patch features were made: encoder name, feature
dimension ``dim``, patch geometry (``patch_px`` pixels at ``target_mpp`` um/px), the side
``resize`` (px) the patch is resized to before the network (None = fed as is), the
channel normalisation ``mean`` / ``std`` of [0, 1] RGB, a ``weights`` description (file
name and ``sha256:<16 hex>`` digest, or ``none ...`` for weight-free encoders) and
encoder-specific ``extra`` entries (e.g. the morphometric ``version`` and
``standardize``). It is stored as JSON with every feature file (``encoder_spec``) and in
every model bundle (``encoder``); features whose specs differ in anything
:func:`encoder_mismatch` checks are not interchangeable.

Invariants: ``EncoderSpec.from_dict(d).to_dict() == d`` for every spec this package has
written (the flat feature-file form and the bundle form with a nested ``extra``), so
cache keys (hashes of the JSON) and bundles stay unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_ghanet.errors import EncoderError
from napari_ghanet.io.encoder_spec import EncoderSpec, encoder_mismatch, file_digest

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EncoderSpec",
    "PatchEncoder",
    "encoder_mismatch",
    "file_digest",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEncoder(nn.Module):
    """Base class: a patch encoder with its preprocessing.

    Class attributes (read by :func:`~napari_ghanet.encoders.describe_encoders` without
    building the encoder; instances set their own values):

    Attributes
    ----------
    name : str
    dim : int
        Feature dimension (0 when declared per instance, e.g. TorchScript).
    input_size : int or None
        Side the patch is resized to before the network; None = fed as is.
    patch_px, target_mpp : int, float
        Patch geometry the encoder is meant for (CLAM default: 256 px at 0.5 um/px).
    mean, std : tuple of 3 floats
        Channel normalisation applied to [0, 1] RGB.

    Subclasses may define a classmethod ``find_weights() -> Path | None`` (where their
    default weights are, or None when missing) and a classmethod
    ``spec_kwargs(spec) -> dict`` (constructor arguments that rebuild the encoder a spec
    describes; used by :func:`~napari_ghanet.encoders.from_spec`).
    """

    name: str = "encoder"
    dim: int = 0
    input_size: int | None = None
    patch_px: int = 256
    target_mpp: float = 0.5
    #: whether bf16/fp16 autocast and channels-last memory suit the network on CUDA
    autocast_ok: bool = True
    channels_last_ok: bool = True
    #: whether the network exports to ONNX for the ONNX Runtime CPU backend
    onnx_ok: bool = False

    def __init__(
        self,
        *,
        input_size: int | None = None,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        patch_px: int = 256,
        target_mpp: float = 0.5,
    ):
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise EncoderError(f"mean and std need 3 values (std > 0), got {mean} / {std}")
        self.input_size = None if input_size in (None, 0) else int(input_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.patch_px = int(patch_px)
        self.target_mpp = float(target_mpp)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) RGB -> float32 (N, 3, S, S), resized and normalised,
        on the batch's device."""
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise EncoderError(f"expected a (N, H, W, 3) uint8 batch, got {tuple(batch.shape)}")
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if self.input_size is not None and tuple(x.shape[-2:]) != (
            self.input_size,
            self.input_size,
        ):
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        mean = self._mean.to(x.device)
        std = self._std.to(x.device)
        return (x - mean) / std

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocess and run: uint8 (N, H, W, 3) -> float32 (N, dim)."""
        return self.forward(self.preprocess(batch.to(self.device))).float()

    def weights_description(self) -> str:
        return "none"

    def spec_extra(self) -> dict[str, Any]:
        """Encoder-specific spec entries (JSON values); none by default."""
        return {}

    def spec(self) -> EncoderSpec:
        """The :class:`EncoderSpec` of this encoder; features with different specs are
        not interchangeable."""
        return EncoderSpec(
            name=self.name,
            dim=int(self.dim),
            patch_px=self.patch_px,
            target_mpp=self.target_mpp,
            resize=self.input_size,
            mean=self.mean,
            std=self.std,
            weights=self.weights_description(),
            extra=self.spec_extra(),
        )

    @classmethod
    def spec_kwargs(cls, spec: EncoderSpec) -> dict[str, Any]:
        """Constructor arguments that rebuild the encoder ``spec`` describes: the patch
        geometry by default; subclasses add theirs."""
        return {"patch_px": spec.patch_px, "target_mpp": spec.target_mpp}
