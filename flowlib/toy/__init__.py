"""Toy problems for the notebooks: 2-D densities (:mod:`.densities`) and small vector flows
(:mod:`.flows`: exponential linear and couplings; :mod:`.sylvester`: planar, Sylvester, generalized
Sylvester and residual flows)."""

from . import densities, flows, sylvester
from .densities import SAMPLERS, sample
from .flows import AffineCoupling, ExpCoupling, ExpLinear, fit_density, grid_log_prob, log_prob, toy_flow

__all__ = [
    "densities",
    "flows",
    "sylvester",
    "SAMPLERS",
    "sample",
    "ExpLinear",
    "AffineCoupling",
    "ExpCoupling",
    "toy_flow",
    "log_prob",
    "fit_density",
    "grid_log_prob",
]
