"""Vector planar / Sylvester / generalized Sylvester / residual flows of ``flowlib.toy.sylvester``."""

import math

import pytest
import torch

from flowlib.functional import SeriesNotConverged, fixed_point_iterations
from flowlib.testing import flow_errors, measured_lipschitz, perturb_
from flowlib.toy import sample
from flowlib.toy.flows import fit_density
from flowlib.toy.sylvester import (
    TOY_FLOWS,
    GeneralizedSylvester,
    MaskedMLP,
    Planar,
    ResidualMLP,
    Sylvester,
    make_stack,
    series_logdet,
    solve_monotone,
)

F64 = torch.float64


@pytest.mark.parametrize("kind", sorted(TOY_FLOWS))
@pytest.mark.parametrize("dim", [2, 5])
def test_round_trip_and_logdet_against_brute_force(kind, dim):
    torch.manual_seed(0)
    flow = make_stack(kind, dim=dim, n_layers=3).double().eval()
    x = 2 * torch.randn(6, dim, dtype=F64)
    for _ in range(2):  # as built, then after a large random parameter change
        errors = flow_errors(flow, x)
        assert errors["inverse"] < 1e-9, (kind, errors)
        assert errors["logdet"] < 1e-9, (kind, errors)
        perturb_(flow, 0.5, torch.Generator().manual_seed(1))
    assert all(layer.last_inverse_iterations > 0 for layer in flow)


def test_sylvester_with_fewer_hidden_units_than_dimensions():
    torch.manual_seed(1)
    layer = Sylvester((4,), n_hidden=2).double()
    Q, R, Rt = layer.matrices()
    assert Q.shape == (4, 2) and torch.allclose(Q.T @ Q, torch.eye(2, dtype=F64), atol=1e-12)
    assert torch.equal(R, torch.triu(R)) and torch.equal(Rt, torch.triu(Rt))
    errors = flow_errors(layer, torch.randn(5, 4, dtype=F64))
    assert errors["inverse"] < 1e-10 and errors["logdet"] < 1e-10


def test_planar_keeps_w_dot_u_hat_above_minus_one():
    layer = Planar((2,)).double()
    with torch.no_grad():
        layer.w.copy_(torch.tensor([1.0, 0.0]))
        layer.u.copy_(torch.tensor([-5.0, 3.0]))  # w^T u = -5: the raw layer would not be invertible
    c = float(layer.w @ layer.u_hat())
    assert -1 < c < -0.95
    errors = flow_errors(layer, torch.randn(4, 2, dtype=F64))
    assert errors["inverse"] < 1e-9 and errors["logdet"] < 1e-9


def test_masked_mlp_is_autoregressive():
    torch.manual_seed(0)
    net = MaskedMLP(4, hidden=16, n_out=3).double()
    torch.nn.init.normal_(net.layers[2].weight)  # the last layer starts at zero: make it non-trivial
    x = torch.randn(1, 4, dtype=F64)
    jac = torch.autograd.functional.jacobian(net, x)[0, :, :, 0, :]  # [n_out, D_out, D_in]
    dependence = jac.abs().sum(0) > 0  # [D_out, D_in]
    assert not torch.triu(dependence).any(), "output i must not depend on x_j for j >= i"
    assert torch.tril(dependence, -1)[1:].any(), "the mask must not cut every connection"


def test_generalized_sylvester_diagonal_is_bounded_so_the_layer_never_folds():
    torch.manual_seed(2)
    layer = GeneralizedSylvester((3,)).double()
    perturb_(layer, 3.0, torch.Generator().manual_seed(0))  # huge parameters: still invertible
    x = torch.randn(8, 3, dtype=F64)
    errors = flow_errors(layer, x)
    assert errors["inverse"] < 1e-8 and errors["logdet"] < 1e-8


def test_solve_monotone_counts_iterations_and_converges():
    target = torch.linspace(-3, 3, 7, dtype=F64)
    root, iterations = solve_monotone(lambda a: (a**3 + a, 3 * a**2 + 1), target, target - 3, target + 3)
    assert torch.allclose(root**3 + root, target, atol=1e-12)
    assert 1 < iterations < 60


def test_residual_lipschitz_and_fixed_point_inverse():
    torch.manual_seed(3)
    layer = ResidualMLP((2,), coeff=0.9).double()
    perturb_(layer, 1.0, torch.Generator().manual_seed(0))
    x = torch.randn(64, 2, dtype=F64)
    x2 = x + 1e-3 * torch.randn(64, 2, dtype=F64)
    ratio = (layer.g(x) - layer.g(x2)).norm(dim=1) / (x - x2).norm(dim=1)
    assert float(ratio.max()) < 0.9
    y, _ = layer(x)
    assert float((layer.inverse(y) - x).abs().max()) < 1e-12
    assert layer.last_inverse_iterations < 500


