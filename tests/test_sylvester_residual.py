"""Convolutional Sylvester flow and the residual-flow baseline: exactness, estimators, inverses."""

import pytest
import torch
from torch._dynamo.utils import counters
from torch.func import functional_call

from flowlib.core import validation
from flowlib.functional import SeriesNotConverged, fixed_point_iterations, invert_contraction, series_terms
from flowlib.layers.residual import ResidualFlow
from flowlib.layers.sylvester import ConvSylvester, autoregressive_mask, hidden_degrees
from flowlib.testing import brute_force_logdet, build_layer, flow_errors, measured_lipschitz, perturb_


def sylvester(shape=(3, 4, 4), scale=0.3, seed=0, **kwargs):
    return build_layer("sylvester", shape, seed, scale, **kwargs)


# -- Sylvester --------------------------------------------------------------------------


def test_masks_combine_made_degrees_with_causal_taps():
    assert hidden_degrees(7, 3).tolist() == [-1, 0, 1, -1, 0, 1, -1]
    channels, units = torch.arange(2), hidden_degrees(4, 2)
    first = autoregressive_mask(channels, units, 3, strict=False)  # [4, 2, 3, 3]
    last = autoregressive_mask(units, channels, 3, strict=True)  # [2, 4, 3, 3]
    assert first[:, :, 1, 1].tolist() == [[0, 0], [1, 0], [0, 0], [1, 0]]  # unit of degree m reads channels <= m
    assert last[:, :, 1, 1].tolist() == [[1, 0, 1, 0], [1, 1, 1, 1]]  # channel c reads units of degree < c
    for mask in (first, last):  # causal taps: rows above and left on the centre row, nothing after the centre
        assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1, 0] == 1).all()
        assert mask[:, :, 2].sum() == 0 and mask[:, :, 1, 2].sum() == 0


@pytest.mark.parametrize("hidden", [2, 7])
def test_f_is_triangular_in_raster_then_channel_order(hidden):
    C, H, W = 3, 3, 3
    layer = sylvester((C, H, W), hidden=hidden)
    assert layer.hidden == hidden
    D = C * H * W
    u = torch.randn(1, C, H, W, dtype=torch.float64)
    weights = layer._weights()
    jac = torch.autograd.functional.jacobian(lambda t: layer._f(t, weights)[0], u)  # [1, C, H, W, 1, C, H, W]
    jac = jac[0, :, :, :, 0].permute(1, 2, 0, 4, 5, 3).reshape(D, D)  # index (h, w, c) on both sides
    assert torch.count_nonzero(torch.triu(jac, 1)) == 0  # lower triangular
    diagonal = layer._f(u, weights)[1].permute(0, 2, 3, 1).reshape(D)
    assert torch.allclose(1 + torch.diagonal(jac), diagonal)
    assert (diagonal >= 1 - (torch.tanh(layer.a1) * torch.tanh(layer.a2)).abs().max()).all()
    pixel = jac.reshape(H * W, C, H * W, C)
    same_pixel = torch.stack([pixel[p, :, p] for p in range(H * W)])  # [H*W, C, C]: d f(p, c) / d u(p, c')
    reach = same_pixel.abs().sum(0) > 0  # [C, C]: which channel reads which, within a pixel
    assert reach[1, 0] and reach[2, 0]  # channels depend on earlier channels of their own pixel ...
    assert reach[2, 1] == (hidden > 2)  # ... through units of degree c' (hidden=2 has degrees -1, 0 only)
    assert pixel[4, :, :4].abs().sum() > 0  # and on earlier pixels (the centre pixel reads the 4 before it)


def test_hidden_width_default_and_parameters():
    layer = ConvSylvester((3, 4, 4))
    assert layer.hidden == 6  # 2 C
    wide = ConvSylvester((3, 4, 4), hidden=10, kernel_size=3)
    own = sum(p.numel() for n, p in wide.named_parameters() if not n.startswith("basis."))
    assert own == 3 * 3 * 10 * 9 + 10 * 10 + 2 * 10 + 4 * 3
    with pytest.raises(ValueError, match="hidden >= 1"):
        ConvSylvester((3, 4, 4), hidden=0)


