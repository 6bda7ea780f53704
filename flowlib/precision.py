"""Mixed precision where it is numerically safe: inside conditioner networks only.

Log-determinants, matrix exponentials, series and solves stay in float32 (or the input's
dtype); only the networks that *predict* parameters of a transformation (coupling, split-prior
and dequantization conditioners) may run in bf16. The hidden maps of Sylvester and residual
layers stay in full precision: their inverses are fixed-point iterations and their
log-determinants exact.

The setting is the module's own, not a global: every module that owns a conditioner network
has an attribute ``conditioner_dtype`` (``None``: full precision) and calls its network as
``conditioned(self.net, x, self.conditioner_dtype)``. :func:`set_conditioner_dtype` sets it on
every such module of a model (the trainer's ``--conditioner-dtype bfloat16`` does that once,
after building the model).

>>> import torch, flowlib
>>> model = flowlib.models.build_model("tiny")
>>> n = set_conditioner_dtype(model, "bfloat16")
>>> n > 0 and all(m.conditioner_dtype is torch.bfloat16 for m in conditioned_modules(model))
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["CONDITIONER_DTYPES", "conditioned", "conditioned_modules", "set_conditioner_dtype"]

# The names accepted from the command line down, and the dtype each means (None: full precision).
CONDITIONER_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}


def conditioned(net: Callable[[Tensor], Tensor], x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``net(x)`` under autocast to ``dtype`` on ``x``'s device, returned in ``x``'s dtype.

    ``dtype=None`` or a float64 ``x`` (tests, brute-force Jacobians) runs ``net`` as it is.
    """
    if dtype is None or x.dtype == torch.float64:
        return net(x)
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        h = net(x)
    return h.to(x.dtype)


def conditioned_modules(model: nn.Module) -> Iterator[nn.Module]:
    """The submodules of ``model`` (itself included) that own a conditioner network."""
    return (m for m in model.modules() if hasattr(m, "conditioner_dtype"))


def set_conditioner_dtype(model: nn.Module, dtype: str | torch.dtype | None) -> int:
    """Run every conditioner of ``model`` in ``dtype``; returns how many modules it set.

    ``dtype``: a name of :data:`CONDITIONER_DTYPES` (``"float32"``, ``"bfloat16"``),
    ``torch.bfloat16``, or ``None`` / ``torch.float32`` for full precision.
    """
    if isinstance(dtype, str):
        if dtype not in CONDITIONER_DTYPES:
            raise ValueError(f"conditioner dtype must be one of {', '.join(CONDITIONER_DTYPES)}; got {dtype!r}")
        dtype = CONDITIONER_DTYPES[dtype]
    if dtype == torch.float32:
        dtype = None
    if dtype not in CONDITIONER_DTYPES.values():
        raise ValueError(f"conditioner dtype must be None, torch.float32 or torch.bfloat16; got {dtype!r}")
    count = 0
    for module in conditioned_modules(model):
        module.conditioner_dtype = dtype
        count += 1
    return count
