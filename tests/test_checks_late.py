"""Checkers of lessons 03-05 accept a reference solution and name each typical mistake.

The reference solutions live here, not in flowlib (the lessons ask learners to write them).
"""

import math

import pytest
import torch

from flowlib.checks import NOT_ATTEMPTED
from flowlib.checks import invertible_convolutions as conv_checks
from flowlib.checks import sylvester as syl_checks
from flowlib.checks import training as train_checks
from flowlib.layers.fftconv import Periodic
from flowlib.toy.sylvester import solve_monotone

F64 = torch.float64


# -- reference solutions ---------------------------------------------------------------------------
def conv1x1_logdet(W, H, Wd):
    return H * Wd * torch.linalg.slogdet(W).logabsdet


def centred_spectrum(kernel, H, W):
    # fft2 of the kernel with its centre tap rolled to (0, 0); the cross-correlation's spectrum is its conjugate
    k = kernel.shape[0]
    padded = torch.zeros(H, W, dtype=kernel.dtype)
    padded[:k, :k] = kernel
    return torch.fft.fft2(torch.roll(padded, (-(k // 2), -(k // 2)), (0, 1)))


def periodic_inverse(y, kernel):
    return torch.fft.ifft2(torch.fft.fft2(y) / centred_spectrum(kernel, *y.shape[-2:]).conj()).real


def periodic_logdet(kernel, H, W):
    return torch.log(centred_spectrum(kernel, H, W).abs()).sum()


def sylvester_logdet(R, Rt, pre):
    d = torch.diagonal(R) * torch.diagonal(Rt)
    return torch.log1p(d * (1 - torch.tanh(pre) ** 2)).sum(1)


def planar_inverse(y, u_hat, w, b):
    c = w @ u_hat
    t = y @ w + b
    a, _ = solve_monotone(
        lambda a: (a + c * torch.tanh(a), 1 + c * (1 - torch.tanh(a) ** 2)), t, t - c.abs(), t + c.abs()
    )
    return y - torch.tanh(a)[:, None] * u_hat


def series_logdet(J, n_terms):
    power, total = torch.eye(J.shape[0], dtype=J.dtype), torch.zeros((), dtype=J.dtype)
    for k in range(1, n_terms + 1):
        power = power @ J
        total = total + (-1) ** (k + 1) * torch.trace(power) / k
    return total


def bits_per_dim(log_p, dims):
    return -log_p / (dims * math.log(2))


def bpd_from_density(log_density, dims):
    return -(log_density - dims * math.log(256)) / (dims * math.log(2))


def histogram_bpd(images, probs):
    return -torch.log2(probs[images.long()]).mean()


def skeleton(*args):
    raise NotImplementedError


# -- typical mistakes: (checker, wrong function, words the feedback must contain) ------------------
MISTAKES = [
    (conv_checks.check_conv1x1_logdet, lambda W, H, Wd: torch.linalg.slogdet(W).logabsdet, "H*W copies"),
    (conv_checks.check_conv1x1_logdet, lambda W, H, Wd: (H + Wd) * torch.linalg.slogdet(W).logabsdet, "H + W"),
    (conv_checks.check_conv1x1_logdet, lambda W, H, Wd: H * Wd * torch.logdet(W), "NaN"),
    (
        conv_checks.check_conv1x1_logdet,
        lambda W, H, Wd: H * Wd * torch.log(torch.diagonal(W).abs()).sum(),
        "triangular",
    ),
    (
        conv_checks.check_periodic_inverse,
        lambda y, k: torch.fft.ifft2(torch.fft.fft2(y) * centred_spectrum(k, *y.shape[-2:]).conj()).real,
        "instead of inverting",
    ),
    (
        conv_checks.check_periodic_inverse,
        lambda y, k: (
            torch.fft.ifft2(
                torch.fft.fft2(y)
                / torch.fft.fft2(
                    torch.nn.functional.pad(k, (0, y.shape[-1] - k.shape[1], 0, y.shape[-2] - k.shape[0]))
                ).conj()
            ).real
        ),
        "not centred",
    ),
    (
        conv_checks.check_periodic_inverse,
        lambda y, k: torch.fft.ifft2(torch.fft.fft2(y) / centred_spectrum(k, *y.shape[-2:])).real,
        "flipped",
    ),
    (
        conv_checks.check_periodic_inverse,
        lambda y, k: torch.fft.ifft2(torch.fft.fft2(y) / centred_spectrum(k, *y.shape[-2:]).conj()),
        "complex",
    ),
    (
        conv_checks.check_periodic_logdet,
        lambda k, H, W: torch.log(
            torch.fft.rfft2(
                torch.roll(torch.nn.functional.pad(k, (0, W - k.shape[1], 0, H - k.shape[0])), (-1, -1), (0, 1))
            ).abs()
        ).sum(),
        "rfft2",
    ),
    (
        conv_checks.check_periodic_logdet,
        lambda k, H, W: torch.log(centred_spectrum(k, H, W).real.abs()).sum(),
        "real part",
    ),
    (conv_checks.check_periodic_logdet, lambda k, H, W: H * W * torch.log(k[1, 1].abs()), "1x1"),
    (
        syl_checks.check_sylvester_logdet,
        lambda R, Rt, pre: torch.log1p(torch.diagonal(R) * torch.diagonal(Rt) * torch.tanh(pre)).sum(1),
        "derivative",
    ),
    (
        syl_checks.check_sylvester_logdet,
        lambda R, Rt, pre: torch.log1p(torch.diagonal(R) * torch.diagonal(Rt)).sum().expand(pre.shape[0]),
        "left out",
    ),
    (
        syl_checks.check_sylvester_logdet,
        lambda R, Rt, pre: torch.log1p(torch.diagonal(R) * (1 - torch.tanh(pre) ** 2)).sum(1),
        "only R",
    ),
    (
        syl_checks.check_sylvester_logdet,
        lambda R, Rt, pre: torch.log1p(torch.diagonal(R) * torch.diagonal(Rt) * (1 - torch.tanh(pre) ** 2)),
        "shape",
    ),
    (syl_checks.check_planar_inverse, lambda y, u, w, b: y - torch.tanh(y @ w + b)[:, None] * u, "fixed-point step"),
    (syl_checks.check_planar_inverse, lambda y, u, w, b: y + torch.tanh(y @ w + b)[:, None] * u, "sign error"),
    (syl_checks.check_planar_inverse, lambda y, u, w, b: planar_inverse(y, u, w, torch.zeros_like(b)), "bias"),
    (
        syl_checks.check_series_logdet,
        lambda J, n: sum(torch.trace(torch.linalg.matrix_power(J, k)) / k for k in range(1, n + 1)),
        "alternate",
    ),
    (
        syl_checks.check_series_logdet,
        lambda J, n: sum((-1) ** (k + 1) * torch.trace(torch.linalg.matrix_power(J, k)) for k in range(1, n + 1)),
        "1/k",
    ),
    (
        syl_checks.check_series_logdet,
        lambda J, n: sum((-1) ** (k + 1) * torch.trace(J) ** k / k for k in range(1, n + 1)),
        "tr(J^k)",
    ),
    (syl_checks.check_series_logdet, lambda J, n: series_logdet(J, n - 1), "one term too few"),
    (syl_checks.check_series_logdet, lambda J, n: series_logdet(J, n) - J.shape[0], "k = 0"),
    (train_checks.check_bits_per_dim, lambda log_p, dims: -log_p / dims, "nats per dimension"),
    (train_checks.check_bits_per_dim, lambda log_p, dims: log_p / (dims * math.log(2)), "sign error"),
    (train_checks.check_bits_per_dim, lambda log_p, dims: -log_p / math.log(2), "number of dimensions"),
    (train_checks.check_bits_per_dim, lambda log_p, dims: -log_p / (dims * math.log10(2)), "log10"),
    (train_checks.check_bpd_from_density, lambda lv, dims: -lv / (dims * math.log(2)), "-D log 256"),
    (
        train_checks.check_bpd_from_density,
        lambda lv, dims: -(lv + dims * math.log(256)) / (dims * math.log(2)),
        "wrong sign",
    ),
    (train_checks.check_bpd_from_density, lambda lv, dims: -(lv - dims * math.log(255)) / (dims * math.log(2)), "255"),
    (train_checks.check_histogram_bpd, lambda x, p: -torch.log(p[x.long()]).mean(), "natural log"),
    (train_checks.check_histogram_bpd, lambda x, p: -torch.log2(p[x.long()]).flatten(1).sum(1).mean(), "summed"),
    (train_checks.check_histogram_bpd, lambda x, p: -torch.log2(p[x.long()]).flatten(1).mean(1), "shape"),
]

REFERENCES = [
    (conv_checks.check_conv1x1_logdet, conv1x1_logdet),
    (conv_checks.check_periodic_inverse, periodic_inverse),
    (conv_checks.check_periodic_logdet, periodic_logdet),
    (syl_checks.check_sylvester_logdet, sylvester_logdet),
    (syl_checks.check_planar_inverse, planar_inverse),
    (syl_checks.check_series_logdet, series_logdet),
    (train_checks.check_bits_per_dim, bits_per_dim),
    (train_checks.check_bpd_from_density, bpd_from_density),
    (train_checks.check_histogram_bpd, histogram_bpd),
]


@pytest.mark.parametrize("checker, solution", REFERENCES, ids=[c.__name__ for c, _ in REFERENCES])
def test_reference_solution_is_accepted(checker, solution):
    feedback = checker(solution)
    assert feedback.ok, feedback


@pytest.mark.parametrize("checker, solution", REFERENCES, ids=[c.__name__ for c, _ in REFERENCES])
def test_skeleton_is_not_attempted(checker, solution):
    feedback = checker(skeleton)
    assert feedback.status == NOT_ATTEMPTED and not feedback.ok, feedback


@pytest.mark.parametrize("checker, wrong, words", MISTAKES, ids=[f"{c.__name__}-{w}" for c, _, w in MISTAKES])
def test_typical_mistake_is_named(checker, wrong, words):
    feedback = checker(wrong)
    assert not feedback.ok
    assert words in feedback.message, feedback


def test_exercise_periodic_convolution_is_the_layer_with_one_channel():
    layer = Periodic((1, 6, 7)).double()
    x = torch.randn(2, 1, 6, 7, dtype=F64)
    kernel = layer.kernel.detach()[0, 0]
    assert torch.allclose(conv_checks.periodic_conv(x[:, 0], kernel), layer(x)[0][:, 0], atol=1e-12)
    assert torch.allclose(periodic_logdet(kernel, 6, 7), layer(x)[1][0], atol=1e-10)
