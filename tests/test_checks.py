"""The checkers of lessons 01-02 accept the reference solutions and name each typical mistake.

The reference solutions live once, in ``lessons/solutions/answers.py`` (not in flowlib, so that a
learner reading ``flowlib.checks`` does not find them); the lecturer's notebooks are generated from
the same file. Each mistake below is written the way a learner would write it, and the test asserts
that the checker's message names it.
"""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flowlib.checks import CORRECT, ERROR, INCORRECT, NOT_ATTEMPTED, Case, Feedback, run_cases
from flowlib.checks import convolution_exponential as ce
from flowlib.checks import matrix_exponential as me
from flowlib.linalg import expm, expm_taylor

_spec = importlib.util.spec_from_file_location(
    "lesson_answers", Path(__file__).parents[1] / "lessons/solutions/answers.py"
)
answers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(answers)


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


def test_run_cases_names_sign_errors_integer_results_float32_and_overflow():
    want = torch.tensor([1.5, -2.25], dtype=torch.float64)
    case = Case("a vector", (want,), want, nonfinite="NaN here means X")
    common = dict(hint="h", success="s")
    assert "sign error" in run_cases("ex", lambda a: -a, [case], **common).message
    integer = run_cases("ex", lambda a: a.long(), [case], **common)
    assert integer.status == INCORRECT and "integer tensor" in integer.message
    rough = run_cases("ex", lambda a: (a + 1e-5).float(), [case], **common)
    assert "float32" in rough.message and "rounding" in rough.message
    assert run_cases("ex", lambda a: a.log(), [case], **common).message.endswith("NaN here means X")
    for trap in [lambda a: a / math.factorial(21), lambda a: a / torch.tensor(math.factorial(21))]:
        overflow = run_cases("ex", trap, [case], **common)
        assert overflow.status == ERROR and "integer-factorial trap" in overflow.message, overflow
    assert "factorial" not in run_cases("ex", lambda a: math.exp(1000.0), [case], **common).message
    known = Case("a vector", (want,), want, errors=[(KeyError, "Look it up with get")])
    report = run_cases("ex", lambda a: {}["x"], [known], **common)
    assert report.status == ERROR and "KeyError" in report.message and report.message.endswith("Look it up with get")
    assert "Look it up" not in run_cases("ex", lambda a: [][1], [known], **common).message


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


# Hints point to the idea, not to the formula: fragments of the answer that a "not attempted" message must
# not contain (they were in the hints before; a learner who has written nothing should not get them).
GIVEAWAYS = {
    me.check_expm_series: ["A^k / k!", "range(terms"],
    me.check_expm_inverse: ["exp(-A)", "-A"],
    me.check_expm_logdet: ["tr A", "exp(tr"],
    me.check_conv1x1_exp_logdet: ["block diagonal", "H*W", "H W"],
    me.check_scaling_and_squaring: ["2**s", "2^s", "square the result"],
    ce.check_conv_matrix: ["padding=1", "column j"],
    ce.check_conv_exp_series: ["/ k", "term_k ="],
    ce.check_inv_conv_exp: ["-kernel", "exp(-M)"],
    ce.check_conv_exp_logdet: ["tr M", "H*W"],
}


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_hint_gives_no_formula_away(check):
    message = check(_skeleton).message
    leaked = [fragment for fragment in GIVEAWAYS[check] if fragment in message]
    assert not leaked, f"{check.__name__}: the not-attempted hint contains {leaked}: {message}"


def _int_factorial_series(A, terms):  # the integer-factorial trap: fine up to 20 terms, OverflowError from 21 on
    return sum(torch.linalg.matrix_power(A, k) / math.factorial(k) for k in range(terms + 1))


# ---- lesson 01: matrix exponential --------------------------------------------------------------
series_ref = answers.expm_series


def series_float_factorial(A, terms):  # a different correct solution
    return sum(torch.linalg.matrix_power(A, k) / float(math.factorial(k)) for k in range(terms + 1))


