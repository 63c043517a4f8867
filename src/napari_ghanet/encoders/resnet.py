"""ResNet50 truncated after ``layer3``: the 1024-d CLAM features G-HANet was trained on.

torchvision ResNet50 (ImageNet weights) cut after ``layer3`` and adaptive average pooled:
(N, 3, S, S) -> (N, 1024). Fed the 256 px patch at 0.5 um/px as is (``resize_to=224``
reproduces today's CLAM, which resizes first). Weights come from ``weights=PATH`` or
torch's hub cache ``<torch.hub.get_dir()>/checkpoints/resnet50-*.pth`` and are loaded with
``torch.load(weights_only=True)``; the spec records the file name and its sha256 digest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_ghanet.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    PatchEncoder,
    file_digest,
)
from napari_ghanet.encoders.registry import register_encoder
from napari_ghanet.encoders.weights import load_checkpoint
from napari_ghanet.errors import EncoderError

__all__ = ["ResNet50Trunc", "find_resnet50_weights"]


_RESNET50_V1 = ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth")  # IMAGENET1K_V1 files
_RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def find_resnet50_weights() -> Path | None:
    """The ResNet50 ImageNet weights in torch's hub cache, or None.

    Looks for ``<torch.hub.get_dir()>/checkpoints/resnet50-*.pth``, preferring
    torchvision's IMAGENET1K_V1 file (the weights CLAM features were made with).
    """
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in _RESNET50_V1:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("resnet50-*.pth")) if folder.is_dir() else []
    return found[0] if found else None


def _missing_weights_message() -> str:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        "ResNet50 ImageNet weights not found. Download torchvision's IMAGENET1K_V1 file "
        f"({_RESNET50_URL}) on a machine with internet access and either put it in "
        f"{folder}/ (torch's hub cache, $TORCH_HOME) or give its path as the encoder weights"
    )


@register_encoder("resnet50_trunc")
class ResNet50Trunc(PatchEncoder):
    """ResNet50 truncated after ``layer3`` + adaptive average pooling: (N, 1024).

    Parameters
    ----------
    weights : str or Path, optional
        A ResNet50 state dict (``.pth``), loaded with ``torch.load(weights_only=True)``.
        Default: torch's hub cache (:func:`find_resnet50_weights`).
    resize_to : int, optional
        Resize patches to this side first (224 as today's CLAM does); default: as is
        (256 px, as the G-HANet paper's features).
    pretrained : bool
        False builds randomly initialised weights (seeded; for speed tests only).
    """

    onnx_ok = True

    name = "resnet50_trunc"
    dim = 1024

    @classmethod
    def find_weights(cls) -> Path | None:
        """The default weights (torch's hub cache), or None: :func:`find_resnet50_weights`."""
        return find_resnet50_weights()

    @classmethod
    def spec_kwargs(cls, spec: EncoderSpec) -> dict[str, Any]:
        """``resize_to`` and the geometry; the weights file is an override
        (``weights=PATH``), default the hub cache."""
        return {**super().spec_kwargs(spec), "resize_to": spec.resize}

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        resize_to: int | None = None,
        pretrained: bool = True,
        patch_px: int = 256,
        target_mpp: float = 0.5,
    ):
        super().__init__(
            input_size=resize_to,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            patch_px=patch_px,
            target_mpp=target_mpp,
        )
        from torchvision.models import resnet50

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = resnet50(weights=None)
        self._weights_desc = "random (untrained, for speed tests only)"
        if pretrained:
            path = Path(weights).expanduser() if weights is not None else find_resnet50_weights()
            if path is None:
                raise EncoderError(_missing_weights_message())
            if not path.is_file():
                raise EncoderError(f"{path}: ResNet50 weights file not found")
            state = self._load_state(path)
            trunk_keys = [k for k in net.state_dict() if not k.startswith(("layer4.", "fc."))]
            missing = [k for k in trunk_keys if k not in state]
            if missing:
                raise EncoderError(
                    f"{path}: not ResNet50 weights ({len(missing)} trunk tensors missing, "
                    f"e.g. {missing[0]!r})"
                )
            trunk_state = {k: state[k] for k in trunk_keys}
            ref = net.state_dict()
            for k, v in trunk_state.items():
                if tuple(v.shape) != tuple(ref[k].shape):
                    raise EncoderError(
                        f"{path}: tensor {k!r} has shape {tuple(v.shape)}, "
                        f"ResNet50 needs {tuple(ref[k].shape)}"
                    )
            net.load_state_dict(trunk_state, strict=False)
            self._weights_desc = f"{path.name} sha256:{file_digest(path)}"
        del net.layer4, net.fc
        self.trunk = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    @staticmethod
    def _load_state(path: Path) -> dict[str, torch.Tensor]:
        state = load_checkpoint(path, what="ResNet50")  # plain tensors only, never unpickled
        return {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}

    def weights_description(self) -> str:
        return self._weights_desc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(x)).flatten(1)
