"""Patch encoders: a registry mapping a name to a constructor with its preprocessing.

>>> enc = create_encoder("morphometric")
>>> enc.dim, enc.spec().name
(64, 'morphometric')

Every encoder is a :class:`PatchEncoder` (``torch.nn.Module``): ``preprocess`` turns a
batch of RGB ``uint8`` patches (N, H, W, 3) into the float (N, 3, S, S) tensor the network
takes, ``forward`` maps it to (N, dim) features, and ``spec()`` is the :class:`EncoderSpec`
stored (as JSON) with the features and in model bundles: features made one way do not fit
a model trained on another (:func:`encoder_mismatch` says why), and :func:`from_spec`
rebuilds the encoder a stored spec describes.

Modules: :mod:`.base` (PatchEncoder, EncoderSpec, encoder_mismatch, weight-file digest),
:mod:`.registry` (register_encoder, create_encoder, from_spec, list_encoders,
describe_encoders) and one module per backend, imported here so that they register.

Built-in encoders
-----------------
``resnet50_trunc`` (:mod:`.resnet`)
    torchvision ResNet50 (ImageNet weights) cut after ``layer3``, adaptive average
    pooled: 1024-d, the CLAM features G-HANet was trained on. Fed the 256 px patch as is
    (``resize_to=224`` reproduces today's CLAM, which resizes first). Weights come from
    ``weights=PATH`` or torch's hub cache ``<torch.hub.get_dir()>/checkpoints/resnet50-*.pth``.
``morphometric`` (:mod:`.morphometric`)
    A fixed, weight-free, deterministic 64-d descriptor of H&E morphology computed in
    torch (batched, GPU-capable): stain optical densities, nuclear density and size at
    three scales, texture and heterogeneity. See :data:`MORPHOMETRIC_FEATURES`.
``torchscript`` (:mod:`.torchscript`)
    A user's own encoder from a local TorchScript file, with its declared dimension and
    preprocessing.
"""

from __future__ import annotations

from napari_ghanet.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    PatchEncoder,
    encoder_mismatch,
    file_digest,
)
from napari_ghanet.encoders.morphometric import (
    EOSIN_OD,
    HEMATOXYLIN_OD,
    MORPHOMETRIC_FEATURES,
    MorphometricEncoder,
)
from napari_ghanet.encoders.registry import (
    create_encoder,
    describe_encoders,
    from_spec,
    list_encoders,
    register_encoder,
    takes_weights,
)
from napari_ghanet.encoders.resnet import ResNet50Trunc, find_resnet50_weights
from napari_ghanet.encoders.timm_models import FOUNDATION_MODELS, TimmEncoder
from napari_ghanet.encoders.torchscript import TorchScriptEncoder
from napari_ghanet.encoders.trident_models import TRIDENT_MODELS  # registers them
from napari_ghanet.errors import EncoderError

__all__ = [
    "EOSIN_OD",
    "HEMATOXYLIN_OD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MORPHOMETRIC_FEATURES",
    "EncoderError",
    "EncoderSpec",
    "FOUNDATION_MODELS",
    "MorphometricEncoder",
    "PatchEncoder",
    "ResNet50Trunc",
    "TimmEncoder",
    "TRIDENT_MODELS",
    "TorchScriptEncoder",
    "create_encoder",
    "describe_encoders",
    "encoder_mismatch",
    "file_digest",
    "find_resnet50_weights",
    "from_spec",
    "list_encoders",
    "register_encoder",
    "takes_weights",
]
