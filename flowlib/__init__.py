"""flowlib: invertible linear layers for normalizing flows, taught, tested and benchmarked.

Core contract (see :mod:`flowlib.core`)::

    y, logdet = layer(x)     # logdet: shape [B], log |det dy/dx| per sample
    x = layer.inverse(y)

Build any layer by name with :func:`flowlib.layers.make`.

The submodules load on first use (``flowlib.layers``, ``from flowlib import Flow``): ``import
flowlib`` itself does not import torch, so a command such as ``python -m flowlib.train`` can
install its Ctrl-C handling before the seconds torch takes to import.

>>> import flowlib
>>> flowlib.layers.make("conv1x1", shape=(2, 4, 4)).name
'conv1x1'
"""

import importlib

_SUBMODULES = ("data", "functional", "layers", "linalg", "models", "nets", "precision", "presets")
_FROM_CORE = ("Flow", "Sequential", "set_validation", "get_validation", "validation")

__all__ = [*_FROM_CORE, *_SUBMODULES]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import a submodule, or a name of :mod:`flowlib.core`, the first time it is asked for."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FROM_CORE:
        return getattr(importlib.import_module(f"{__name__}.core"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