@pytest.mark.parametrize("scale, hidden", [(0.0, None), (0.3, None), (0.3, 11)])
def test_sylvester_logdet_exact_and_inverse(scale, hidden):
    layer = sylvester((3, 4, 5), scale=scale, hidden=hidden)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    errors = flow_errors(layer, x)
    assert errors["inverse"] < 1e-9 and errors["logdet"] < 1e-9, errors
    _, logdet = layer(x)
    assert (logdet - brute_force_logdet(lambda t: layer(t)[0], x)).abs().max() < 1e-9


@pytest.mark.parametrize("a", [2.0, 6.0])
def test_sylvester_near_the_diagonal_limit(a):
    layer = sylvester((2, 4, 4), hidden=5)
    with torch.no_grad():  # d1 d2 = -tanh(a)^2 -> -1: the smallest diagonal of I + J_f approaches 0, stays > 0
        layer.a1.fill_(a)
        layer.a2.fill_(-a)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    z, logdet = layer(x)
    assert torch.isfinite(logdet).all()
    assert (logdet - brute_force_logdet(lambda t: layer(t)[0], x)).abs().max() < 1e-8
    if a == 2.0:  # min diagonal 1 - tanh(2)^2 = 0.07: the Jacobi-Newton inverse still converges
        assert (layer.inverse(z) - x).abs().max() < 1e-8


