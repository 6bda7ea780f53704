"""The lesson checkers accept a reference solution and name each typical mistake.

The reference solutions live here (not in flowlib) so that a learner reading
``flowlib.checks`` does not find the answers; each mistake below is written the
way a learner would write it, and the test asserts the checker's message names it.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from flowlib.checks import CORRECT, ERROR, INCORRECT, NOT_ATTEMPTED, Case, Feedback, run_cases
from flowlib.checks import convolution_exponential as ce
from flowlib.checks import matrix_exponential as me
from flowlib.linalg import expm, expm_taylor


# ---- shared machinery -------------------------------------------------------------------------
def test_feedback_renders_and_is_falsy_unless_correct():
    good, bad = Feedback("ex", CORRECT, "fine"), Feedback("ex", INCORRECT, "a <b> mistake")
    assert good and good.ok and not bad and not bad.ok
    assert "✔" in good._repr_html_() and "&lt;b&gt;" in bad._repr_html_()
    assert str(bad) == "[ex] incorrect: a <b> mistake"


def test_run_cases_reports_shape_type_nan_and_generic_errors():
    case = Case("a 2x2 input", (torch.eye(2, dtype=torch.float64),), torch.eye(2, dtype=torch.float64))
    common = dict(hint="h", success="s")
    assert run_cases("ex", lambda a: a, [case], **common).ok
    assert "shape [3]" in run_cases("ex", lambda a: torch.ones(3), [case], **common).message
    assert "returned a str" in run_cases("ex", lambda a: "x", [case], **common).message
    assert "NaN" in run_cases("ex", lambda a: a * float("nan"), [case], **common).message
    generic = run_cases("ex", lambda a: 2 * a, [case], **common)
    assert generic.status == INCORRECT and "off by 1" in generic.message
    assert run_cases("ex", 3, [case], **common).status == ERROR


def _skeleton(*args):
    raise NotImplementedError


ALL_CHECKS = [
    me.check_expm_series,
    me.check_expm_inverse,
    me.check_expm_logdet,
    me.check_conv1x1_exp_logdet,
    me.check_scaling_and_squaring,
    ce.check_conv_matrix,
    ce.check_conv_exp_series,
    ce.check_inv_conv_exp,
    ce.check_conv_exp_logdet,
]


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_skeleton_is_not_attempted_and_crash_is_reported(check):
    fb = check(_skeleton)
    assert fb.status == NOT_ATTEMPTED and not fb.ok and "NotImplementedError" in fb.message

    def crashes(*args):
        return args[0].no_such_attribute

    fb = check(crashes)
    assert fb.status == ERROR and "AttributeError" in fb.message


# ---- lesson 01: matrix exponential --------------------------------------------------------------
def series_ref(A, terms):
    return sum(torch.linalg.matrix_power(A, k) / math.factorial(k) for k in range(terms + 1))


def series_horner(A, terms):  # a different correct solution
    term, total = torch.eye(A.shape[-1], dtype=A.dtype), torch.eye(A.shape[-1], dtype=A.dtype)
    for k in range(1, terms + 1):
        term = term @ A / k
        total = total + term
    return total


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda A, t: sum(torch.linalg.matrix_power(A, k) / math.factorial(k) for k in range(t)), "one term early"),
        (lambda A, t: sum(torch.linalg.matrix_power(A, k) / math.factorial(k) for k in range(t + 2)), "too many"),
        (lambda A, t: sum(torch.linalg.matrix_power(A, k) for k in range(t + 1)), "1/k!"),
        (lambda A, t: sum(torch.linalg.matrix_power(A, k) / max(k, 1) for k in range(t + 1)), "divided by k"),
        (lambda A, t: sum(A**k / math.factorial(k) for k in range(t + 1)), "elementwise power"),
        (
            lambda A, t: torch.eye(len(A), dtype=A.dtype) + sum(A**k / math.factorial(k) for k in range(1, t + 1)),
            "elementwise power",
        ),
        (lambda A, t: sum(torch.linalg.matrix_power(A, k) / math.factorial(k) for k in range(1, t + 1)), "identity"),
    ],
)
def test_expm_series(wrong, phrase):
    assert me.check_expm_series(series_ref).ok
    assert me.check_expm_series(series_horner).ok
    fb = me.check_expm_series(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda A: expm(A).T, "transposed"),
        (lambda A: expm(A.T), "transposed"),
        (lambda A: expm(A), "exp(A) itself"),
        (lambda A: -expm(A), "negated the output"),
        (lambda A: torch.exp(-A), "elementwise"),
        (lambda A: 1 / expm(A), "reciprocal"),
    ],
)
def test_expm_inverse(wrong, phrase):
    assert me.check_expm_inverse(lambda A: expm(-A)).ok
    assert me.check_expm_inverse(lambda A: torch.linalg.inv(torch.linalg.matrix_exp(A))).ok
    fb = me.check_expm_inverse(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda A: torch.exp(torch.trace(A)), "its logarithm"),
        (lambda A: torch.linalg.slogdet(A).logabsdet, "log |det A|"),
        (lambda A: torch.linalg.det(A), "that is det A"),
        (lambda A: A.sum(), "every entry"),
        (lambda A: torch.trace(expm(A)), "tr exp(A)"),
    ],
)
def test_expm_logdet(wrong, phrase):
    assert me.check_expm_logdet(lambda A: torch.trace(A)).ok
    assert me.check_expm_logdet(lambda A: torch.linalg.slogdet(expm(A)).logabsdet).ok
    fb = me.check_expm_logdet(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda A, H, W: torch.trace(A), "H*W"),
        (lambda A, H, W: H * torch.trace(A), "one of the image sides"),
        (lambda A, H, W: (H + W) * torch.trace(A), "not H+W"),
        (lambda A, H, W: H * W * A.sum(), "diagonal only"),
    ],
)
def test_conv1x1_exp_logdet(wrong, phrase):
    assert me.check_conv1x1_exp_logdet(lambda A, H, W: H * W * torch.trace(A)).ok
    fb = me.check_conv1x1_exp_logdet(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


def scaling_ref(A, s, terms):
    B = series_ref(A / 2**s, terms)
    for _ in range(s):
        B = B @ B
    return B


def _square(B, times):
    for _ in range(times):
        B = B @ B
    return B


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda A, s, t: _square(series_ref(A / s, t), s), "divided A by s"),
        (lambda A, s, t: _square(series_ref(A / 2**s, t), s - 1), "one time too few"),
        (lambda A, s, t: _square(series_ref(A, t), s), "not scaled down"),
        (lambda A, s, t: series_ref(A / 2**s, t), "squaring step is missing"),
        (lambda A, s, t: 2**s * series_ref(A / 2**s, t), "multiplied by 2^s"),
    ],
)
def test_scaling_and_squaring(wrong, phrase):
    assert me.check_scaling_and_squaring(scaling_ref).ok
    fb = me.check_scaling_and_squaring(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


def test_scaling_and_squaring_reference_is_close_to_expm():
    """The exercise's answer is a good exp(A): a reference with enough terms matches expm."""
    A = 3 * torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(scaling_ref(A, 6, 12), expm(A), rtol=1e-10, atol=1e-10)
    assert torch.allclose(series_horner(A / 64, 12), expm_taylor(A / 64, 12))


