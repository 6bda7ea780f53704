"""Mixed precision where it is numerically safe: inside conditioner networks only.

Log-determinants, matrix exponentials, series and solves stay in float32 (or the
input's dtype); only the networks that *predict* parameters of a transformation
(coupling and dequantization conditioners) may run in bf16; the hidden maps of
Sylvester and residual layers stay in full precision because their inverses are
fixed-point iterations and their log-determinants are exact. Layers wrap
those calls in :func:`conditioner_autocast` and cast the result back to the input's
dtype; the trainer's ``--amp bf16`` turns it on with :func:`set_conditioner_dtype`.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor

__all__ = ["set_conditioner_dtype", "get_conditioner_dtype", "conditioner_autocast"]

_dtype: torch.dtype | None = None


def set_conditioner_dtype(dtype: torch.dtype | None) -> None:
    """``torch.bfloat16`` (or ``float16``) to run conditioners under autocast; ``None`` to turn it off."""
    global _dtype
    if dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"conditioner dtype must be None, torch.bfloat16 or torch.float16, got {dtype}")
    _dtype = dtype


def get_conditioner_dtype() -> torch.dtype | None:
    """The dtype set by :func:`set_conditioner_dtype` (``None``: full precision)."""
    return _dtype


@contextmanager
def conditioner_autocast(x: Tensor):
    """Autocast to the conditioner dtype on ``x``'s device, or do nothing when it is off.

    Never autocasts float64 inputs (tests and brute-force Jacobians stay exact).
    """
    if _dtype is None or x.dtype == torch.float64:
        with nullcontext():
            yield
    else:
        with torch.autocast(device_type=x.device.type, dtype=_dtype):
            yield
