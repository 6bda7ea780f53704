"""All invertible layers, one module per family, each registered by name.

>>> import flowlib
>>> "convexp" in flowlib.layers.available()
True
>>> layer = flowlib.layers.make("convexp", shape=(4, 8, 8))
"""

from . import (  # noqa: F401  (importing a family registers its layers)
    convexp,
    coupling,
    dctconv,
    elementwise,
    emerging,
    fftconv,
    linear,
    residual,
    sylvester,
    woodbury,
)
from .registry import available, get, make, register

__all__ = ["available", "get", "make", "register"]
