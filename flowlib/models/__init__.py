"""Multi-scale image flows: config, dequantization, priors and the model.

>>> from flowlib.models import build_model
>>> model = build_model("tiny")
>>> model.config.image_shape
(1, 8, 8)

* :mod:`~flowlib.models.config` - :class:`ModelConfig` (the named sizes: :mod:`flowlib.presets`).
* :mod:`~flowlib.models.reshape` - squeeze and flip.
* :mod:`~flowlib.models.priors` - split prior and final Gaussian prior.
* :mod:`~flowlib.models.dequant` - uniform / variational dequantization, preprocessing.
* :mod:`~flowlib.models.multiscale` - :class:`FlowModel`, :func:`build_model`.
"""

from .config import ModelConfig
from .dequant import FlowDequantizer, Preprocess, UniformDequantizer
from .multiscale import FlowModel, build_model
from .priors import GaussianPrior, SplitPrior
from .reshape import Flip, Squeeze, squeeze2d, unsqueeze2d

__all__ = [
    "ModelConfig",
    "FlowModel",
    "build_model",
    "Squeeze",
    "Flip",
    "squeeze2d",
    "unsqueeze2d",
    "SplitPrior",
    "GaussianPrior",
    "Preprocess",
    "UniformDequantizer",
    "FlowDequantizer",
]
