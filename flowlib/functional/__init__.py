"""Stateless operations the layers wrap, one module per idea.

* :mod:`~flowlib.functional.series` - the exponential series of a linear map, its term count,
  rescaling a weight to a norm bound, :class:`SeriesNotConverged`.
* :mod:`~flowlib.functional.convolution` - the convolution exponential, the dense matrix of a
  convolution, the kernel spectrum on a torus and the spectral-norm bound it gives.
* :mod:`~flowlib.functional.graph` - the graph convolution exponential and its norm bound.
* :mod:`~flowlib.functional.contraction` - ``y = x + g(x)`` with ``Lip(g) < 1``: fixed-point
  inverse, its iteration count, and the Hutchinson / Russian-roulette log-det series.

Every public name is importable from ``flowlib.functional`` directly.

>>> import torch
>>> from flowlib import functional as Fn
>>> x, k = torch.randn(2, 3, 5, 5, dtype=torch.float64), 0.1 * torch.randn(3, 3, 3, 3, dtype=torch.float64)
>>> torch.allclose(Fn.inv_conv_exp(Fn.conv_exp(x, k), k), x)
True
"""

from .contraction import default_inverse_tol, fixed_point_iterations, invert_contraction, logdet_series, series_terms
from .convolution import (
    conv_exp,
    conv_exp_logdet,
    conv_matrix,
    conv_spectral_norm_bound,
    inv_conv_exp,
    torus_kernel_spectrum,
)
from .graph import (
    adjacency_eigenvalue_range,
    graph_conv_exp,
    graph_conv_exp_logdet,
    graph_conv_exp_norm_bound,
    grid_adjacency,
    inv_graph_conv_exp,
    normalize_adjacency,
)
from .series import DEFAULT_TOL, MAX_TERMS, SeriesNotConverged, conv_exp_terms, exp_series, rescale_to_bound

__all__ = [
    "DEFAULT_TOL",
    "MAX_TERMS",
    "SeriesNotConverged",
    "exp_series",
    "conv_exp_terms",
    "rescale_to_bound",
    "conv_exp",
    "inv_conv_exp",
    "conv_exp_logdet",
    "conv_matrix",
    "torus_kernel_spectrum",
    "conv_spectral_norm_bound",
    "normalize_adjacency",
    "grid_adjacency",
    "graph_conv_exp",
    "inv_graph_conv_exp",
    "graph_conv_exp_logdet",
    "graph_conv_exp_norm_bound",
    "adjacency_eigenvalue_range",
    "series_terms",
    "fixed_point_iterations",
    "default_inverse_tol",
    "invert_contraction",
    "logdet_series",
]