def test_sylvester_inverse_raises_when_not_converged():
    layer = sylvester()
    z, _ = layer(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    layer.max_iter, layer.inverse_tol = 1, 1e-14
    with pytest.raises(SeriesNotConverged, match="sylvester.inverse.*max_iter=1"):
        layer.inverse(z)


def test_sylvester_gradcheck():
    layer = sylvester((2, 3, 3), scale=0.2, hidden=3)
    names = ["k1", "b1", "k2", "b2", "k3", "b3", "a1", "a2", "basis.kernel"]
    params = {n: p.detach() for n, p in layer.named_parameters()}

    def fn(x, *values):
        out = functional_call(layer, {**params, **dict(zip(names, values, strict=True))}, (x,))
        return out[0], out[1]

    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    values = [params[n].clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(fn, (x, *values))


# -- Residual flow ----------------------------------------------------------------------


def residual(shape=(2, 4, 4), scale=0.5, seed=0, **kwargs):
    return build_layer("residual", shape, seed, scale, hidden=8, **kwargs)


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_residual_branch_is_a_contraction(scale):
    layer = residual(scale=scale)
    w1, w2 = (w.detach() for w in layer.weights(4, 4))
    for w in (w1, w2):  # each normalised convolution has ||conv||_2 <= sqrt(c), checked on the dense matrix
        basis = torch.eye(w.shape[1] * 16, dtype=torch.float64).reshape(-1, w.shape[1], 4, 4)
        matrix = torch.nn.functional.conv2d(basis, w, padding=1).reshape(basis.shape[0], -1)
        assert float(torch.linalg.matrix_norm(matrix, ord=2)) <= layer.lipschitz**0.5 + 1e-12
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


def test_residual_truncation_is_drawn_on_the_cpu():
    layer = residual()
    with torch.device("meta"):  # a default device other than the CPU: no tensor is read back from it
        draws = [layer.sample_terms() for _ in range(2000)]
    assert all(isinstance(n, int) and n >= layer.n_exact for n in draws)
    mean = sum(draws) / len(draws)  # n_exact + (1 - p) / p = 11, standard deviation sqrt(1 - p) / p = 9.5
    assert abs(mean - 11) < 4 * 9.5 / len(draws) ** 0.5, mean


def test_residual_training_step_compiles_with_one_eager_block():
    torch.manual_seed(4)
    layer = residual().float().train()
    step = torch.compile(lambda t: sum(v.sum() for v in layer(t)), backend="eager")
    torch._dynamo.reset()
    counters.clear()
    with validation("shape"), torch._dynamo.config.patch(error_on_recompile=True):  # no NaN-check breaks
        for _ in range(4):  # new series lengths: neither a recompilation nor a new graph break
            step(torch.randn(2, 2, 4, 4)).backward()
    breaks = list(counters["graph_break"])
    torch._dynamo.reset()
    assert len(breaks) == 1 and "torch.compiler.disable" in breaks[0], breaks  # no item() / requires_grad_ break
    assert layer.w1.grad.abs().sum() > 0


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
    with pytest.raises(SeriesNotConverged, match="residual.inverse: .* needs n=\\d+ iterations .* max_iter=2"):
        layer.inverse(y)


def test_residual_lipschitz_bound_survives_adversarial_training_and_perturbation():
    """Lip(g) <= c is guaranteed, not estimated: train g to *maximise* its Lipschitz ratio, then check it."""
    layer = residual(scale=0.0)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(5)
    for _ in range(60):  # ascend ||g(a) - g(b)|| / ||a - b|| on fresh near pairs
        a = torch.randn(16, 2, 4, 4, dtype=torch.float64, generator=generator)
        b = a + 1e-2 * torch.randn(a.shape, dtype=torch.float64, generator=generator)
        ratio = (layer.g(a) - layer.g(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
        optimizer.zero_grad()
        (-ratio.mean()).backward()
        optimizer.step()
    points = 2 * torch.randn(256, 2, 4, 4, dtype=torch.float64, generator=generator)
    trained = measured_lipschitz(layer.g, points, jacobian_points=8, generator=generator)
    assert 0.6 * layer.lipschitz < trained <= layer.lipschitz, trained  # pushed towards the bound, never past it
    perturb_(layer, 3.0, generator)
    perturbed = measured_lipschitz(layer.g, points, jacobian_points=8, generator=generator)
    assert perturbed <= layer.lipschitz, perturbed


def test_fixed_point_iterations_is_the_smallest_count_meeting_the_bound():
    for c, gap, tol in [(0.9, 3.0, 1e-12), (0.5, 1.0, 1e-3), (0.99, 10.0, 1e-6)]:
        n = fixed_point_iterations(c, gap, tol)
        assert c**n / (1 - c) * gap <= tol < c ** (n - 1) / (1 - c) * gap
    assert fixed_point_iterations(0.9, 1e-20, 1e-12) == 0  # already within tol: no iteration needed
    with pytest.raises(ValueError, match="Lipschitz constant in \\(0, 1\\)"):
        fixed_point_iterations(1.0, 1.0, 1e-6)
    with pytest.raises(ValueError, match="finite"):
        fixed_point_iterations(0.9, float("nan"), 1e-6)


def test_residual_inverse_error_follows_the_a_priori_bound():
    """||x_n - x|| <= c^n / (1 - c) ||g(y)|| at every n, and the layer stops at the announced count."""
    layer = residual(scale=3.0).eval()
    y = 3 * torch.randn(4, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = layer.weights(4, 4)
    with torch.no_grad():
        x_star, _ = invert_contraction(lambda t: layer.g(t, weights), y, layer.lipschitz, 1e-15, 2000, "test")
        gap = layer.g(y, weights).flatten(1).norm(dim=1)
        x = y.clone()
        for n in range(1, 61):
            x = y - layer.g(x, weights)
            error = (x - x_star).flatten(1).norm(dim=1)
            assert (error <= layer.lipschitz**n / (1 - layer.lipschitz) * gap + 1e-12).all(), n
    x_back = layer.inverse(y)
    target = 1e-12 * (1 + y.flatten(1).norm(dim=1))
    announced = max(fixed_point_iterations(0.9, float(a), float(t)) for a, t in zip(gap, target, strict=True))
    assert 0 < layer.last_inverse_iterations <= announced
    assert ((x_back - x_star).flatten(1).norm(dim=1) <= target + 1e-13).all()


def test_residual_inverse_raises_when_g_is_not_a_contraction(monkeypatch):
    layer = residual().eval()
    y = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    monkeypatch.setattr(layer, "g", lambda t, weights=None: -1.5 * t)  # expands: the fixed point diverges
    with pytest.raises(
        SeriesNotConverged, match="residual.inverse: step 2 .* not a contraction with Lip\\(g\\) <= 0.9"
    ):
        layer.inverse(y)


def test_residual_inverse_names_the_layer_when_g_is_not_finite():
    layer = residual().eval()
    y = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        layer.b2[0] = float("nan")  # broken parameters (the input itself is validated by Flow)
    with pytest.raises(ValueError, match="residual.inverse: y or g\\(y\\) is not finite"):
        layer.inverse(y)


def test_residual_bad_arguments():
    with pytest.raises(ValueError, match="lipschitz"):
        ResidualFlow((2, 4, 4), lipschitz=1.0)
    with pytest.raises(ValueError, match="roulette_p"):
        ResidualFlow((2, 4, 4), roulette_p=0.0)
