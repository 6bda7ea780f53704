"""Name -> layer registry: ``make(name, shape=(C, H, W), **kwargs)`` and ``available()``."""

from __future__ import annotations

from collections.abc import Callable

import torch  # noqa: F401  (used by the doctest)

from ..core import Flow

__all__ = ["register", "make", "available", "get"]

_REGISTRY: dict[str, Callable[..., Flow]] = {}


def register(name: str):
    """Class decorator: make the layer buildable as ``make(name, shape=..., **kwargs)``.

    The class must accept ``shape`` as its first argument; its instances get
    ``.name = name`` so that error messages use the registered name.
    """

    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"layer name {name!r} is registered twice ({_REGISTRY[name]} and {cls})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """The sorted names accepted by :func:`make`."""
    return sorted(_REGISTRY)


def get(name: str) -> Callable[..., Flow]:
    """The class registered as ``name`` (e.g. to inspect its keyword arguments)."""
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown layer {name!r}.{hint} Available: {', '.join(available())}")
    return _REGISTRY[name]


def make(name: str, shape, **kwargs) -> Flow:
    """Build the layer registered as ``name`` for samples of shape ``shape``.

    >>> import flowlib
    >>> layer = flowlib.layers.make("conv1x1", shape=(4, 8, 8))
    >>> y, logdet = layer(torch.randn(2, 4, 8, 8))
    >>> logdet.shape
    torch.Size([2])
    """
    return get(name)(tuple(shape), **kwargs)
