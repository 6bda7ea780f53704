"""Couplings, their conditioner networks and the S-Log gate (float64 brute-force checks)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

import flowlib
from flowlib.layers.coupling import adaptive_circular_conv, adaptive_circular_deconv
from flowlib.layers.elementwise import slog_forward, slog_inverse
from flowlib.nets import ConvNet, DenseNet, make_net
from flowlib.testing import brute_force_logdet, build_layer, flow_errors

COUPLINGS = ["affine_coupling", "exp_coupling", "conf_coupling"]
DENSE = dict(net="densenet", depth=3, growth=6, intermediate=8)


def randn(*shape, seed=2, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("name", COUPLINGS)
def test_one_channel_raises_clear_error(name):
    with pytest.raises(ValueError, match=rf"{name} needs >= 2 channels.*squeeze"):
        flowlib.layers.make(name, shape=(1, 8, 8))


def test_unknown_net_or_option_raises():
    with pytest.raises(ValueError, match="unknown conditioner net 'mlp'"):
        flowlib.layers.make("affine_coupling", shape=(4, 4, 4), net="mlp")
    with pytest.raises(ValueError, match=r"'conv' does not take \['depth'\]"):
        flowlib.layers.make("affine_coupling", shape=(4, 4, 4), depth=3)


@pytest.mark.parametrize("name", ["affine_coupling", "exp_coupling"])
def test_zero_initialised_couplings_start_at_identity(name):
    layer = flowlib.layers.make(name, shape=(4, 4, 4), **DENSE)
    x = torch.randn(3, 4, 4, 4)
    y, logdet = layer(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(3))


def test_conf_coupling_starts_as_slog_gate():
    layer = flowlib.layers.make("conf_coupling", shape=(4, 4, 4))
    gate = flowlib.layers.make("slog", shape=(2, 4, 4))
    x = torch.randn(3, 4, 4, 4)
    y, logdet = layer(x)
    y_gate, logdet_gate = gate(x[:, 2:])
    torch.testing.assert_close(y, torch.cat([x[:, :2], y_gate], 1))
    torch.testing.assert_close(logdet, logdet_gate)


# -- round trips and log-determinants -----------------------------------------------------


@pytest.mark.parametrize("name", COUPLINGS)
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "relu"])
def test_densenet_conditioner_round_trip_and_logdet(name, gated):
    layer = build_layer(name, (4, 4, 4), **DENSE, gated=gated)
    x = randn(2, 4, 4, 4)
    assert float(layer(x)[0].detach().sub(x).abs().max()) > 0.1  # the perturbation made it non-trivial
    errors = flow_errors(layer, x)
    assert errors["inverse"] < 1e-10 and errors["logdet"] < 1e-8, errors


@pytest.mark.parametrize("name", COUPLINGS)
@pytest.mark.parametrize("swap", [False, True])
def test_odd_channel_count_and_swap(name, swap):
    layer = build_layer(name, (5, 3, 4), swap=swap, hidden=8)
    x = randn(2, 5, 3, 4)
    y, _ = layer(x)
    kept = slice(3, 5) if swap else slice(0, 2)  # x_a: 2 channels; x_b: the other 3
    assert torch.equal(y[:, kept], x[:, kept])
    errors = flow_errors(layer, x)
    assert errors["inverse"] < 1e-10 and errors["logdet"] < 1e-8, errors


@pytest.mark.parametrize("name", ["affine_coupling", "exp_coupling"])
def test_gradcheck_inputs_and_parameters(name):
    layer = build_layer(name, (4, 2, 2), hidden=3, scale=0.3)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    x = randn(2, 4, 2, 2).requires_grad_()

    def forward(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,))

    assert gradcheck(forward, (x, *params), fast_mode=True)
    assert gradcheck(layer.inverse, (randn(2, 4, 2, 2, seed=3).requires_grad_(),), fast_mode=True)


def test_exp_coupling_with_diagonal_matrix_is_an_affine_coupling():
    layer = build_layer("exp_coupling", (6, 3, 3), hidden=8, scale=0.3)
    n = layer.c_b

    class DiagonalOnly(nn.Module):  # zero the off-diagonal entries of the predicted A
        def __init__(self, net):
            super().__init__()
            self.net = net
            mask = torch.ones(n * n + n, dtype=torch.float64)
            mask[: n * n] = torch.eye(n, dtype=torch.float64).flatten()
            self.register_buffer("mask", mask.view(1, -1, 1, 1))

        def forward(self, x):
            return self.net(x) * self.mask

    x = randn(2, 6, 3, 3)
    y_full, _ = layer(x)
    layer.net = DiagonalOnly(layer.net)
    y, logdet = layer(x)
    A, t = layer.params(layer.condition(x[:, :3]))
    log_s = A.diagonal(dim1=-2, dim2=-1).permute(0, 3, 1, 2)  # [B, C_b, H, W]
    torch.testing.assert_close(y[:, 3:], x[:, 3:] * log_s.exp() + t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, log_s.flatten(1).sum(1), rtol=1e-12, atol=1e-12)
    # the off-diagonal entries genuinely mix the channels of x_b
    assert float((y_full - y).detach().abs().max()) > 1e-2


# -- S-Log gate ---------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 1.0, 7.0])
def test_slog_inverse_and_log_derivative_over_wide_range(alpha):
    magnitudes = torch.logspace(-8, 3, 400, dtype=torch.float64)
    x = torch.cat([magnitudes, -magnitudes]).requires_grad_()
    a = torch.tensor(alpha, dtype=torch.float64)
    y, log_deriv = slog_forward(x, a)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_deriv, grad.log(), rtol=0, atol=1e-12)
    x_back = slog_inverse(y.detach(), a)
    assert float(((x_back - x) / x).detach().abs().max()) < 1e-12
    assert torch.all(torch.sign(y) == torch.sign(x))


@pytest.mark.parametrize("shape", [(3,), (3, 5), (3, 4, 4)])
def test_slog_layer_per_channel_alpha_any_shape(shape):
    layer = build_layer("slog", shape, scale=0.5)
    x = 3 * randn(2, *shape)
    errors = flow_errors(layer, x)
    assert errors["inverse"] < 1e-10 and errors["logdet"] < 1e-8, errors
    alpha = layer.log_alpha.exp().view(1, -1, *[1] * (len(shape) - 1))
    torch.testing.assert_close(layer(x)[0], torch.sign(x) * torch.log1p(alpha * x.abs()) / alpha)


# -- CONF's data-adaptive convolution ---------------------------------------------------------


def explicit_circular_conv(x, kernel):
    """One grouped ``conv2d`` with circular padding per sample."""
    pad = kernel.shape[-1] // 2
    return torch.cat(
        [
            F.conv2d(F.pad(x[b : b + 1], (pad,) * 4, mode="circular"), kernel[b].unsqueeze(1), groups=x.shape[1])
            for b in range(x.shape[0])
        ]
    )


@pytest.mark.parametrize("k, H, W", [(3, 4, 4), (3, 5, 6), (5, 3, 5), (1, 2, 3)])
def test_adaptive_conv_is_a_per_sample_circular_conv(k, H, W):
    x = randn(3, 2, H, W)
    kernel = randn(3, 2, k, k, seed=5)
    kernel[..., k // 2, k // 2] += 3.0  # keep the dense matrix well conditioned
    y, logdet = adaptive_circular_conv(x, kernel)
    torch.testing.assert_close(y, explicit_circular_conv(x, kernel), rtol=1e-12, atol=1e-12)

    def first_sample_conv(t):
        return explicit_circular_conv(t, kernel[:1].expand(t.shape[0], -1, -1, -1))

    reference = brute_force_logdet(first_sample_conv, x[:1])
    torch.testing.assert_close(logdet[:1], reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(adaptive_circular_deconv(y, kernel), x, rtol=1e-10, atol=1e-10)


def test_conf_coupling_forward_is_slog_of_scaled_shifted_circular_conv():
    layer = build_layer("conf_coupling", (4, 5, 5), hidden=8, scale=0.3)
    x = randn(2, 4, 5, 5)
    with torch.no_grad():
        log_s, t, kernel = layer.params(layer.condition(x[:, :2]))
    assert float((kernel[:, :, 1, 1] - 1).abs().max()) > 1e-3  # per-sample kernels, not the delta
    assert float((kernel[0] - kernel[1]).abs().max()) > 1e-4
    alpha = layer.log_alpha.exp().view(1, -1, 1, 1)
    z = log_s.exp() * explicit_circular_conv(x[:, 2:], kernel) + t
    y, _ = layer(x)
    torch.testing.assert_close(y[:, 2:], torch.sign(z) * torch.log1p(alpha * z.abs()) / alpha, rtol=1e-12, atol=1e-12)


def test_conf_kernel_spectrum_stays_above_margin():
    layer = build_layer("conf_coupling", (4, 6, 6), hidden=8, scale=10.0, margin=0.2)
    x = 10 * randn(4, 4, 6, 6)
    with torch.no_grad():
        _, _, kernel = layer.params(layer.condition(x[:, :2]))
    padded = torch.zeros(4, 2, 6, 6, dtype=torch.float64)
    padded[..., :3, :3] = kernel
    assert float(torch.fft.fft2(padded).abs().min()) > 0.2
    assert float((kernel[..., 1, 1] - 1).abs().max()) > 0.1  # far from the delta, still invertible
    errors = flow_errors(layer, x[:1])
    assert errors["inverse"] < 1e-6 and errors["logdet"] < 1e-8, errors  # |x| ~ 30, |w_hat| >= 0.2


# -- networks, memory format and mixed precision ----------------------------------------------


@pytest.mark.parametrize("net", [ConvNet(3, 5, hidden=8), DenseNet(3, 5, depth=2, growth=4, intermediate=6)])
def test_nets_keep_channels_last_and_start_at_zero(net):
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    out = net(x)
    assert out.shape == (2, 5, 6, 6) and torch.equal(out, torch.zeros_like(out))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert make_net("densenet", 3, 5, depth=2, growth=4, intermediate=6, gated=False)(x).shape == (2, 5, 6, 6)


@pytest.mark.parametrize("name", COUPLINGS)
def test_bf16_conditioner_keeps_exact_round_trip_and_float32_logdet(name):
    layer = build_layer(name, (4, 8, 8), dtype=torch.float32, hidden=16, scale=0.3)
    assert flowlib.precision.set_conditioner_dtype(layer, "bfloat16") == 1
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    h = layer.condition(x[:, :2])
    assert h.dtype == torch.float32
    assert torch.equal(h, h.bfloat16().float())  # the net really ran in bf16 (values are bf16 numbers)
    y, logdet = layer(x)
    assert logdet.dtype == torch.float32
    assert float((layer.inverse(y) - x).abs().max()) < 1e-4
    # Same conditioner output, transform redone in float64: the log-det was not computed in bf16.
    _, logdet64 = layer._transform(x[:, 2:].double(), h.double())
    assert float(((logdet.double() - logdet64) / logdet64.abs().clamp(min=1)).abs().max()) < 1e-5
