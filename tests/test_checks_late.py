"""Checkers of lessons 03-05 accept the reference solutions and name each typical mistake.

The reference solutions live once, in ``lessons/solutions/answers.py`` (the lessons ask learners to write
them, so they are not in flowlib); the lecturer's notebooks are generated from the same file.
"""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from flowlib.checks import NOT_ATTEMPTED
from flowlib.checks import invertible_convolutions as conv_checks
from flowlib.checks import sylvester as syl_checks
from flowlib.checks import training as train_checks
from flowlib.layers.fftconv import Periodic

F64 = torch.float64

_spec = importlib.util.spec_from_file_location(
    "lesson_answers", Path(__file__).parents[1] / "lessons/solutions/answers.py"
)
answers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(answers)

centred_spectrum, periodic_logdet, planar_inverse, series_logdet = (
    answers.centred_spectrum,
    answers.periodic_logdet,
    answers.planar_inverse,
    answers.series_logdet,
)


def skeleton(*args):
    raise NotImplementedError


# -- typical mistakes: (checker, wrong function, words the feedback must contain) ------------------
MISTAKES = [
    (conv_checks.check_conv1x1_logdet, lambda W, H, Wd: torch.linalg.slogdet(W).logabsdet, "H*W copies"),
    (conv_checks.check_conv1x1_logdet, lambda W, H, Wd: (H + Wd) * torch.linalg.slogdet(W).logabsdet, "H + W"),
    (conv_checks.check_conv1x1_logdet, lambda W, H, Wd: H * Wd * torch.logdet(W), "slogdet"),
    (
        conv_checks.check_conv1x1_logdet,
        lambda W, H, Wd: H * Wd * torch.log(torch.linalg.det(W)),
        "negative determinant",
    ),
    (conv_checks.check_conv1x1_logdet, lambda W, H, Wd: -H * Wd * torch.linalg.slogdet(W).logabsdet, "sign error"),
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
        "index sign error",
    ),
    (conv_checks.check_periodic_inverse, lambda y, k: -answers.periodic_inverse(y, k), "sign error"),
    (
        conv_checks.check_periodic_inverse,
        lambda y, k: torch.fft.ifft2(torch.fft.fft2(y) / torch.fft.fft2(k, s=y.shape[-2:])).real,
        "both the centring",
    ),
    (conv_checks.check_periodic_inverse, lambda y, k: answers.periodic_inverse(y, k).float(), "float32"),
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
    (conv_checks.check_periodic_logdet, lambda k, H, W: -periodic_logdet(k, H, W), "sign error"),
    (conv_checks.check_periodic_logdet, lambda k, H, W: torch.log(centred_spectrum(k, H, W).abs()).mean(), "averaged"),
    (conv_checks.check_periodic_logdet, lambda k, H, W: torch.log(torch.fft.fft2(k).abs()).sum(), "pad the kernel"),
    (conv_checks.check_periodic_logdet, lambda k, H, W: torch.log(centred_spectrum(k, H, W).real).sum(), "modulus"),
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
        lambda R, Rt, pre: torch.log(1 - torch.diagonal(R) * torch.diagonal(Rt) * (1 - torch.tanh(pre) ** 2)).sum(1),
        "sign error inside the log",
    ),
    (syl_checks.check_sylvester_logdet, lambda R, Rt, pre: -answers.sylvester_logdet(R, Rt, pre), "sign error"),
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
    (syl_checks.check_series_logdet, lambda J, n: -series_logdet(J, n), "(-1)^(k+1)"),
    (
        syl_checks.check_series_logdet,
        lambda J, n: sum(
            (-1) ** (k + 1) * torch.trace(torch.linalg.matrix_power(J, k)) / math.factorial(k) for k in range(1, n + 1)
        ),
        "divided by k!",
    ),
    (
        syl_checks.check_series_logdet,
        lambda J, n: torch.linalg.slogdet(torch.eye(J.shape[0], dtype=J.dtype) + J).logabsdet,
        "exact log det",
    ),
    (
        syl_checks.check_series_logdet,
        lambda J, n: sum((-1) ** (k + 1) * torch.trace(J**k) / k for k in range(1, n + 1)),
        "elementwise power",
    ),
    (train_checks.check_bits_per_dim, lambda log_p, dims: -log_p / dims, "nats per dimension"),
    (train_checks.check_bits_per_dim, lambda log_p, dims: log_p / (dims * math.log(2)), "sign error"),
    (train_checks.check_bits_per_dim, lambda log_p, dims: -log_p / math.log(2), "number of dimensions"),
    (train_checks.check_bits_per_dim, lambda log_p, dims: -log_p / (dims * math.log10(2)), "log10"),
    (train_checks.check_bits_per_dim, lambda log_p, dims: -log_p * math.log(2) / dims, "multiplied by ln 2"),
    (train_checks.check_bpd_from_density, lambda lv, dims: -lv / (dims * math.log(2)), "-D log 256"),
    (
        train_checks.check_bpd_from_density,
        lambda lv, dims: -(lv + dims * math.log(256)) / (dims * math.log(2)),
        "wrong sign",
    ),
    (train_checks.check_bpd_from_density, lambda lv, dims: -(lv - dims * math.log(255)) / (dims * math.log(2)), "255"),
    (train_checks.check_bpd_from_density, lambda lv, dims: -answers.bpd_from_density(lv, dims), "sign error"),
    (train_checks.check_bpd_from_density, lambda lv, dims: 8 - lv / dims, "mixed units"),
    (train_checks.check_bpd_from_density, lambda lv, dims: -(lv - math.log(256)) / (dims * math.log(2)), "in all"),
    (train_checks.check_bpd_from_density, lambda lv, dims: -(lv - 8 * dims) / (dims * math.log(2)), "log2(256)"),
    (train_checks.check_histogram_bpd, lambda x, p: -torch.log(p[x.long()]).mean(), "natural log"),
    (train_checks.check_histogram_bpd, lambda x, p: torch.log2(p[x.long()]).mean(), "sign error"),
    (train_checks.check_histogram_bpd, lambda x, p: -torch.log2(p[x]).mean(), "selects by mask"),
    (train_checks.check_histogram_bpd, lambda x, p: -torch.log2(p[x.long()]).flatten(1).sum(1).mean(), "summed"),
    (train_checks.check_histogram_bpd, lambda x, p: -torch.log2(p[x.long()]).flatten(1).mean(1), "shape"),
]

