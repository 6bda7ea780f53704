"""Checkers for ``lessons/01_matrix_exponential_exercises.ipynb``.

>>> from flowlib.checks.matrix_exponential import check_expm_logdet
>>> check_expm_logdet(lambda A: torch.trace(A)).ok
True
>>> check_expm_logdet(lambda A: torch.exp(torch.trace(A))).status
'incorrect'
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..linalg import expm, expm_taylor
from . import Case, Feedback, run_cases

__all__ = [
    "check_expm_series",
    "check_expm_inverse",
    "check_expm_logdet",
    "check_conv1x1_exp_logdet",
    "check_scaling_and_squaring",
]


def _matrix(n: int, scale: float, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, n, generator=g, dtype=torch.float64)


def _factorial(k: int) -> float:
    return float(math.factorial(k))


def _running_factorial(k: int) -> float:
    """``1! 2! ... k!``: what dividing a running term by ``k!`` (instead of ``k``) accumulates."""
    return math.prod(_factorial(j) for j in range(1, k + 1))


def _series(A: Tensor, terms: int, power=torch.linalg.matrix_power, factorial=_factorial, first: int = 0) -> Tensor:
    """``sum_{k=first}^{terms} power(A, k) / factorial(k)``: the right answer and its typical distortions."""
    total = torch.zeros_like(A)
    for k in range(first, terms + 1):
        total = total + power(A, k) / factorial(k)
    return total


def _elementwise_power(A: Tensor, k: int) -> Tensor:
    return A**k


def _squared(B: Tensor, times: int) -> Tensor:
    for _ in range(times):
        B = B @ B
    return B


def _squared_elementwise(B: Tensor, times: int) -> Tensor:
    for _ in range(times):
        B = B * B
    return B


def check_expm_series(fn) -> Feedback:
    """Exercise: ``fn(A, terms) = sum_{k=0}^{terms} A^k / k!`` (``terms + 1`` summands: I, A, ..., A^terms/terms!).

    The last case has 25 terms: ``A^k / math.factorial(k)`` raises ``OverflowError`` from ``k = 21`` on,
    and is reported as the integer-factorial trap.
    """
    cases = []
    for n, scale, terms, seed in [(3, 0.7, 4, 0), (2, 1.5, 7, 1), (4, 0.5, 1, 2), (3, 1.2, 25, 3)]:
        A = _matrix(n, scale, seed)
        cases.append(
            Case(
                f"a random {n}x{n} A with terms={terms}",
                (A, terms),
                expm_taylor(A, terms),
                [
                    (
                        "you returned the full exponential (torch.linalg.matrix_exp or expm); the exercise asks for "
                        "the series truncated after the term of degree `terms`",
                        expm(A),
                    ),
                    (
                        "you stopped one term early: the sum runs from k = 0 up to and including k = terms "
                        "(range(terms + 1) in Python)",
                        _series(A, terms - 1),
                    ),
                    (
                        "you added one term too many: the last term is A^terms / terms!",
                        _series(A, terms + 1),
                    ),
                    (
                        "the terms are missing the 1/k! factor (A^k / k!, not A^k)",
                        _series(A, terms, factorial=lambda k: 1),
                    ),
                    (
                        "you divided by k instead of k! (A^k / k!)",
                        _series(A, terms, factorial=lambda k: max(k, 1)),
                    ),
                    (
                        "A**k is the elementwise power; the series needs the matrix power A @ A @ ... "
                        "(torch.linalg.matrix_power(A, k))",
                        torch.eye(n, dtype=A.dtype) + _series(A, terms, power=_elementwise_power, first=1),
                    ),
                    (
                        "A**k is the elementwise power (and A**0 is a matrix of ones, not the identity); "
                        "use torch.linalg.matrix_power(A, k)",
                        _series(A, terms, power=_elementwise_power),
                    ),
                    (
                        "the identity (the k = 0 term, A^0 / 0! = I) is missing",
                        _series(A, terms, first=1),
                    ),
                    (
                        "you divided the running term by k! instead of by k: the previous term already carries "
                        "1/(k-1)!, so term_k = term_{k-1} A / k",
                        _series(A, terms, factorial=_running_factorial),
                    ),
                    (
                        "sign error: that is exp(-A) (you negated A, or subtracted the odd terms); every term "
                        "of exp(A) is added with a + sign",
                        _series(-A, terms),
                    ),
                ],
            )
        )
    return run_cases(
        "expm_series",
        fn,
        cases,
        hint="Start from the scalar series of e^a and replace the number a by the matrix A: what does a power "
        "of a matrix mean, and which is the last degree to include?",
        success="your series matches flowlib.linalg.expm_taylor on 4 matrices (terms = 1, 4, 7 and 25: no "
        "integer-factorial overflow).",
    )


def check_expm_inverse(fn) -> Feedback:
    """Exercise: ``fn(A) = exp(A)^{-1}``, computed as ``exp(-A)`` (no matrix inverse needed)."""
    cases = []
    for n, scale, seed in [(3, 0.8, 10), (2, 1.2, 11)]:
        A = _matrix(n, scale, seed)
        E = expm(A)
        cases.append(
            Case(
                f"a random {n}x{n} A",
                (A,),
                expm(-A),
                [
                    (
                        "that is the inverse of A itself; the exercise asks for the inverse of exp(A)",
                        torch.linalg.inv(A),
                    ),
                    (
                        "you returned exp(A) itself: the inverse is exp(-A) (negate A before the exponential)",
                        E,
                    ),
                    (
                        "you transposed: exp(A)^T = exp(A^T) is the inverse only when A is skew-symmetric (A^T = -A, "
                        "exp(A) a rotation); for a general A negate instead: exp(-A)",
                        E.T,
                    ),
                    (
                        "you negated the output: -exp(A) is not the inverse; negate the input, exp(-A)",
                        -E,
                    ),
                    (
                        "torch.exp is elementwise; use the matrix exponential flowlib.linalg.expm(-A)",
                        torch.exp(-A),
                    ),
                    (
                        "1 / exp(A) is the elementwise reciprocal; the matrix inverse of exp(A) is exp(-A)",
                        1 / E,
                    ),
                ],
            )
        )
    return run_cases(
        "expm_inverse",
        fn,
        cases,
        hint="exp(A) exp(B) = exp(A + B) holds whenever A and B commute. Is there a B that commutes with A "
        "and makes the right-hand side the identity? (flowlib.linalg.expm computes exp.)",
        success="exp(-A) is the inverse, and it cost one more matrix exponential instead of a solve.",
    )


def check_expm_logdet(fn) -> Feedback:
    """Exercise: ``fn(A) = log |det exp(A)|`` without any determinant: ``tr(A)``."""
    cases = []
    for n, scale, seed in [(3, 0.9, 20), (4, 0.6, 21)]:
        A = _matrix(n, scale, seed)
        tr = torch.trace(A)
        cases.append(
            Case(
                f"a random {n}x{n} A",
                (A,),
                tr,
                nonfinite="the result is NaN or Inf: a logarithm of a negative number (torch.logdet or log of a "
                "negative det or trace)? det exp(A) > 0 for every real A, and its logarithm needs no determinant",
                mistakes=[
                    (
                        "that is det exp(A) = exp(tr A); the exercise asks for its logarithm, tr A",
                        torch.exp(tr),
                    ),
                    (
                        "that is log |det A|, the log-determinant of A itself; exp(A) has log-determinant tr A",
                        torch.linalg.slogdet(A).logabsdet,
                    ),
                    (
                        "that is det A; the log-determinant of exp(A) is the trace of A",
                        torch.linalg.det(A),
                    ),
                    (
                        "you summed every entry of A; the trace sums the diagonal only (torch.trace)",
                        A.sum(),
                    ),
                    (
                        "that is tr exp(A); the log-determinant of exp(A) is tr A (the trace of A, not of exp(A))",
                        torch.trace(expm(A)),
                    ),
                    (
                        "sign error: -tr A is the log-determinant of the inverse exp(-A); exp(A) itself has "
                        "log |det exp(A)| = +tr A",
                        -tr,
                    ),
                ],
            )
        )
    return run_cases(
        "expm_logdet",
        fn,
        cases,
        hint="How are the eigenvalues of exp(A) related to those of A? And how are a determinant and a trace "
        "built from eigenvalues?",
        success="log |det exp(A)| = tr A: O(n) instead of an O(n^3) determinant.",
    )


def check_conv1x1_exp_logdet(fn) -> Feedback:
    """Exercise: log-determinant of the 1x1 convolution ``W = exp(A)`` on an ``H x W`` image: ``H W tr(A)``."""
    cases = []
    for n, height, width, seed in [(3, 4, 5, 30), (2, 8, 3, 31)]:
        A = _matrix(n, 0.7, seed)
        tr = torch.trace(A)
        cases.append(
            Case(
                f"a random {n}x{n} A on a {height}x{width} image",
                (A, height, width),
                height * width * tr,
                nonfinite="the result is NaN or Inf: a logarithm of a negative number (torch.logdet or log of a "
                "negative det or trace)? det exp(A) > 0 for every real A, and its logarithm needs no determinant",
                mistakes=[
                    (
                        "that is H*W*log|det A|, the log-determinant of A itself; the layer's matrix is exp(A)",
                        height * width * torch.linalg.slogdet(A).logabsdet,
                    ),
                    (
                        "that is the log-determinant for one pixel; the 1x1 convolution applies exp(A) at all "
                        "H*W pixels, so multiply by H*W",
                        tr,
                    ),
                    (
                        "only one of the image sides is counted: multiply by H*W (the number of pixels)",
                        height * tr,
                    ),
                    (
                        "only one of the image sides is counted: multiply by H*W (the number of pixels)",
                        width * tr,
                    ),
                    (
                        "multiply by the number of pixels H*W, not H+W",
                        (height + width) * tr,
                    ),
                    (
                        "you summed every entry of A; the trace sums the diagonal only",
                        height * width * A.sum(),
                    ),
                    (
                        "sign error: -H*W*tr(A) is the log-determinant of the inverse layer (exp(-A) at every "
                        "pixel); the forward layer's is positive H*W*tr(A)",
                        -height * width * tr,
                    ),
                ],
            )
        )
    return run_cases(
        "conv1x1_exp_logdet",
        fn,
        cases,
        hint="Which outputs does one input pixel influence? Write down the Jacobian for an image of two pixels "
        "and look at its structure.",
        success="H*W*tr(A): the 1x1 convolution's Jacobian is exp(A) repeated once per pixel.",
    )


def check_scaling_and_squaring(fn) -> Feedback:
    """Exercise: ``fn(A, s, terms) = T(A / 2^s)^(2^s)`` with ``T`` the series truncated after ``terms``.

    The last case has 22 terms, so a series built on ``math.factorial`` ints shows the integer-factorial trap.
    """
    cases = []
    for n, scale, s, terms, seed in [(3, 2.0, 3, 6, 40), (2, 4.0, 4, 8, 41), (3, 3.0, 2, 22, 42)]:
        A = _matrix(n, scale, seed)
        small = expm_taylor(A / 2**s, terms)
        cases.append(
            Case(
                f"a random {n}x{n} A with s={s}, terms={terms}",
                (A, s, terms),
                _squared(small, s),
                [
                    (
                        "you used the exact exponential of A / 2^s; the exercise evaluates the truncated series with "
                        "`terms` terms there (flowlib.linalg.expm_taylor or your expm_series)",
                        _squared(expm(A / 2**s), s),
                    ),
                    (
                        "you raised the result to the power s; s squarings give the power 2^s (square it s times)",
                        torch.linalg.matrix_power(small, s),
                    ),
                    (
                        "you divided A by s; scale by 2^s so that s squarings undo it",
                        _squared(expm_taylor(A / s, terms), s),
                    ),
                    (
                        "you squared one time too few: square s times ((B^2)^2 ... s times gives B^(2^s))",
                        _squared(small, s - 1),
                    ),
                    (
                        "you squared one time too many: square exactly s times",
                        _squared(small, s + 1),
                    ),
                    (
                        "A was not scaled down before the series: compute T(A / 2^s), then square s times",
                        _squared(expm_taylor(A, terms), s),
                    ),
                    (
                        "the squaring step is missing: after T(A / 2^s), square the result s times",
                        small,
                    ),
                    (
                        "you multiplied by 2^s; undo the scaling by squaring s times (exp(A) = exp(A/2^s)^(2^s))",
                        2**s * small,
                    ),
                    (
                        "B**2 is the elementwise square; squaring the matrix is the product B @ B",
                        _squared_elementwise(small, s),
                    ),
                    (
                        "sign error: that approximates exp(-A), the inverse; scale A by +1/2^s, not -1/2^s",
                        _squared(expm_taylor(-A / 2**s, terms), s),
                    ),
                ],
            )
        )
    return run_cases(
        "scaling_and_squaring",
        fn,
        cases,
        hint="The series converges fast when the matrix is small. Which identity of the exponential lets you "
        "shrink A first and undo the shrinking afterwards?",
        success="scaling and squaring reproduces the reference, including on matrices with norm > 1 and with "
        "22 series terms.",
    )
