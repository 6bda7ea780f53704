"""Checkers for ``lessons/04_sylvester_flows_exercises.ipynb``.

>>> from flowlib.checks.sylvester import check_series_logdet
>>> def series(J, n):
...     P, total = torch.eye(J.shape[0], dtype=J.dtype), 0
...     for k in range(1, n + 1):
...         P = P @ J
...         total = total + (-1) ** (k + 1) * torch.trace(P) / k
...     return total
>>> check_series_logdet(series).ok
True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..toy.sylvester import Planar
from . import Case, Feedback, run_cases

__all__ = ["check_sylvester_logdet", "check_planar_inverse", "check_series_logdet"]

F64 = torch.float64


def _triangular(M: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    R = torch.triu(torch.randn(M, M, generator=g, dtype=F64))
    Rt = torch.triu(torch.randn(M, M, generator=g, dtype=F64))
    R.diagonal().copy_(torch.tanh(torch.randn(M, generator=g, dtype=F64)))  # |R_ii R~_ii| < 1: invertible
    Rt.diagonal().copy_(torch.tanh(torch.randn(M, generator=g, dtype=F64)))
    return R, Rt


def check_sylvester_logdet(fn) -> Feedback:
    """Exercise: ``fn(R, Rt, pre) -> [B]``: log-det of ``x + Q R tanh(R~ Q^T x + b)`` with ``pre = R~ Q^T x + b``."""
    cases = []
    for M, B, seed in [(3, 4, 0), (4, 2, 1)]:
        R, Rt = _triangular(M, seed)
        pre = 1.5 * torch.randn(B, M, generator=torch.Generator().manual_seed(seed + 5), dtype=F64)
        d = torch.diagonal(R) * torch.diagonal(Rt)  # [M]
        h = torch.tanh(pre)
        deriv = 1 - h * h
        cases.append(
            Case(
                f"random triangular {M}x{M} R, R~ and a batch of {B} pre-activations",
                (R, Rt, pre),
                torch.log((1 + d * deriv).abs()).sum(1),
                [
                    (
                        "you used tanh(pre) where the derivative tanh'(pre) = 1 - tanh(pre)^2 belongs",
                        torch.log((1 + d * h).abs()).sum(1),
                    ),
                    (
                        "you left out the derivative of tanh: the Jacobian is I + Q R diag(tanh'(pre)) R~ Q^T",
                        torch.log((1 + d).abs()).sum().expand(B),
                    ),
                    (
                        "you used only R's diagonal; the triangular product R~ R has diagonal R_ii * R~_ii",
                        torch.log((1 + torch.diagonal(R) * deriv).abs()).sum(1),
                    ),
                    (
                        "sign error inside the log: the Jacobian is I + (...), so each factor is "
                        "1 + R_ii R~_ii tanh'(pre_i), not 1 - ...",
                        torch.log((1 - d * deriv).abs()).sum(1),
                    ),
                    (
                        "sign error: your log-determinant is the negative of the right one (that of the inverse "
                        "map); the forward step's factors 1 + R_ii R~_ii tanh'(pre_i) enter with a + sign",
                        -torch.log((1 + d * deriv).abs()).sum(1),
                    ),
                ],
            )
        )
    return run_cases(
        "sylvester_logdet",
        fn,
        cases,
        hint="Sylvester's identity moves the determinant from D x D to M x M. What does the chain rule put "
        "between R and R~, and what is the determinant of a triangular matrix?",
        success="log|det J| = sum_i log|1 + R_ii R~_ii tanh'(pre_i)|.",
    )


def _planar(seed: int, dim: int) -> Planar:
    torch.manual_seed(seed)
    layer = Planar((dim,), init_scale=1.0).double()
    with torch.no_grad():
        layer.b.fill_(0.7)  # a non-zero bias, so that forgetting it shows
    return layer


def check_planar_inverse(fn) -> Feedback:
    """Exercise: ``fn(y, u_hat, w, b) -> x`` with ``y = x + u_hat tanh(w^T x + b)`` (``y: [B, D]``)."""
    cases = []
    for dim, seed in [(2, 0), (3, 1)]:
        layer = _planar(seed, dim)
        with torch.no_grad():
            u_hat, w, b = layer.u_hat(), layer.w.detach().clone(), layer.b.detach().clone()
            y = 2 * torch.randn(5, dim, generator=torch.Generator().manual_seed(seed + 3), dtype=F64)
            x = layer.inverse(y)
            a_y = y @ w + b
            wrong_sign = y + torch.tanh(a_y)[:, None] * u_hat
            one_step = y - torch.tanh(a_y)[:, None] * u_hat
            without_b = y - torch.tanh(_solve(y @ w, w @ u_hat))[:, None] * u_hat
        cases.append(
            Case(
                f"a random planar layer in {dim}-D (w^T u_hat = {float(w @ u_hat):.2f}) and 5 points",
                (y, u_hat, w, b),
                x,
                [
                    (
                        "you used a = w^T y + b, i.e. one fixed-point step; a = w^T x + b is unknown and solves "
                        "a + (w^T u_hat) tanh(a) = w^T y + b",
                        one_step,
                    ),
                    ("sign error: x = y - u_hat tanh(a), not y + ...", wrong_sign),
                    ("you forgot the bias b when solving for a (the equation is a + c tanh(a) = w^T y + b)", without_b),
                ],
            )
        )
    return run_cases(
        "planar_inverse",
        fn,
        cases,
        hint="Take the inner product of both sides with w: the unknown w^T x + b satisfies a scalar equation. "
        "Is it monotone, and what is the easiest way to solve it? Once you know it, x follows directly.",
        success="The planar flow inverts with one monotone scalar root solve per sample.",
        tol=1e-8,
    )


def _solve(t: Tensor, c: Tensor) -> Tensor:
    """Bisection for ``a + c tanh(a) = t`` (used to build one of the typical mistakes)."""
    lo, hi = t - c.abs() - 1, t + c.abs() + 1
    for _ in range(200):
        mid = (lo + hi) / 2
        above = mid + c * torch.tanh(mid) > t
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return (lo + hi) / 2


def check_series_logdet(fn) -> Feedback:
    """Exercise: ``fn(J, n_terms)`` is ``sum_{k=1}^{n} (-1)^(k+1) tr(J^k) / k`` (truncated log det(I + J))."""
    cases = []
    for D, n, seed in [(3, 4, 0), (5, 6, 1)]:
        g = torch.Generator().manual_seed(seed)
        J = torch.randn(D, D, generator=g, dtype=F64)
        J = 0.7 * J / torch.linalg.matrix_norm(J, 2)  # ||J|| < 1: the series converges
        powers = [torch.linalg.matrix_power(J, k) for k in range(n + 1)]
        traces = torch.stack([torch.trace(P) for P in powers])  # tr(J^0) = D, tr(J^1), ...
        ks = torch.arange(1, n + 1, dtype=F64)
        signs = (-1.0) ** (ks + 1)
        cases.append(
            Case(
                f"a random {D}x{D} J with ||J||_2 = 0.7 and n_terms={n}",
                (J, n),
                (signs * traces[1:] / ks).sum(),
                [
                    (
                        "the signs must alternate, (-1)^(k+1): log(1 + x) = x - x^2/2 + x^3/3 - ...",
                        (traces[1:] / ks).sum(),
                    ),
                    ("you forgot the 1/k", (signs * traces[1:]).sum()),
                    (
                        "you divided by k!, as in the exponential's series; the logarithm's series has 1/k",
                        (signs * traces[1:] / torch.tensor([float(math.factorial(k)) for k in range(1, n + 1)])).sum(),
                    ),
                    (
                        "you returned the exact log det(I + J); the exercise asks for the series truncated after "
                        "n_terms terms (its error is what exercise 5 measures)",
                        torch.linalg.slogdet(torch.eye(D, dtype=F64) + J).logabsdet,
                    ),
                    (
                        "you started at k = 0; the series starts at k = 1 (there is no tr(I) term)",
                        (signs * traces[1:] / ks).sum() - traces[0],
                    ),
                    (
                        "you used tr(J)^k; the series needs tr(J^k), the trace of the matrix power",
                        (signs * traces[1] ** ks / ks).sum(),
                    ),
                    ("you summed one term too few (k = 1 .. n_terms - 1)", (signs * traces[1:] / ks)[:-1].sum()),
                    (
                        "J**k is the elementwise power; tr(J^k) needs the matrix power (J @ J @ ...)",
                        (signs * torch.stack([torch.trace(J**k) for k in range(1, n + 1)]) / ks).sum(),
                    ),
                    (
                        "sign error: the signs alternate starting with +tr(J) for k = 1, i.e. (-1)^(k+1), not (-1)^k",
                        -(signs * traces[1:] / ks).sum(),
                    ),
                ],
            )
        )
    return run_cases(
        "series_logdet",
        fn,
        cases,
        hint="The signs follow the scalar series of log(1 + x). Can you get the next power of J from the previous "
        "one instead of recomputing it?",
        success="The truncated series log det(I + J) = sum_k (-1)^(k+1) tr(J^k) / k.",
    )