# ---- lesson 02: convolution exponential ---------------------------------------------------------
def conv_matrix_ref(kernel, H, W):
    C = kernel.shape[0]
    n = C * H * W
    M = torch.zeros(n, n, dtype=kernel.dtype)
    for j in range(n):
        e = torch.zeros(n, dtype=kernel.dtype)
        e[j] = 1
        M[:, j] = F.conv2d(e.reshape(1, C, H, W), kernel, padding=1).reshape(-1)
    return M


def conv_exp_ref(x, kernel, terms):
    result = term = x
    for k in range(1, terms + 1):
        term = F.conv2d(term, kernel, padding=kernel.shape[-1] // 2) / k
        result = result + term
    return result


def test_conv_matrix():
    assert ce.check_conv_matrix(conv_matrix_ref).ok
    fb = ce.check_conv_matrix(lambda k, H, W: conv_matrix_ref(k, H, W).T)
    assert fb.status == INCORRECT and "transpose" in fb.message
    fb = ce.check_conv_matrix(lambda k, H, W: conv_matrix_ref(k.flip(-1, -2), H, W))
    assert fb.status == INCORRECT and "180 degrees" in fb.message

    def periodic(k, H, W):
        C, n = k.shape[0], k.shape[0] * H * W
        basis = F.pad(torch.eye(n, dtype=k.dtype).reshape(n, C, H, W), (1, 1, 1, 1), mode="circular")
        return F.conv2d(basis, k).reshape(n, n).T

    fb = ce.check_conv_matrix(periodic)
    assert fb.status == INCORRECT and "wraps around" in fb.message


def _from_x(x, kernel, terms):
    return x + sum(F.conv2d(x, kernel, padding=1) / k for k in range(1, terms + 1))


def _no_factorial(x, kernel, terms):
    result = term = x
    for _ in range(terms):
        term = F.conv2d(term, kernel, padding=1)
        result = result + term
    return result


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda x, k, t: conv_exp_ref(x, k, t - 1), "one term early"),
        (lambda x, k, t: conv_exp_ref(x, k, t + 1), "too many"),
        (_no_factorial, "1/k!"),
        (_from_x, "convolves x itself"),
        (lambda x, k, t: conv_exp_ref(x, k.flip(-1, -2), t), "180 degrees"),
        (lambda x, k, t: conv_exp_ref(x, k.transpose(0, 1), t), "swapped"),
    ],
)
def test_conv_exp_series(wrong, phrase):
    assert ce.check_conv_exp_series(conv_exp_ref).ok
    fb = ce.check_conv_exp_series(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


def _centre_negated(y, k, t):
    k = k.clone()
    k[:, :, 1, 1] = -k[:, :, 1, 1]
    return conv_exp_ref(y, k, t)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda y, k, t: conv_exp_ref(y, k, t), "applied exp(M) again"),
        (lambda y, k, t: conv_exp_ref(y, k.transpose(0, 1).flip(-1, -2), t), "transposed the kernel"),
        (lambda y, k, t: conv_exp_ref(y, k.transpose(0, 1), t), "swapped the channels"),
        (lambda y, k, t: -conv_exp_ref(y, k, t), "negated the output"),
        (_centre_negated, "only the centre"),
    ],
)
def test_inv_conv_exp(wrong, phrase):
    assert ce.check_inv_conv_exp(lambda y, k, t: conv_exp_ref(y, -k, t)).ok
    fb = ce.check_inv_conv_exp(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda k, H, W: torch.trace(k[:, :, 1, 1]), "multiply by H*W"),
        (lambda k, H, W: H * W * sum(torch.trace(k[:, :, i, j]) for i in range(3) for j in range(3)), "all 9 taps"),
        (lambda k, H, W: H * W * k[:, :, 1, 1].sum(), "whole centre matrix"),
        (lambda k, H, W: H * W * k.sum(), "every entry"),
        (lambda k, H, W: H * W * torch.linalg.slogdet(k[:, :, 1, 1]).logabsdet, "no determinant"),
        (lambda k, H, W: W * torch.trace(k[:, :, 1, 1]), "one image side"),
    ],
)
def test_conv_exp_logdet(wrong, phrase):
    assert ce.check_conv_exp_logdet(lambda k, H, W: H * W * torch.trace(k[:, :, 1, 1])).ok
    dense = lambda k, H, W: torch.trace(conv_matrix_ref(k, H, W))  # noqa: E731  (tr M, the definition)
    assert ce.check_conv_exp_logdet(dense).ok
    fb = ce.check_conv_exp_logdet(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message
