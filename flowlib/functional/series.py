"""Series machinery shared by the layers: truncated exponential series, term counts, rescaling to a bound.

* :func:`exp_series` - ``exp(M) x = sum_k M^k x / k!`` for any linear map ``M`` given as a function.
* :func:`conv_exp_terms` - the number of terms that a bound ``||M|| <= norm`` makes sufficient.
* :func:`rescale_to_bound` - ``w * min(1, limit / bound)``: how the layers keep a norm bound.
* :class:`SeriesNotConverged` - raised when a series or an iteration does not reach its tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..linalg import taylor_remainder_bound

__all__ = ["DEFAULT_TOL", "MAX_TERMS", "SeriesNotConverged", "exp_series", "conv_exp_terms", "rescale_to_bound"]

DEFAULT_TOL = 1e-8
MAX_TERMS = 50


class SeriesNotConverged(RuntimeError):
    """Raised when the adaptive series has not converged within ``max_terms`` terms."""


def conv_exp_terms(norm: float, tol: float = DEFAULT_TOL, max_terms: int = MAX_TERMS) -> int:
    """Fewest series terms ``n`` with ``norm^(n+1)/(n+1)! * e^norm <= tol``.

    With ``norm >= ||M||_2`` this bounds the truncation error of
    ``conv_exp(x, kernel, terms=n)`` by ``tol * ||x||`` (see
    :func:`flowlib.linalg.taylor_remainder_bound`). Layers call it once to pick a
    fixed number of terms, so training never synchronises with the device.
    """
    for n in range(max_terms + 1):
        if taylor_remainder_bound(norm, n) <= tol:
            return n
    raise SeriesNotConverged(
        f"a series with ||M|| <= {norm:.3g} needs more than {max_terms} terms for tolerance {tol:g}; "
        "scale the kernel down (or raise max_terms)"
    )


def exp_series(
    apply: Callable[[Tensor], Tensor],
    x: Tensor,
    terms: int | None,
    tol: float,
    max_terms: int,
    describe: Callable[[], str],
) -> Tensor:
    """``exp(M) x = sum_k M^k x / k!`` for a linear map ``apply(t) = M t``, one application per term.

    With ``terms`` given, exactly that many terms (no device synchronisation). Otherwise
    terms are added until the newest one is below ``tol * max |x|``; beyond ``max_terms``
    :class:`SeriesNotConverged` is raised with ``describe()`` saying which series and why.
    Shared by :func:`conv_exp` and :func:`graph_conv_exp`.
    """
    result, term = x, x
    if terms is not None:
        for i in range(1, terms + 1):
            term = apply(term) / i
            result = result + term
        return result
    scale = x.detach().abs().max().clamp_min(torch.finfo(x.dtype).tiny)
    for i in range(1, max_terms + 1):
        term = apply(term) / i
        result = result + term
        if term.detach().abs().max() <= tol * scale:
            return result
    raise SeriesNotConverged(f"did not converge to tol={tol:g} in {max_terms} terms: {describe()}")


def rescale_to_bound(weight: Tensor, bound: Tensor, limit: float) -> Tensor:
    """``weight * min(1, limit / bound)``: the weight scaled down just enough that ``bound <= limit`` holds for it.

    ``bound`` is a guaranteed upper bound of a norm of the map that ``weight`` parametrises and is
    homogeneous of degree 1 in ``weight`` (a spectral norm or a bound of it), so the rescaled
    weight's bound is ``min(bound, limit)``. Differentiable, no data-dependent control flow (no
    device synchronisation), applied on every call so that it holds after any optimiser step;
    ``bound = 0`` leaves ``weight`` unchanged (``bound`` is clamped at ``1e-12``). Used by
    ``convexp`` and ``graph_convexp`` (``||M||_2 <= rho``) and ``residual`` (``Lip <= sqrt(c)`` per
    convolution). Cost ``O(numel)``.

    >>> w = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    >>> rescale_to_bound(w, torch.linalg.matrix_norm(w, ord=2), 0.5)
    tensor([[0.5000, 0.0000],
            [0.0000, 0.1667]])
    >>> torch.equal(rescale_to_bound(w, torch.tensor(3.0), 4.0), w)  # already within the limit
    True
    """
    return weight * torch.clamp(limit / bound.clamp_min(1e-12), max=1.0)
