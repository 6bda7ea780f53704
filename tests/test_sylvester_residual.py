"""Convolutional Sylvester flow and the residual-flow baseline: exactness, estimators, inverses."""

import pytest
import torch
from torch.func import functional_call

from flowlib.functional import SeriesNotConverged
from flowlib.layers.residual import ResidualFlow, series_terms
from flowlib.layers.sylvester import ConvSylvester, autoregressive_mask
from flowlib.testing import brute_force_logdet, flow_errors, perturb_


@pytest.fixture(autouse=True)
def one_thread():
    """Small autograd-heavy tests run faster on one thread, and are robust to a loaded machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def sylvester(shape=(3, 4, 4), scale=0.3, seed=0):
    torch.manual_seed(seed)
    layer = ConvSylvester(shape).double().eval()
    return perturb_(layer, scale, torch.Generator().manual_seed(seed + 1))


# -- Sylvester --------------------------------------------------------------------------


def test_f_is_triangular_in_raster_then_channel_order():
    layer = sylvester((2, 3, 3))
    u = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    kernels = layer._kernels()
    jac = torch.autograd.functional.jacobian(lambda t: layer._f(t, kernels)[0], u)  # [1, C, H, W, 1, C, H, W]
    jac = jac[0, :, :, :, 0].permute(1, 2, 0, 4, 5, 3).reshape(18, 18)  # index (h, w, c) on both sides
    assert torch.count_nonzero(torch.triu(jac, 1)) == 0  # lower triangular
    diagonal = layer._f(u, kernels)[1].permute(0, 2, 3, 1).reshape(18)
    assert torch.allclose(1 + torch.diagonal(jac), diagonal)
    mask = autoregressive_mask(2, 3)
    assert mask[:, :, 1, 1].tolist() == [[0, 0], [1, 0]] and mask[:, :, 2].sum() == 0 and mask[:, :, 1, 2].sum() == 0


@pytest.mark.parametrize("scale", [0.0, 0.3])
def test_sylvester_logdet_exact_and_inverse(scale):
    layer = sylvester((3, 4, 5), scale=scale)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    errors = flow_errors(layer, x)
    assert errors["inverse"] < 1e-9 and errors["logdet"] < 1e-9, errors


@pytest.mark.parametrize("a", [2.0, 6.0])
def test_sylvester_near_the_diagonal_limit(a):
    layer = sylvester((2, 4, 4))
    with torch.no_grad():  # d1 d2 = -tanh(a)^2 -> -1: the smallest diagonal of I + J_f approaches 0, stays > 0
        layer.a1.fill_(a)
        layer.a2.fill_(-a)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    z, logdet = layer(x)
    assert torch.isfinite(logdet).all()
    assert (logdet - brute_force_logdet(lambda t: layer(t)[0], x)).abs().max() < 1e-8
    if a == 2.0:  # min diagonal 1 - tanh(2)^2 = 0.07: the Jacobi-Newton inverse still converges (about 50 steps)
        assert (layer.inverse(z) - x).abs().max() < 1e-8


def test_sylvester_inverse_raises_when_not_converged():
    layer = sylvester()
    z, _ = layer(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    layer.max_iter, layer.tol = 1, 1e-14
    with pytest.raises(SeriesNotConverged, match="sylvester.inverse.*max_iter=1"):
        layer.inverse(z)


def test_sylvester_gradcheck():
    layer = sylvester((2, 3, 3), scale=0.2)
    names = ["k1", "k2", "a1", "a2", "bias", "basis.kernel"]
    params = {n: p.detach() for n, p in layer.named_parameters()}

    def fn(x, *values):
        out = functional_call(layer, {**params, **dict(zip(names, values, strict=True))}, (x,))
        return out[0], out[1]

    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    values = [params[n].clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(fn, (x, *values))


# -- Residual flow ----------------------------------------------------------------------


def residual(shape=(2, 4, 4), scale=0.5, seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = ResidualFlow(shape, hidden=8, **kwargs).double()
    return perturb_(layer, scale, torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_residual_branch_is_a_contraction(scale):
    layer = residual(scale=scale)
    w1, w2 = (w.detach() for w in layer.weights(4, 4))
    for w in (w1, w2):  # each normalised convolution has ||conv||_2 <= sqrt(c), checked on the dense matrix
        basis = torch.eye(w.shape[1] * 16, dtype=torch.float64).reshape(-1, w.shape[1], 4, 4)
        matrix = torch.nn.functional.conv2d(basis, w, padding=1).reshape(basis.shape[0], -1)
        assert float(torch.linalg.matrix_norm(matrix, ord=2)) <= layer.lipschitz ** 0.5 + 1e-12
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(layer.g, x).reshape(32, 32)
    assert float(torch.linalg.matrix_norm(jac, ord=2)) <= layer.lipschitz


def test_residual_eval_logdet_is_exact_and_deterministic():
    layer = residual().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    errors = flow_errors(layer, x)
    assert errors["inverse"] < 1e-9 and errors["logdet"] < 1e-10, errors
    assert torch.equal(layer(x)[1], layer(x)[1])


def test_residual_eval_hutchinson_mode_above_exact_max_dim():
    layer = residual(exact_max_dim=0, eval_probes=400).eval()
    assert layer.eval_terms == series_terms(0.9, 1, 1e-3) == 50
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    reference = brute_force_logdet(lambda t: t + layer.g(t), x)
    first, second = layer(x)[1], layer(x)[1]
    assert torch.equal(first, second)  # fixed seed: deterministic
    assert (first - reference).abs().max() < 0.05  # bias <= 32 * 0.9^51 / (51 * 0.1) < 0.03 plus probe noise


def test_residual_training_estimate_is_unbiased():
    layer = residual().train()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    reference = float(brute_force_logdet(lambda t: t + layer.g(t), x))
    with torch.no_grad():
        estimates = torch.cat([layer(x)[1] for _ in range(400)])
    mean, stderr = float(estimates.mean()), float(estimates.std() / 20)
    assert abs(reference) > 0.1  # a non-trivial log-determinant
    assert abs(mean - reference) < 4 * stderr, (mean, reference, stderr)
    assert estimates.std() > 0  # it is stochastic


def test_residual_training_estimate_has_a_gradient():
    layer = residual().train()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    _, logdet = layer(x)
    logdet.sum().backward()
    assert layer.w1.grad is not None and layer.w1.grad.abs().sum() > 0


def test_residual_inverse_converges_and_raises_when_capped():
    layer = residual().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    y, _ = layer(x)
    assert (layer.inverse(y) - x).abs().max() < 1e-10
    layer.max_iter = 2
    with pytest.raises(SeriesNotConverged, match="residual.inverse.*max_iter=2"):
        layer.inverse(y)


def test_residual_bad_arguments():
    with pytest.raises(ValueError, match="lipschitz"):
        ResidualFlow((2, 4, 4), lipschitz=1.0)
    with pytest.raises(ValueError, match="roulette_p"):
        ResidualFlow((2, 4, 4), roulette_p=0.0)
