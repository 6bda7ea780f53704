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

import math
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = [
    "Flow",
    "Sequential",
    "FlowDistribution",
    "set_validation",
    "validation",
    "get_validation",
    "check_input",
    "sample_shape",
    "half_sizes",
    "split_halves",
    "merge_halves",
    "standard_normal_logp",
    "SUPPORTED_DTYPES",
]

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


def check_input(x: Tensor, shape, label: str, where: str = "forward") -> None:
    """Raise ``ValueError`` naming ``label.where`` and the expected ``[B, *shape]`` if ``x`` does not fit.

    Checks the number of dimensions, every fixed axis of ``shape`` (``None``: any size), the dtype
    (float32 or float64), a non-empty batch, and, in ``"full"`` validation mode, that ``x`` holds
    no NaN or Inf (one device synchronisation). Nothing in ``"off"`` mode. What
    :meth:`Flow.forward` and :meth:`Flow.inverse` run first; layers whose inverse takes another
    shape (the squeeze) call it with that shape.

    >>> check_input(torch.zeros(2, 3, 4, 4), (3, 4, 4), "demo")
    >>> check_input(torch.zeros(2, 5, 4, 4), (3, 4, 4), "demo")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: demo.forward expects input of shape [B, 3, 4, 4], got [2, 5, 4, 4]: channel count is 5, expected 3. ...
    """
    if _validation == "off":
        return
    expected = "[B, " + _fmt(shape)[1:]
    if not isinstance(x, Tensor):
        raise ValueError(f"{label}.{where} expects a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() != len(shape) + 1:
        raise ValueError(
            f"{label}.{where} expects a {len(shape) + 1}-D input of shape {expected} "
            f"(a batch of samples), got {x.dim()}-D input of shape {list(x.shape)}"
        )
    for axis, (want, got) in enumerate(zip(shape, x.shape[1:], strict=True), start=1):
        if want is not None and want != got:
            what = "channel count" if axis == 1 else f"size of axis {axis}"
            raise ValueError(
                f"{label}.{where} expects input of shape {expected}, got {list(x.shape)}: "
                f"{what} is {got}, expected {want}. Build the layer with make(..., shape=...) matching your data."
            )
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{label}.{where} does not support dtype {x.dtype}; flowlib layers work in torch.float32 "
            "or torch.float64 (convert with x.float() or x.double())"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{label}.{where} got an empty batch (B = 0, shape {list(x.shape)}); pass at least one sample")
    if _validation == "full" and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{label}.{where} got an input with {bad} NaN/Inf value(s) (shape {list(x.shape)}); "
            "the previous layer or the data is broken: check the data and the learning rate."
        )


def sample_shape(shape, who: str, ndim: int | None = 3, fixed_size: bool = False) -> tuple:
    """``shape`` (of one sample, channels first) as a tuple, or a ``ValueError`` naming ``who``.

    ``ndim=3`` (default) asks for an image shape ``(C, H, W)``; ``ndim=None`` for ``(C, ...)``, any
    number of sizes. The channel count ``C`` must be fixed (not ``None``); with ``fixed_size`` every
    size must be. The one construction-time shape check of the layers (``make`` checks the shape
    too, but the classes are also built directly).

    >>> sample_shape([4, None, None], "demo")
    (4, None, None)
    >>> sample_shape((4, 8), "demo")
    Traceback (most recent call last):
        ...
    ValueError: demo needs shape=(C, H, W) with a fixed channel count C, got shape=(4, 8)
    """
    shape = tuple(shape)
    if (
        (ndim is None and not shape)
        or (ndim is not None and len(shape) != ndim)
        or shape[0] is None
        or (fixed_size and None in shape)
    ):
        axes = {3: "(C, H, W)", 1: "(D,)", None: "(C, ...)"}.get(ndim, f"({ndim} sizes, channels first)")
        what = "every size fixed" if fixed_size else "a fixed channel count C"
        raise ValueError(f"{who} needs shape={axes} with {what}, got shape={shape}")
    return shape


# -- the two halves of a coupling ---------------------------------------------------------


