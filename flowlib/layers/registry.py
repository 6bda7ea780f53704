"""Name -> layer registry: ``make(name, shape=(C, H, W), **kwargs)`` and ``available()``."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch  # noqa: F401  (used by the doctest)

from ..core import Flow

__all__ = ["register", "make", "available", "get"]

_REGISTRY: dict[str, Callable[..., Flow]] = {}
_ROLES: dict[str, str] = {}  # name -> role, for the layers that play one in the image models
ROLES = ("mixing", "coupling")  # mixing: a linear channel (and spatial) mixer; coupling: a coupling layer


def register(name: str, role: str | None = None):
    """Class decorator: make the layer buildable as ``make(name, shape=..., **kwargs)``.

    The class must accept ``shape`` as its first argument; its instances get
    ``.name = name`` so that error messages use the registered name. ``role`` (one of
    :data:`ROLES`) lists the layer in ``available(role)``: the image models and the
    experiments take their mixing and coupling choices from there.
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")

    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"layer name {name!r} is registered twice ({_REGISTRY[name]} and {cls})")
        cls.name = name
        _REGISTRY[name] = cls
        if role is not None:
            _ROLES[name] = role
        return cls

    return decorate


def available(role: str | None = None) -> list[str]:
    """The sorted names accepted by :func:`make`; with ``role``, only the layers of that role.

    >>> available("coupling")
    ['affine_coupling', 'conf_coupling', 'exp_coupling']
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
    return sorted(n for n in _REGISTRY if role is None or _ROLES.get(n) == role)


def get(name: str) -> Callable[..., Flow]:
    """The class registered as ``name`` (e.g. to inspect its keyword arguments)."""
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown layer {name!r}.{hint} Available: {', '.join(available())}")
    return _REGISTRY[name]


IMAGE_AXES = ("C", "H", "W")
# The sample shapes each layer takes, by registered name; every other layer takes (C, H, W) only.
SAMPLE_AXES = {
    "graph_convexp": (("N", "C"), IMAGE_AXES),  # a graph (nodes x channels), or an image grid
    "slog": (("C",), ("C", "L"), IMAGE_AXES),  # element-wise: any sample shape with channels first
}


def _check_shape(name: str, shape) -> tuple:
    """``shape`` as a tuple of ints, or a ``ValueError`` naming the layer and the shapes it takes.

    Image layers take ``(C, H, W)``; the exceptions are listed in :data:`SAMPLE_AXES`. Every
    size is a positive integer; ``None`` (any size) is allowed except for the channel count ``C``.
    """
    options = SAMPLE_AXES.get(name, (IMAGE_AXES,))
    want = " or ".join(f"shape=({', '.join(axes)})" for axes in options)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
        raise ValueError(f"make({name!r}) takes {want} (a tuple of sizes), got shape={shape!r}")
    shape = tuple(shape)
    axes = next((a for a in options if len(a) == len(shape)), None)
    if axes is None:
        raise ValueError(f"make({name!r}) takes {want}, got shape={shape} ({len(shape)} sizes)")
    for axis, size in zip(axes, shape, strict=True):
        if size is None and axis != "C":
            continue
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(
                f"make({name!r}): {axis} in shape=({', '.join(axes)}) must be a positive integer, got shape={shape}"
            )
    return tuple(None if size is None else int(size) for size in shape)


def make(name: str, shape, **kwargs) -> Flow:
    """Build the layer registered as ``name`` for samples of shape ``shape``.

    ``shape`` is checked first (:func:`_check_shape`): ``(C, H, W)`` with positive sizes
    (other sample shapes for the layers in :data:`SAMPLE_AXES`).

    >>> import flowlib
    >>> layer = flowlib.layers.make("conv1x1", shape=(4, 8, 8))
    >>> y, logdet = layer(torch.randn(2, 4, 8, 8))
    >>> logdet.shape
    torch.Size([2])
    """
    cls = get(name)
    return cls(_check_shape(name, shape), **kwargs)