# notebook 04, section 6: the residual model and its shipped number of fit steps (keep in sync)
NOTEBOOK_RESIDUAL = dict(n_layers=4, hidden=16)
NOTEBOOK_FIT_STEPS = 150


@pytest.fixture(scope="module")
def trained_residual():
    """The residual flow of notebook 04 fitted to ``eight_gaussians`` exactly as the notebook does (float32)."""
    torch.manual_seed(0)
    flow = make_stack("residual", dim=2, **NOTEBOOK_RESIDUAL)
    data = torch.Generator().manual_seed(1)
    fit_density(flow, lambda n: sample("eight_gaussians", n, generator=data), steps=NOTEBOOK_FIT_STEPS, lr=5e-3)
    return flow


def test_trained_residual_flow_inverts_within_the_announced_iterations(trained_residual):
    """Issue 14: the trained residual flow of notebook 04 could not be inverted (``SeriesNotConverged``)."""
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = trained_residual.inverse(z)
        round_trip = float((trained_residual(x)[0] - z).abs().max())
        exact = make_stack("residual", dim=2, **NOTEBOOK_RESIDUAL).double()
        exact.load_state_dict(trained_residual.state_dict())
        reference = exact.inverse(z.double())  # the float64 inverse of the same weights
    assert round_trip < 1e-4, round_trip
    assert float((x.double() - reference).abs().max()) < 1e-3
    y = z
    for layer in reversed(list(trained_residual)):  # every layer stopped at or before its a-priori count
        with torch.no_grad():
            gap, target = layer.g(y).norm(dim=1), 1e-6 * (1 + y.norm(dim=1))
            y = layer.inverse(y)
        announced = max(
            fixed_point_iterations(layer.lipschitz, float(a), float(t)) for a, t in zip(gap, target, strict=True)
        )
        assert 0 < layer.last_inverse_iterations <= announced <= layer.max_iter


def test_float32_fixed_point_steps_level_off_at_rounding(trained_residual):
    """Why the old stopping rule failed: in float32 the step size stalls at the rounding level.

    The old inverse waited for a step ``max |x_{k+1} - x_k| <= 10 eps (1 + max |y|)``. The steps
    do not go to 0 but level off where rounding dominates (here about 0.04 of that threshold);
    on notebook 04's former model (6 layers x 32 hidden, 3000 steps) one layer levelled off at
    7.9e-6, above its threshold 7.5e-6, and the iteration never stopped. The a-priori count
    does not depend on the rounding level.
    """
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for layer in reversed(list(trained_residual)):
            x, steps = z, []
            for _ in range(300):
                x_next = z - layer.g(x)
                steps.append(float((x_next - x).abs().max()))
                x = x_next
            # exact arithmetic would shrink the step by c^100 < 1e-4 from one window to the next
            assert min(steps[-100:]) > 0.5 * min(steps[-200:-100]) > 0, steps[-5:]
            z = layer.inverse(z)  # the layer's own inverse stops regardless


def test_old_stopping_rule_never_stops_on_a_valid_float32_contraction():
    """The issue-14 failure, reproduced in a second: large hidden activations (biases leave Lip(g) unchanged)
    raise the float32 rounding floor of the steps above the old threshold, so the old rule never stopped."""
    torch.manual_seed(0)
    layer = ResidualMLP((2,), hidden=32)
    with torch.no_grad():
        layer.layers[0].bias.add_(100.0)
        layer.layers[1].bias.add_(100.0)
    y = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    assert measured_lipschitz(layer.g, 3 * y) <= layer.lipschitz  # a valid contraction
    threshold = 10 * torch.finfo(torch.float32).eps * (1 + float(y.abs().max()))  # the old stopping rule
    with torch.no_grad():
        x, steps = y, []
        for _ in range(500):  # the old max_iter
            x_next = y - layer.g(x)
            steps.append(float((x_next - x).abs().max()))
            x = x_next
        assert min(steps) > 2 * threshold, (min(steps), threshold)  # it would never have stopped
        x = layer.inverse(y)  # the fix: it stops after the announced count, whatever the rounding floor
        used = layer.last_inverse_iterations
        gap, target = layer.g(y).norm(dim=1), 1e-6 * (1 + y.norm(dim=1))
        reference = layer.double().inverse(y.double())
    announced = max(
        fixed_point_iterations(layer.lipschitz, a, t) for a, t in zip(gap.tolist(), target.tolist(), strict=True)
    )
    assert float((x.double() - reference).abs().max()) < 1e-4
    assert 0 < used <= announced <= layer.max_iter


