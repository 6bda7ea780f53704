"""Residual maps ``y = x + g(x)`` with ``Lip(g) <= c < 1``: the fixed-point inverse and the log-det series.

``x -> x + g(x)`` is a bijection when ``g`` is a contraction (Banach). Its inverse is the fixed
point of ``x = y - g(x)`` (:func:`invert_contraction`, with the iteration count known in advance:
:func:`fixed_point_iterations`), and its log-determinant the power series
``log det(I + J) = sum_{k>=1} (-1)^(k+1) tr(J^k) / k`` (``||J||_2 <= c``), estimated with
Hutchinson probes, truncated or Russian roulette (:func:`logdet_series`, :func:`series_terms`).
Used by the image block ``make("residual")`` and the toy :class:`flowlib.toy.sylvester.ResidualMLP`.
Taught in ``notebooks/04_sylvester_flows.ipynb``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .series import SeriesNotConverged

__all__ = ["series_terms", "fixed_point_iterations", "default_inverse_tol", "invert_contraction", "logdet_series"]


def series_terms(lipschitz: float, dim: int, tol: float) -> int:
    """Fewest terms ``n`` with ``dim c^(n+1) / ((n+1)(1-c)) <= tol``: the truncation bias bound.

    ``|tr(J^k)| <= dim ||J||_2^k <= dim c^k``, so the tail ``sum_{k>n} |tr(J^k)|/k`` of
    the log-determinant series is at most ``dim c^(n+1) / ((n+1)(1-c))``.
    """
    if not 0 < lipschitz < 1:
        raise ValueError(f"the log-det series needs a Lipschitz constant in (0, 1), got {lipschitz}")
    n = 0
    while dim * lipschitz ** (n + 1) / ((n + 1) * (1 - lipschitz)) > tol:
        n += 1
    return n


def fixed_point_iterations(lipschitz: float, gap: float, tol: float) -> int:
    """Fewest ``n >= 0`` with ``c^n / (1 - c) * gap <= tol``: the fixed-point iterations needed, known in advance.

    For ``y = x + g(x)`` with ``Lip(g) <= c < 1`` the iteration ``x_{k+1} = y - g(x_k)``,
    ``x_0 = y`` contracts with rate ``c`` (Banach), so ``||x_n - x|| <= c^n / (1 - c) ||x_1 - x_0||``
    and ``||x_1 - x_0|| = ||g(y)|| = gap``. Hence ``n = ceil(log(tol (1 - c) / gap) / log c)``.

    >>> fixed_point_iterations(0.5, gap=1.0, tol=1e-3)  # 0.5^11 / 0.5 = 9.8e-4 <= 1e-3 < 0.5^10 / 0.5
    11
    """
    if not 0 < lipschitz < 1:
        raise ValueError(f"the fixed-point inverse needs a Lipschitz constant in (0, 1), got {lipschitz}")
    if not tol > 0:
        raise ValueError(f"the fixed-point inverse needs tol > 0, got {tol}")
    if not math.isfinite(gap):
        raise ValueError(f"the fixed-point inverse needs a finite ||g(y)||, got {gap} (is the input finite?)")
    if gap <= tol * (1 - lipschitz):
        return 0
    n = max(0, math.ceil(math.log(tol * (1 - lipschitz) / gap) / math.log(lipschitz)))
    while lipschitz**n / (1 - lipschitz) * gap > tol:  # guard the rounding of the logarithms
        n += 1
    return n


def default_inverse_tol(dtype: torch.dtype, low_precision: float = 1e-6) -> float:
    """Default relative tolerance of an iterative inverse: ``1e-12`` in float64, ``low_precision`` otherwise.

    ``1e-6`` (the default) for :func:`invert_contraction`; the convolutional Sylvester layer's
    Newton-like iteration passes ``1e-5`` (its float32 residual levels off above ``1e-6``).

    >>> default_inverse_tol(torch.float64), default_inverse_tol(torch.float32)
    (1e-12, 1e-06)
    """
    return 1e-12 if dtype == torch.float64 else low_precision


def invert_contraction(g, y: Tensor, lipschitz: float, tol: float, max_iter: int, name: str) -> tuple[Tensor, int]:
    """Solve ``x + g(x) = y`` for ``Lip(g) <= c < 1`` by ``x_{k+1} = y - g(x_k)``, ``x_0 = y`` (no autograd).

    Per sample ``b`` (norms ``||.||`` are Euclidean over all non-batch dimensions, the norm
    in which ``Lip(g) <= c`` holds) the target is ``||x_n - x|| <= t_b = tol (1 + ||y_b||)``:

    * **a priori**: ``n = max_b fixed_point_iterations(c, ||g(y_b)||, t_b)`` iterations suffice
      (error ``<= c^n / (1 - c) ||g(y_b)||``), so the cost is known before iterating;
      :class:`~flowlib.functional.SeriesNotConverged` (naming ``name``) if ``n > max_iter``;
    * **a posteriori** early stop once ``c / (1 - c) ||x_k - x_{k-1}|| <= t_b`` for every sample;
    * **check**: the steps must shrink as promised, ``||x_k - x_{k-1}|| <= c^(k-1) ||g(y_b)||``
      up to a rounding allowance ``sqrt(eps) (1 + ||y_b||)``; a larger step (or a non-finite
      one) means ``g`` is not a contraction with constant ``c``: ``SeriesNotConverged``.

    Floating point: every step adds a rounding error ``delta`` (a few ``eps`` times the size of
    ``y``, ``g`` and ``g``'s hidden activations), so the computed iterate ends within
    ``c^n / (1 - c) ||g(y)|| + delta / (1 - c)`` of the true inverse and the step size levels
    off near ``delta`` instead of going to 0. The iteration therefore stops after ``n`` steps
    whatever the step size (waiting for a step below a fixed multiple of ``eps`` stalls forever
    in float32 on a trained flow).

    Shapes: ``y: [B, ...]``; returns ``(x [B, ...], iterations)``. Cost: ``n + 1`` calls of ``g``
    (``n ~ log(tol (1 - c) / ||g(y)||) / log c``) and one device synchronisation per iteration.

    >>> y = torch.ones(3, 2, dtype=torch.float64)
    >>> x, n = invert_contraction(lambda t: 0.5 * torch.sin(t), y, 0.5, 1e-12, 100, "demo")
    >>> bool((x + 0.5 * torch.sin(x) - y).abs().max() < 1e-11), n <= fixed_point_iterations(0.5, 0.6, 1e-12)
    (True, True)
    """
    with torch.no_grad():
        gy = g(y)
        y_norm, gap = y.flatten(1).norm(dim=1), gy.flatten(1).norm(dim=1)  # [B]
        target = tol * (1 + y_norm)
        # n depends on gap / target only, and grows with it: the worst sample decides (one device sync)
        worst_ratio = float((gap / target).max()) if y.shape[0] else 0.0
        if not math.isfinite(worst_ratio):
            raise ValueError(
                f"{name}.inverse: y or g(y) is not finite (||g(y)|| / tol = {worst_ratio}); check the input"
            )
        n = fixed_point_iterations(lipschitz, worst_ratio, 1.0)
        if n > max_iter:
            raise SeriesNotConverged(
                f"{name}.inverse: the fixed point x = y - g(x) needs n={n} iterations for tol={tol:g} "
                f"(Lip(g) <= {lipschitz}, max ||g(y)|| = {float(gap.max()):.3g}: error <= c^n/(1-c) ||g(y)||), "
                f"more than max_iter={max_iter}; raise {name}.max_iter or loosen {name}.inverse_tol"
            )
        allowance = math.sqrt(torch.finfo(y.dtype).eps) * (1 + y_norm)
        x, k = y - gy, 1
        while k < n:
            x_next = y - g(x)
            step = (x_next - x).flatten(1).norm(dim=1)
            x, k = x_next, k + 1
            promised = lipschitz ** (k - 1) * gap + allowance
            if not bool((step <= promised).all()):  # also catches NaN
                worst = int(torch.argmax(torch.nan_to_num(step / promised, nan=math.inf)))
                raise SeriesNotConverged(
                    f"{name}.inverse: step {k} of the fixed point moved sample {worst} by {float(step[worst]):.3g}, "
                    f"more than the contraction allows (c^(k-1) ||g(y)|| + rounding = {float(promised[worst]):.3g} "
                    f"with c = {lipschitz}): g is not a contraction with Lip(g) <= {lipschitz}, or the input is "
                    "not finite"
                )
            if bool((lipschitz / (1 - lipschitz) * step <= target).all()):
                break
    return x, k


def logdet_series(
    gx: Tensor,
    x: Tensor,
    probes: Tensor,
    terms: int | Tensor,
    roulette_p: float | None = None,
    n_exact: int = 0,
    create_graph: bool = False,
) -> Tensor:
    """Hutchinson estimate of ``log det(I + J_g(x))`` per sample from the power series.

    ``log det(I + J) = sum_{k>=1} (-1)^(k+1) tr(J^k) / k`` (converges for ``||J||_2 < 1``), with
    ``tr(J^k) ~ v^T J^k v`` for probes ``v`` (``E[v v^T] = I``, e.g. ``N(0, I)``) and ``v^T J^k`` by
    ``k`` vector-Jacobian products through the graph from ``x`` to ``gx = g(x)``::

        estimate = mean_v sum_{k=1}^{n} (-1)^(k+1) / (k P(N >= k)) v^T J^k v

    * ``roulette_p=None``: the first ``n`` terms, ``P(N >= k) = 1`` (truncated: biased by the tail,
      at most ``D c^(n+1) / ((n+1)(1-c))``, :func:`series_terms`);
    * ``roulette_p=p``: Russian roulette with ``N = n_exact + G``, ``G ~ Geometric(p)``
      (``P(N >= k) = (1 - p)^max(0, k - n_exact)``); with ``n`` drawn from that law the estimate is
      unbiased (Chen et al. 2019). The caller draws ``n``.

    Arguments:
        gx, x: ``g(x)`` and ``x`` (``[B, ...]``, ``x.requires_grad``), the graph between them kept.
        probes: ``[P, B, ...]``; ``P`` probes per sample, averaged.
        terms: ``n``, an ``int`` (every sample) or a ``[B]`` integer tensor (per sample: term ``k``
            counts for the samples with ``terms >= k``).
        create_graph: keep the graph of the estimate (training: gradients through the series).

    Returns ``[B]``. Cost: ``max(n)`` vector-Jacobian products, batched over the probes.

    >>> A = torch.tensor([[0.2, 0.1], [0.0, -0.3]], dtype=torch.float64)
    >>> x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    >>> probes = torch.eye(2, dtype=torch.float64)[:, None].expand(2, 3, 2) * 2**0.5  # exact traces
    >>> estimate = logdet_series(x @ A.T, x, probes, terms=60)
    >>> torch.allclose(estimate, torch.linalg.slogdet(torch.eye(2, dtype=torch.float64) + A).logabsdet.expand(3))
    True
    """
    if roulette_p is not None and not 0 < roulette_p <= 1:
        raise ValueError(f"roulette_p must be a probability in (0, 1], got {roulette_p}")
    per_sample = isinstance(terms, Tensor)
    n_max = int(terms.max()) if per_sample else int(terms)
    batched = probes.shape[0] > 1
    w, total = probes if batched else probes[0], torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for k in range(1, n_max + 1):
        (w,) = torch.autograd.grad(gx, x, w, create_graph=create_graph, retain_graph=True, is_grads_batched=batched)
        survival = 1.0 if roulette_p is None else (1 - roulette_p) ** max(0, k - n_exact)  # P(N >= k)
        quadratic = (w * probes).flatten(2).sum(2).mean(0) if batched else (w * probes[0]).flatten(1).sum(1)
        term = (-1) ** (k + 1) / (k * survival) * quadratic  # [B]
        total = total + (torch.where(terms >= k, term, torch.zeros_like(term)) if per_sample else term)
    return total
