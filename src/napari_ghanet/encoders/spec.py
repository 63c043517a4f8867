"""The encoder spec under its former address: :class:`EncoderSpec`, :func:`encoder_mismatch`
and :func:`file_digest` live in :mod:`napari_ghanet.io.encoder_spec` (below ``io``, so the
feature-file reader does not import the encoders); this module re-exports them."""

from __future__ import annotations

from napari_ghanet.io.encoder_spec import (
    EncoderSpec,
    encoder_mismatch,
    file_digest,
)

__all__ = ["EncoderSpec", "encoder_mismatch", "file_digest"]