def test_residual_mlp_lipschitz_bound_holds_after_any_training(trained_residual):
    points = 3 * torch.randn(512, 2, generator=torch.Generator().manual_seed(4))
    for layer in trained_residual:  # after maximum-likelihood training (float32)
        assert measured_lipschitz(layer.g, points) <= layer.lipschitz
    layer = ResidualMLP((2,), hidden=16, coeff=0.9).double()  # after training against the bound
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(5)
    for _ in range(100):
        a = torch.randn(64, 2, dtype=F64, generator=generator)
        b = a + 1e-2 * torch.randn(a.shape, dtype=F64, generator=generator)
        loss = -((layer.g(a) - layer.g(b)).norm(dim=1) / (a - b).norm(dim=1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    points = points.double()
    adversarial = measured_lipschitz(layer.g, points, jacobian_points=32, generator=generator)
    assert 0.6 * layer.lipschitz < adversarial <= layer.lipschitz, adversarial
    perturb_(layer, 5.0, generator)  # and after a large random change
    assert measured_lipschitz(layer.g, points, jacobian_points=32, generator=generator) <= layer.lipschitz


def test_residual_mlp_inverse_errors_name_the_layer(monkeypatch):
    layer = ResidualMLP((2,), coeff=0.9).double()
    y = 3 * torch.randn(8, 2, dtype=F64)
    layer.max_iter = 3
    with pytest.raises(SeriesNotConverged, match="ResidualMLP.inverse: .* needs n=\\d+ iterations .* max_iter=3"):
        layer.inverse(y)
    layer.max_iter = 500
    monkeypatch.setattr(layer, "g", lambda t: -1.5 * t)  # not a contraction
    with pytest.raises(SeriesNotConverged, match="ResidualMLP.inverse: step 2 .* not a contraction"):
        layer.inverse(y)


def test_series_logdet_truncated_is_biased_roulette_is_unbiased():
    B = torch.tensor([[0.5, 0.3], [-0.2, 0.6]], dtype=F64)  # a linear g with ||B|| < 1: J = B everywhere
    exact = float(torch.linalg.slogdet(torch.eye(2, dtype=F64) + B).logabsdet)
    two_terms = float(torch.trace(B) - torch.trace(B @ B) / 2)  # what the truncated series estimates
    x = torch.zeros(80000, 2, dtype=F64)
    g = torch.Generator().manual_seed(0)
    truncated = series_logdet(lambda t: t @ B.T, x, terms=2, generator=g)
    roulette = series_logdet(lambda t: t @ B.T, x[:20000], terms=2, roulette=0.5, generator=g)  # N drawn per sample
    # 5 standard errors of the mean: the assertions hold with overwhelming probability
    se_t = float(truncated.std()) / math.sqrt(truncated.numel())
    se_r = float(roulette.std()) / math.sqrt(roulette.numel())
    assert abs(float(truncated.mean()) - two_terms) < 5 * se_t
    assert abs(two_terms - exact) > 10 * se_t, "the truncation bias must be visible at this sample size"
    assert abs(float(roulette.mean()) - exact) < 5 * se_r


def test_series_logdet_rejects_bad_probability():
    layer = ResidualMLP((2,))
    with pytest.raises(ValueError, match="roulette"):
        series_logdet(layer.g, torch.randn(2, 2), roulette=1.5)


def test_bad_shapes_and_names():
    with pytest.raises(ValueError, match="shape=\\(D,\\)"):
        Planar((2, 3))
    with pytest.raises(ValueError, match="n_hidden"):
        Sylvester((2,), n_hidden=3)
    with pytest.raises(ValueError, match="unknown toy flow"):
        make_stack("planr")
    with pytest.raises(ValueError, match=r"Planar.*\[B, 2\]"):
        Planar((2,))(torch.randn(3, 5))


@pytest.mark.parametrize("kind", sorted(TOY_FLOWS))
def test_fitting_a_toy_density_decreases_the_loss(kind):
    torch.manual_seed(0)
    flow = make_stack(kind, dim=2, n_layers=3)
    g = torch.Generator().manual_seed(0)
    losses = fit_density(flow, lambda n: sample("two_moons", n, generator=g), steps=30, lr=1e-2, batch_size=64)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.05, (kind, first, last)
