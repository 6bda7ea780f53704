"""The convolution exponential layer: norm bound, fixed term counts, logdet formula, inverse."""

import pytest
import torch

import flowlib
from flowlib import functional as Fn
from flowlib.layers.convexp import EVAL_TOL, RHO, TRAIN_TOL, ConvExp
from flowlib.linalg import operator_norm_bound, taylor_remainder_bound
from flowlib.testing import brute_force_logdet, perturb_


def test_term_counts_follow_the_bound():
    layer = ConvExp((3, 5, 5))
    assert layer.train_terms == Fn.conv_exp_terms(RHO, TRAIN_TOL) == 7
    assert layer.eval_terms == Fn.conv_exp_terms(RHO, EVAL_TOL) == 11
    n = layer.train_terms
    assert taylor_remainder_bound(RHO, n) <= TRAIN_TOL < taylor_remainder_bound(RHO, n - 1)
    assert layer.terms == 7 and layer.eval().terms == 11


@pytest.mark.parametrize("scale", [0.0, 0.01, 1.0, 100.0])
def test_effective_kernel_norm_is_at_most_rho(scale):
    torch.manual_seed(0)
    layer = ConvExp((3, 6, 5)).double()
    with torch.no_grad():
        layer.kernel.mul_(scale)
    kernel = layer.effective_kernel().detach()
    assert float(operator_norm_bound(kernel)) <= RHO * (1 + 1e-12)
    dense = Fn.conv_matrix(kernel.detach(), 6, 5)
    assert float(torch.linalg.matrix_norm(dense, ord=2)) <= RHO * (1 + 1e-12)
    if scale <= 0.01:  # small kernels are not rescaled
        assert torch.equal(kernel, layer.kernel.detach())


def test_forward_matches_dense_expm_and_logdet():
    torch.manual_seed(1)
    layer = ConvExp((2, 4, 3), kernel_size=3).double().eval()
    perturb_(layer, 0.3, torch.Generator().manual_seed(0))
    x = torch.randn(3, 2, 4, 3, dtype=torch.float64)
    y, logdet = layer(x)
    kernel = layer.effective_kernel().detach()
    Q = layer.mixing.weight().detach()
    mixed = torch.einsum("ij,bjhw->bihw", Q, x)
    expected = (torch.linalg.matrix_exp(Fn.conv_matrix(kernel, 4, 3)) @ mixed.reshape(3, -1).T).T.reshape(x.shape)
    assert (y - expected).abs().max() < 1e-12
    reference = brute_force_logdet(lambda t: layer(t)[0], x)
    assert (logdet - reference).abs().max() < 1e-10
    # logdet formula: H W tr(K_eff centre) + H W log|det Q|
    formula = 12 * (torch.diagonal(kernel[:, :, 1, 1]).sum() + torch.linalg.slogdet(Q).logabsdet)
    assert torch.allclose(logdet, formula.expand(3))


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_inverse_round_trip_after_large_perturbation(kernel_size):
    torch.manual_seed(2)
    layer = ConvExp((3, 5, 7), kernel_size=kernel_size).double().eval()
    perturb_(layer, 1.0, torch.Generator().manual_seed(3))  # kernel far above rho before rescaling
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    y, _ = layer(x)
    assert (layer.inverse(y) - x).abs().max() < 1e-10


def test_training_mode_float32_is_accurate_to_the_training_tolerance():
    torch.manual_seed(4)
    layer = ConvExp((4, 8, 8))
    perturb_(layer, 0.5, torch.Generator().manual_seed(5))
    x = torch.randn(4, 4, 8, 8)
    y_train, _ = layer.train()(x)
    y_eval, _ = layer.double().eval()(x.double())
    error = (y_train.double() - y_eval).flatten(1).norm(dim=1)
    # series truncation <= TRAIN_TOL * ||Qx|| plus float32 rounding
    assert (error / x.flatten(1).norm(dim=1)).max() < 1e-5


def test_gradients_reach_the_kernel_and_mixing():
    layer = ConvExp((2, 4, 4))
    y, logdet = layer(torch.randn(2, 2, 4, 4))
    (y.square().sum() - logdet.sum()).backward()
    assert layer.kernel.grad is not None and layer.kernel.grad.abs().sum() > 0
    assert layer.mixing.logs.grad is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 2}, "odd kernel_size"),
        ({"rho": 0.0}, "rho > 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvExp((2, 4, 4), **kwargs)
    with pytest.raises(ValueError, match="shape=\\(C, H, W\\)"):
        flowlib.layers.make("convexp", shape=(4, 4))