REFERENCES = [
    (conv_checks.check_conv1x1_logdet, answers.conv1x1_logdet),
    (conv_checks.check_periodic_inverse, answers.periodic_inverse),
    (conv_checks.check_periodic_logdet, answers.periodic_logdet),
    (syl_checks.check_sylvester_logdet, answers.sylvester_logdet),
    (syl_checks.check_planar_inverse, answers.planar_inverse),
    (syl_checks.check_series_logdet, answers.series_logdet),
    (train_checks.check_bits_per_dim, answers.bits_per_dim),
    (train_checks.check_bpd_from_density, answers.bpd_from_density),
    (train_checks.check_histogram_bpd, answers.histogram_bpd),
]

# Hints point to the idea, not to the formula: fragments of the answer that a "not attempted" message must not
# contain (each was in a hint before).
GIVEAWAYS = {
    conv_checks.check_conv1x1_logdet: ["slogdet(W)", "count the pixels"],
    conv_checks.check_periodic_inverse: ["ifft2", "conj(fft2", "/ K"],
    conv_checks.check_periodic_logdet: ["sum over all (u, v) of log"],
    syl_checks.check_sylvester_logdet: ["det(I + H R~ R)", "product over the diagonal"],
    syl_checks.check_planar_inverse: ["a + c tanh(a)", "x = y - u_hat"],
    syl_checks.check_series_logdet: ["(-1)^(k+1) tr", "P = J^k"],
    train_checks.check_bits_per_dim: ["-log_p /", "D ln 2"],
    train_checks.check_bpd_from_density: ["- D log 256", "-log P(x) / (D ln 2)"],
    train_checks.check_histogram_bpd: ["images.long()", "-log2 of"],
}


@pytest.mark.parametrize("checker", GIVEAWAYS, ids=lambda c: c.__name__)
def test_hint_gives_no_formula_away(checker):
    message = checker(skeleton).message
    leaked = [fragment for fragment in GIVEAWAYS[checker] if fragment in message]
    assert not leaked, f"{checker.__name__}: the not-attempted hint contains {leaked}: {message}"


def test_every_checker_has_a_reference_and_a_sign_error():
    checkers = [c for c, _ in REFERENCES]
    assert sorted(GIVEAWAYS, key=checkers.index) == checkers
    assert {c for c, _, words in MISTAKES if "sign" in words or "(-1)^(k+1)" in words} == set(checkers)


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