def half_sizes(channels: int, swap: bool = False) -> tuple[int, int]:
    """``(C_a, C_b)``: the sizes of the kept and the transformed half of :func:`split_halves`.

    The first half has ``C // 2`` channels, the second ``C - C // 2``; ``x_a`` is the first unless
    ``swap``.

    >>> half_sizes(5), half_sizes(5, swap=True)
    ((2, 3), (3, 2))
    """
    first, second = channels // 2, channels - channels // 2
    return (second, first) if swap else (first, second)


def split_halves(x: Tensor, swap: bool = False, dim: int = 1) -> tuple[Tensor, Tensor]:
    """``(x_a, x_b)``: the first ``C // 2`` and the last ``C - C // 2`` entries of ``x`` along ``dim``.

    ``swap`` returns them the other way round (``x_a`` the second half), so that two couplings with
    opposite ``swap`` transform complementary halves. Inverse: :func:`merge_halves`. Shared by the
    couplings of the layers, of the dequantizer, of the toy flows, of the graph flow and by the
    multi-scale split. Cost: two views (no copy).

    >>> x = torch.arange(5.0).reshape(1, 5)
    >>> split_halves(x, swap=True)
    (tensor([[2., 3., 4.]]), tensor([[0., 1.]]))
    >>> torch.equal(merge_halves(*split_halves(x, swap=True), swap=True), x)
    True
    """
    channels = x.shape[dim]
    first, second = x.split([channels // 2, channels - channels // 2], dim=dim)
    return (second, first) if swap else (first, second)


def merge_halves(x_a: Tensor, x_b: Tensor, swap: bool = False, dim: int = 1) -> Tensor:
    """Inverse of :func:`split_halves`: ``cat(x_a, x_b)`` along ``dim`` (``cat(x_b, x_a)`` with ``swap``)."""
    return torch.cat([x_b, x_a] if swap else [x_a, x_b], dim=dim)


# -- a flow with a standard-normal base ---------------------------------------------------

LOG_2PI = math.log(2 * math.pi)


def standard_normal_logp(z: Tensor) -> Tensor:
    """``sum log N(z; 0, 1)`` over all axes but the batch: ``[B, ...] -> [B]``.

    ``log N(z; 0, 1) = -(z^2 + log 2 pi) / 2`` per entry; ``O(D)`` per sample.

    >>> standard_normal_logp(torch.zeros(2, 3))
    tensor([-2.7568, -2.7568])
    """
    return -0.5 * (z.square() + LOG_2PI).flatten(1).sum(1)


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
        """Raise ``ValueError`` naming the layer and the expected shape if ``x`` does not fit (:func:`check_input`)."""
        check_input(x, self.shape, self.label, where)

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


class FlowDistribution(nn.Module):
    """A density from a flow and a standard-normal base: ``p(x) = N(f(x); 0, I) |det df/dx|``.

    ``log_prob(x) = standard_normal_logp(f(x)) + logdet(x)`` per sample (change of variables);
    ``sample(n)`` draws ``z ~ N(0, I)`` in the flow's dtype and returns ``f^{-1}(z)``.
    Cost: one forward (``log_prob``) or one inverse (``sample``) of the flow.
    Shapes: ``x: [B, *flow.shape]``, ``log_prob: [B]``, ``sample(n): [n, *flow.shape]``.
    Used by the graph flow (:class:`flowlib.graphs.GraphFlow`) and the toy flows
    (:func:`flowlib.toy.flows.log_prob`, :func:`flowlib.toy.flows.sample`).

    >>> import flowlib
    >>> density = FlowDistribution(flowlib.layers.make("conv1x1", shape=(2, 3, 3)))
    >>> density.log_prob(torch.randn(4, 2, 3, 3)).shape, density.sample(5).shape
    (torch.Size([4]), torch.Size([5, 2, 3, 3]))
    """

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    @property
    def shape(self) -> tuple:
        """The shape of one sample."""
        return self.flow.shape

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` per sample, shape ``[B]`` (nats)."""
        z, logdet = self.flow(x)
        return standard_normal_logp(z) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``f^{-1}(z)``, ``z ~ N(0, I)`` drawn on the CPU (``generator``) in the flow's dtype."""
        param = next(self.flow.parameters())
        z = torch.randn(n, *self.flow.shape, generator=generator, dtype=param.dtype).to(param.device)
        return self.flow.inverse(z)
