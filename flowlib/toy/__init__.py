"""Toy problems for the notebooks: 2-D densities (:mod:`.densities`) and small vector flows (:mod:`.flows`)."""

from . import densities, flows
from .densities import SAMPLERS, sample
from .flows import AffineCoupling, ExpCoupling, ExpLinear, fit_density, grid_log_prob, log_prob, toy_flow

__all__ = [
    "densities",
    "flows",
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
