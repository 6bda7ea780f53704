"""Device names from the command line: ``auto`` | ``cuda`` | ``cpu``, resolved in one place.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("auto").type in ("cpu", "cuda")
True
"""

from __future__ import annotations

import torch

__all__ = ["DEVICES", "DeviceError", "resolve_device", "device_name"]

DEVICES = ("auto", "cuda", "cpu")


class DeviceError(ValueError):
    """A device name that is not one of :data:`DEVICES`, or ``cuda`` on a machine without a GPU."""


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; ``"cuda"`` without a GPU is a :class:`DeviceError`."""
    if name not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def device_name(device: str | torch.device) -> str:
    """The GPU model (``torch.cuda.get_device_name``) for a CUDA device, else ``"cpu"``."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
