"""flowlib: invertible linear layers for normalizing flows, taught, tested and benchmarked.

Core contract (see :mod:`flowlib.core`)::

    y, logdet = layer(x)     # logdet: shape [B], log |det dy/dx| per sample
    x = layer.inverse(y)

Build any layer by name with :func:`flowlib.layers.make`.
"""

from . import data, functional, layers, linalg, models, nets, precision, presets
from .core import Flow, Sequential, get_validation, set_validation, validation

__all__ = [
    "Flow",
    "Sequential",
    "data",
    "functional",
    "layers",
    "linalg",
    "models",
    "nets",
    "precision",
    "presets",
    "set_validation",
    "get_validation",
    "validation",
]
__version__ = "0.1.0"
