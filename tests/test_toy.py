"""The 2-D toy flows of notebooks 01/04: exact inverse and log-determinant, and they learn."""

import pytest
import torch

from flowlib.testing import flow_errors, perturb_
from flowlib.toy import densities
from flowlib.toy.flows import AffineCoupling, ExpCoupling, ExpLinear, fit_density, toy_flow


@pytest.mark.parametrize("cls", [ExpLinear, AffineCoupling, ExpCoupling])
@pytest.mark.parametrize("dim", [2, 3])
def test_toy_layers_match_brute_force(cls, dim):
    torch.manual_seed(0)
    layer = perturb_(cls((dim,)).double(), 0.3, torch.Generator().manual_seed(1))
    errors = flow_errors(layer, torch.randn(5, dim, dtype=torch.float64))
    assert errors["inverse"] < 1e-10 and errors["logdet"] < 1e-10, errors


@pytest.mark.parametrize("coupling", ["affine", "exp"])
def test_toy_flow_learns_two_moons(coupling):
    torch.manual_seed(0)
    flow = toy_flow(dim=2, depth=4, coupling=coupling, hidden=32)
    losses = fit_density(flow, lambda n: densities.sample("two_moons", n), steps=150, lr=3e-3)
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < first - 0.3, (first, last)
