"""Which torch device to compute on: the one ``resolve_device`` for the whole package.

The patch encoder, prediction, the command lines and training all turn a user's device
name into a :class:`torch.device` here, with the same checks and messages. torch is
imported when the function runs, so importing this module stays cheap.

Examples
--------
>>> from napari_ghanet.device import resolve_device
>>> str(resolve_device("cpu"))
'cpu'
>>> resolve_device("tpu-ish")
Traceback (most recent call last):
...
napari_ghanet.device.DeviceError: unknown device 'tpu-ish' (use auto, cpu, cuda or cuda:N)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_ghanet.errors import GHANetError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(GHANetError, ValueError):
    """The requested device does not exist here or is not supported."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a user's device name.

    Parameters
    ----------
    device : str or torch.device or None
        ``"auto"`` (or None / ""): the first CUDA device when there is one, else the CPU.
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"mps"`` are checked to exist.

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceError
        Unknown name, or a device this machine does not have.

    Examples
    --------
    >>> resolve_device("cpu").type
    'cpu'
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    """
    import torch

    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device or "").strip().lower()
        if name in ("auto", ""):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise DeviceError(
                f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!s} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!s} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError("device mps requested but it is not available here")
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {device!s}")
    return dev
