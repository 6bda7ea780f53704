"""The contract every invertible layer of flowlib follows.

A flow layer is a bijection ``f`` with a tractable Jacobian determinant::

    y, logdet = layer(x)       # y = f(x),  logdet[b] = log |det df/dx (x[b])|
    x = layer.inverse(y)       # x = f^{-1}(y)

``x`` has shape ``[B, *layer.shape]`` (``[B, C, H, W]`` for images, ``[B, N, C]``
for graphs) and ``logdet`` has shape ``[B]``.

Subclasses implement ``_forward`` and ``_inverse``; the public ``forward`` and
``inverse`` check the input first (see :func:`set_validation`) so that a wrong
shape or a NaN fails with a message that names the layer and the shape it
expects, instead of a cryptic error deep inside ``conv2d``.

Inputs every layer refuses with a ``ValueError`` naming the layer (checked here, once,
for all layers, in the ``"full"`` and ``"shape"`` modes; they cost no device sync):

* a dtype other than ``torch.float32`` or ``torch.float64`` (float16, bfloat16, integers,
  bool, complex): the log-determinants and series need at least float32;
* an empty batch (``B = 0``): refused rather than returning empty outputs, because
  data-dependent initialisation (actnorm) and batch statistics have nothing to work on and an
  empty batch is almost always a slicing mistake.

>>> import flowlib
>>> layer = flowlib.layers.make("conv1x1", shape=(2, 4, 4))
>>> layer(torch.zeros(0, 2, 4, 4))
Traceback (most recent call last):
    ...
ValueError: conv1x1.forward got an empty batch (B = 0, shape [0, 2, 4, 4]); pass at least one sample
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["Flow", "Sequential", "set_validation", "validation", "get_validation", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)

_VALIDATION_MODES = ("full", "shape", "off")
_validation = "full"


def set_validation(mode: str) -> None:
    """Choose how much ``Flow.forward``/``Flow.inverse`` check their input.

    ``"full"`` (default) checks the shape and that the input is finite;
    ``"shape"`` checks the shape only (no device synchronisation, so it is what
    the GPU trainer and ``torch.compile`` use); ``"off"`` checks nothing.
    """
    global _validation
    if mode not in _VALIDATION_MODES:
        raise ValueError(f"validation mode must be one of {_VALIDATION_MODES}, got {mode!r}")
    _validation = mode


def get_validation() -> str:
    """The current validation mode (see :func:`set_validation`)."""
    return _validation


@contextmanager
def validation(mode: str):
    """Context manager form of :func:`set_validation`; restores the old mode on exit."""
    old = _validation
    set_validation(mode)
    try:
        yield
    finally:
        set_validation(old)


def _fmt(shape) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


class Flow(nn.Module):
    """Base class of all invertible layers: ``forward(x) -> (y, logdet)``, ``inverse(y) -> x``.

    Arguments:
        shape: the shape of one sample, e.g. ``(C, H, W)``; an entry ``None``
            accepts any size along that axis.

    Subclasses implement :meth:`_forward` (returning ``y`` and ``logdet`` of
    shape ``[B]``) and :meth:`_inverse`. ``name`` is set by the registry to the
    name the layer was registered under and is used in error messages.
    """

    name: str | None = None

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    # -- public API -----------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return self._forward(x)

    def inverse(self, y: Tensor) -> Tensor:
        self.check_input(y, "inverse")
        return self._inverse(y)

    # -- to implement -----------------------------------------------------------------
    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _inverse(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- checks -------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """How error messages name this layer: its registered name, or its class name."""
        return self.name or type(self).__name__

    def check_input(self, x: Tensor, where: str = "forward") -> None:
        """Raise ``ValueError`` naming the layer and the expected shape if ``x`` does not fit.

        Checks the number of dimensions, every fixed axis of ``self.shape``, the dtype
        (float32 or float64), a non-empty batch, and, in ``"full"`` validation mode, that ``x``
        holds no NaN or Inf.
        """
        if _validation == "off":
            return
        expected = "[B, " + _fmt(self.shape)[1:]
        if not isinstance(x, Tensor):
            raise ValueError(f"{self.label}.{where} expects a torch.Tensor of shape {expected}, got {type(x).__name__}")
        if x.dim() != len(self.shape) + 1:
            raise ValueError(
                f"{self.label}.{where} expects a {len(self.shape) + 1}-D input of shape {expected} "
                f"(a batch of samples), got {x.dim()}-D input of shape {list(x.shape)}"
            )
        for axis, (want, got) in enumerate(zip(self.shape, x.shape[1:], strict=True), start=1):
            if want is not None and want != got:
                what = "channel count" if axis == 1 else f"size of axis {axis}"
                raise ValueError(
                    f"{self.label}.{where} expects input of shape {expected}, got {list(x.shape)}: "
                    f"{what} is {got}, expected {want}. Build the layer with make(..., shape=...) matching your data."
                )
        if x.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"{self.label}.{where} does not support dtype {x.dtype}; flowlib layers work in torch.float32 "
                "or torch.float64 (convert with x.float() or x.double())"
            )
        if x.shape[0] == 0:
            raise ValueError(
                f"{self.label}.{where} got an empty batch (B = 0, shape {list(x.shape)}); pass at least one sample"
            )
        if _validation == "full" and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(
                f"{self.label}.{where} got an input with {bad} NaN/Inf value(s) (shape {list(x.shape)}); "
                "the previous layer or the data is broken: check the data and the learning rate."
            )

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Sequential(Flow):
    """Composition ``f = f_K o ... o f_1``: ``logdet = sum_k logdet_k``; inverse in reverse order.

    Arguments:
        *flows: the layers, applied left to right in ``forward``.
    """

    def __init__(self, *flows: Flow):
        if not flows:
            raise ValueError("Sequential needs at least one flow")
        super().__init__(flows[0].shape)
        self.flows = nn.ModuleList(flows)

    def check_input(self, x: Tensor, where: str = "forward") -> None:
        # Each member checks its own input; checking here too would only repeat the work.
        return None

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = 0
        for flow in self.flows:
            x, ld = flow(x)
            logdet = logdet + ld
        return x, logdet

    def _inverse(self, y: Tensor) -> Tensor:
        for flow in reversed(self.flows):
            y = flow.inverse(y)
        return y

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, i):
        return self.flows[i]