def _running_term_over_factorial(A, terms):
    term = total = torch.eye(A.shape[-1], dtype=A.dtype)
    for k in range(1, terms + 1):
        term = term @ A / float(math.factorial(k))
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
        (_running_term_over_factorial, "running term by k!"),
        (lambda A, t: torch.linalg.matrix_exp(A), "full exponential"),
        (lambda A, t: series_ref(-A, t), "sign error"),
    ],
)
def test_expm_series(wrong, phrase):
    assert me.check_expm_series(series_ref).ok
    assert me.check_expm_series(series_float_factorial).ok
    fb = me.check_expm_series(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


def _square(B, times):
    for _ in range(times):
        B = B @ B
    return B


def _square_elementwise(B, times):
    for _ in range(times):
        B = B**2
    return B


def _int_factorial_conv_series(x, kernel, terms):  # M^k x / math.factorial(k), the int overflows from k = 21
    total, power = x, x
    for k in range(1, terms + 1):
        power = F.conv2d(power, kernel, padding=1)
        total = total + power / math.factorial(k)
    return total


@pytest.mark.parametrize(
    "check, wrong",
    [
        (me.check_expm_series, _int_factorial_series),
        (me.check_scaling_and_squaring, lambda A, s, t: _square(_int_factorial_series(A / 2**s, t), s)),
        (ce.check_conv_exp_series, _int_factorial_conv_series),
        (ce.check_inv_conv_exp, lambda y, k, t: _int_factorial_conv_series(y, -k, t)),
    ],
    ids=["expm_series", "scaling_and_squaring", "conv_exp_series", "inv_conv_exp"],
)
def test_integer_factorial_trap_is_named(check, wrong):
    """Dividing by the int math.factorial(k) passes with few terms; each series checker uses more than 20."""
    fb = check(wrong)
    assert fb.status == ERROR and "integer-factorial trap" in fb.message and "OverflowError" in fb.message, fb


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda A: expm(A).T, "transposed"),
        (lambda A: expm(A.T), "transposed"),
        (lambda A: expm(A), "exp(A) itself"),
        (lambda A: -expm(A), "negated the output"),
        (lambda A: -expm(-A), "sign error"),
        (lambda A: torch.exp(-A), "elementwise"),
        (lambda A: 1 / expm(A), "reciprocal"),
        (lambda A: torch.linalg.inv(A), "inverse of A itself"),
    ],
)
def test_expm_inverse(wrong, phrase):
    assert me.check_expm_inverse(answers.expm_inverse).ok
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
        (lambda A: -torch.trace(A), "sign error"),
        (lambda A: torch.trace(A).long(), "integer tensor"),
        (lambda A: torch.log(torch.trace(A)), "needs no determinant"),
    ],
)
def test_expm_logdet(wrong, phrase):
    assert me.check_expm_logdet(answers.expm_logdet).ok
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
        (lambda A, H, W: -H * W * torch.trace(A), "sign error"),
        (lambda A, H, W: H * W * torch.linalg.slogdet(A).logabsdet, "of A itself"),
    ],
)
def test_conv1x1_exp_logdet(wrong, phrase):
    assert me.check_conv1x1_exp_logdet(answers.conv1x1_exp_logdet).ok
    fb = me.check_conv1x1_exp_logdet(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda A, s, t: _square(series_ref(A / s, t), s), "divided A by s"),
        (lambda A, s, t: _square(series_ref(A / 2**s, t), s - 1), "one time too few"),
        (lambda A, s, t: _square(series_ref(A, t), s), "not scaled down"),
        (lambda A, s, t: series_ref(A / 2**s, t), "squaring step is missing"),
        (lambda A, s, t: 2**s * series_ref(A / 2**s, t), "multiplied by 2^s"),
        (lambda A, s, t: _square(series_ref(-A / 2**s, t), s), "sign error"),
        (lambda A, s, t: _square_elementwise(series_ref(A / 2**s, t), s), "elementwise square"),
        (lambda A, s, t: _square(expm(A / 2**s), s), "exact exponential"),
        (lambda A, s, t: torch.linalg.matrix_power(series_ref(A / 2**s, t), s), "power s"),
    ],
)
def test_scaling_and_squaring(wrong, phrase):
    assert me.check_scaling_and_squaring(answers.scaling_and_squaring).ok
    assert me.check_scaling_and_squaring(lambda A, s, t: _square(expm_taylor(A / 2**s, t), s)).ok
    fb = me.check_scaling_and_squaring(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


def test_reference_series_are_close_to_expm():
    """The exercises' answers are good exponentials: with enough terms they match expm."""
    A = 3 * torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(answers.scaling_and_squaring(A, 6, 12), expm(A), rtol=1e-10, atol=1e-10)
    assert torch.allclose(series_ref(A / 64, 30), expm_taylor(A / 64, 30), rtol=1e-13, atol=1e-13)


# ---- lesson 02: convolution exponential ---------------------------------------------------------
conv_matrix_ref, conv_exp_ref = answers.conv_matrix, answers.conv_exp_series


def conv_matrix_by_columns(kernel, H, W):  # a different correct solution: one basis image at a time
    C = kernel.shape[0]
    n = C * H * W
    M = torch.zeros(n, n, dtype=kernel.dtype)
    for j in range(n):
        e = torch.zeros(n, dtype=kernel.dtype)
        e[j] = 1
        M[:, j] = F.conv2d(e.reshape(1, C, H, W), kernel, padding=1).reshape(-1)
    return M


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda k, H, W: conv_matrix_ref(k, H, W).T, "transpose"),
        (lambda k, H, W: conv_matrix_ref(k.flip(-1, -2), H, W), "180 degrees"),
        (lambda k, H, W: -conv_matrix_ref(k, H, W), "sign error"),
    ],
)
def test_conv_matrix(wrong, phrase):
    assert ce.check_conv_matrix(conv_matrix_ref).ok
    assert ce.check_conv_matrix(conv_matrix_by_columns).ok
    fb = ce.check_conv_matrix(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message


def test_conv_matrix_names_periodic_padding():
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


def _running_conv_term_over_factorial(x, kernel, terms):
    result = term = x
    for k in range(1, terms + 1):
        term = F.conv2d(term, kernel, padding=1) / float(math.factorial(k))
        result = result + term
    return result


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda x, k, t: conv_exp_ref(x, k, t - 1), "one term early"),
        (lambda x, k, t: conv_exp_ref(x, k, t + 1), "too many"),
        (_no_factorial, "1/k!"),
        (_running_conv_term_over_factorial, "running term by k!"),
        (_from_x, "convolves x itself"),
        (lambda x, k, t: conv_exp_ref(x, k.flip(-1, -2), t), "180 degrees"),
        (lambda x, k, t: conv_exp_ref(x, k.transpose(0, 1), t), "swapped"),
        (lambda x, k, t: conv_exp_ref(x, -k, t), "sign error"),
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
        (lambda y, k, t: conv_exp_ref(y, k, t), "sign error: with +kernel"),
        (lambda y, k, t: conv_exp_ref(y, k.transpose(0, 1).flip(-1, -2), t), "transposed the kernel"),
        (lambda y, k, t: conv_exp_ref(y, k.transpose(0, 1), t), "swapped the channels"),
        (lambda y, k, t: -conv_exp_ref(y, k, t), "negated the output"),
        (_centre_negated, "only the centre"),
        (lambda y, k, t: y - F.conv2d(y, k, padding=1), "first-order term"),
    ],
)
def test_inv_conv_exp(wrong, phrase):
    assert ce.check_inv_conv_exp(answers.inv_conv_exp).ok
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
        (lambda k, H, W: -H * W * torch.trace(k[:, :, 1, 1]), "sign error"),
        (lambda k, H, W: H * W * torch.trace(k[:, :, 0, 0]), "corner tap"),
    ],
)
def test_conv_exp_logdet(wrong, phrase):
    assert ce.check_conv_exp_logdet(answers.conv_exp_logdet).ok
    dense = lambda k, H, W: torch.trace(conv_matrix_ref(k, H, W))  # noqa: E731  (tr M, the definition)
    assert ce.check_conv_exp_logdet(dense).ok
    fb = ce.check_conv_exp_logdet(wrong)
    assert fb.status == INCORRECT and phrase in fb.message, fb.message
