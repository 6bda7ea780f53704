"""Planar, Sylvester, generalized Sylvester and residual flows on vectors ``[B, D]``.

These are the 2-D (or small-``D``) versions of the layers that
``flowlib.layers.sylvester`` and ``flowlib.layers.residual`` apply to images:
small enough that every Jacobian can be written down, so notebook 04
(``notebooks/04_sylvester_flows.ipynb``) can fit them to the toy densities of
:mod:`flowlib.toy.densities` and compare quality and cost honestly.

All four are residual maps ``y = x + (something)``; they differ in how they keep
that map invertible and its log-determinant cheap:

* :class:`Planar`              rank one, ``w^T u_hat > -1``        (Rezende & Mohamed 2015)
* :class:`Sylvester`           rank ``M``, triangular ``R, R~``      (van den Berg et al. 2018)
* :class:`GeneralizedSylvester` full rank, ``W = expm(A)`` and an
  autoregressive ``f`` with bounded diagonal                      (Hoogeboom et al. 2020)
* :class:`ResidualMLP`         ``Lip(g) < 1``, log-det by a power series (Behrmann et al. 2019; Chen et al. 2019)

The first three invert by 1-D monotone root solves (:func:`solve_monotone`), the
last by a fixed-point iteration; each records how many iterations its last
inverse took in ``last_inverse_iterations``.

>>> import torch
>>> flow = make_stack("sylvester", dim=2, n_layers=3).double()
>>> x = torch.randn(5, 2, dtype=torch.float64)
>>> y, logdet = flow(x)
>>> bool((flow.inverse(y) - x).abs().max() < 1e-10)
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Flow, Sequential, sample_shape
from ..functional import default_inverse_tol, invert_contraction, logdet_series, rescale_to_bound
from ..linalg import expm

__all__ = [
    "solve_monotone",
    "MaskedMLP",
    "Planar",
    "Sylvester",
    "GeneralizedSylvester",
    "ResidualMLP",
    "series_logdet",
    "make_stack",
    "TOY_FLOWS",
]


def solve_monotone(fn, target: Tensor, lo: Tensor, hi: Tensor, tol: float | None = None, max_iter: int = 200):
    """Solve ``g(a) = target`` elementwise for an increasing ``g`` with the root in ``[lo, hi]``.

    ``fn(a)`` returns ``(g(a), g'(a))``. Safeguarded Newton: a Newton step is taken
    when it stays inside the current bracket, a bisection step otherwise, and the
    bracket shrinks at every iteration, so it always converges (at worst linearly,
    typically quadratically). Stops when ``|g(a) - target| <= tol * (1 + |target|)``
    (``tol`` defaults to ``10 * eps`` of the dtype) or the bracket has collapsed.

    Returns ``(a, iterations)``. The convergence test synchronises with the device
    once per iteration: this is for inverses (sampling), not for training.
    """
    if tol is None:
        tol = 10 * torch.finfo(target.dtype).eps
    scale = tol * (1 + target.abs())
    a = (lo + hi) / 2
    for iteration in range(1, max_iter + 1):
        value, slope = fn(a)
        residual = value - target
        hi = torch.where(residual > 0, a, hi)
        lo = torch.where(residual > 0, lo, a)
        done = (residual.abs() <= scale) | (hi - lo <= scale)
        if bool(done.all()):
            return a, iteration
        newton = a - residual / slope
        inside = (newton >= lo) & (newton <= hi)
        a = torch.where(done, a, torch.where(inside, newton, (lo + hi) / 2))
    return a, max_iter


class MaskedMLP(nn.Module):
    """Autoregressive MLP (MADE, Germain et al. 2015): output block ``k`` of dimension ``i`` sees only ``x_{<i}``.

    ``forward(x [B, D]) -> [B, n_out, D]``; ``out[:, k, i]`` depends on ``x[:, :i]``
    only, so ``out[:, :, 0]`` is a learned constant. Masks are fixed 0/1 buffers
    multiplied into the weights; the last layer starts at zero.
    """

    def __init__(self, dim: int, hidden: int = 32, n_out: int = 2):
        super().__init__()
        self.dim, self.n_out = dim, n_out
        d_in = torch.arange(1, dim + 1)  # degree of input i is i+1
        d_hidden = torch.arange(hidden) % max(dim - 1, 1) + 1 if dim > 1 else torch.zeros(hidden, dtype=torch.long)
        d_out = torch.arange(1, dim + 1).repeat(n_out)  # [n_out * D], block k holds dims 0..D-1
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, n_out * dim)])
        self.register_buffer("mask0", (d_hidden[:, None] >= d_in[None, :]).float())
        self.register_buffer("mask1", (d_hidden[:, None] >= d_hidden[None, :]).float())
        self.register_buffer("mask2", (d_out[:, None] > d_hidden[None, :]).float())
        nn.init.zeros_(self.layers[2].weight)
        nn.init.zeros_(self.layers[2].bias)

    def forward(self, x: Tensor) -> Tensor:
        masks = (self.mask0, self.mask1, self.mask2)
        for k, (layer, mask) in enumerate(zip(self.layers, masks, strict=True)):
            x = F.linear(x, layer.weight * mask.to(x.dtype), layer.bias)
            if k < 2:
                x = torch.tanh(x)
        return x.unflatten(1, (self.n_out, self.dim))  # [B, n_out, D]


_SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(_SOFTPLUS_ONE) = 1


class Planar(Flow):
    """Planar flow: ``y = x + u_hat * tanh(w^T x + b)``.

    Formula: ``u_hat = u + (m(w^T u) - w^T u) w / ||w||^2`` with
    ``m(s) = -1 + softplus(s + log(e - 1))``, so that ``c = w^T u_hat > -1`` for any
    parameters. (The paper uses ``m(s) = -1 + softplus(s)``; the shift makes
    ``m(0) = 0``, so small ``u, w`` give a layer close to the identity instead of a
    ``u_hat`` of size ``1 / ||w||``.)
    Inverse: ``a = w^T x + b`` solves the 1-D monotone equation
    ``a + c tanh(a) = w^T y + b`` (root in ``[t - |c|, t + |c|]``, :func:`solve_monotone`);
    then ``x = y - u_hat tanh(a)``.
    Log-determinant: ``log(1 + c tanh'(a))`` (matrix determinant lemma), positive
    argument because ``c > -1`` and ``tanh' in (0, 1]``.
    Cost: ``O(D)`` per sample forward; the inverse is one scalar root solve.
    Shapes: ``x, y: [B, D]``, ``logdet: [B]``.
    Reference: "Variational Inference with Normalizing Flows", Rezende & Mohamed, 2015.
    Taught in ``notebooks/04_sylvester_flows.ipynb``.
    """

    def __init__(self, shape, init_scale: float = 0.1):
        dim = sample_shape(shape, "Planar", ndim=1, fixed_size=True)[0]
        super().__init__((dim,))
        self.w = nn.Parameter(init_scale * torch.randn(dim))
        self.u = nn.Parameter(init_scale * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))
        self.last_inverse_iterations = 0

    def u_hat(self) -> Tensor:
        wu = self.w @ self.u
        norm2 = (self.w @ self.w).clamp_min(torch.finfo(self.w.dtype).tiny)
        return self.u + (F.softplus(wu + _SOFTPLUS_ONE) - 1 - wu) * self.w / norm2

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u_hat = self.u_hat()
        a = x @ self.w + self.b  # [B]
        h = torch.tanh(a)
        y = x + h[:, None] * u_hat
        return y, torch.log1p((self.w @ u_hat) * (1 - h * h))

    def _inverse(self, y: Tensor) -> Tensor:
        u_hat = self.u_hat()
        c = self.w @ u_hat
        t = y @ self.w + self.b  # [B]

        def g(a):
            h = torch.tanh(a)
            return a + c * h, 1 + c * (1 - h * h)

        a, self.last_inverse_iterations = solve_monotone(g, t, t - c.abs(), t + c.abs())
        return y - torch.tanh(a)[:, None] * u_hat


class Sylvester(Flow):
    """Orthogonal Sylvester flow: ``y = x + Q R tanh(R~ Q^T x + b)``.

    Formula: ``Q = expm(S - S^T)[:, :M]`` has orthonormal columns (the exponential of
    a skew-symmetric matrix is orthogonal); ``R`` and ``R~`` are ``M x M`` upper
    triangular with diagonals ``tanh(R_diag)``, ``tanh(Rt_diag)`` in ``(-1, 1)``, so
    ``R_ii R~_ii > -1`` and the map is invertible for any parameters.
    Inverse: write ``x = Q v + x_perp``; then ``x_perp = y - Q Q^T y`` and
    ``Q^T y = v + R tanh(R~ v + b)`` is triangular in ``v`` (coordinate ``i`` depends
    on ``v_i, ..., v_M``), so ``v`` is found by back-substitution, one 1-D monotone
    solve per coordinate from ``i = M`` down to 1 (:func:`solve_monotone`).
    Log-determinant: by Sylvester's determinant identity
    ``det(I_D + Q R H R~ Q^T) = det(I_M + H R~ R)``, triangular, so
    ``sum_i log(1 + R_ii R~_ii tanh'(pre_i))``.
    Cost: ``O(D M + M^2)`` per sample forward (plus an ``expm`` of ``D x D`` per call);
    inverse ``M`` sequential scalar solves.
    Shapes: ``x, y: [B, D]``, ``logdet: [B]``; ``n_hidden = M <= D`` (default ``D``).
    Reference: "Sylvester Normalizing Flows for Variational Inference",
    van den Berg, Hasenclever, Tomczak & Welling, 2018.
    Taught in ``notebooks/04_sylvester_flows.ipynb``; the image version is
    ``flowlib.layers.sylvester``.
    """

    def __init__(self, shape, n_hidden: int | None = None, init_scale: float = 0.5):
        dim = sample_shape(shape, "Sylvester", ndim=1, fixed_size=True)[0]
        super().__init__((dim,))
        m = dim if n_hidden is None else n_hidden
        if not 1 <= m <= dim:
            raise ValueError(f"Sylvester needs 1 <= n_hidden <= D = {dim}, got n_hidden={m}")
        self.n_hidden = m
        self.S = nn.Parameter(init_scale * torch.randn(dim, dim))
        self.R_off = nn.Parameter(init_scale * torch.randn(m, m))
        self.Rt_off = nn.Parameter(init_scale * torch.randn(m, m))
        self.R_diag = nn.Parameter(init_scale * torch.randn(m))  # R_ii = tanh(R_diag_i)
        self.Rt_diag = nn.Parameter(init_scale * torch.randn(m))
        self.b = nn.Parameter(torch.zeros(m))
        self.last_inverse_iterations = 0

    def matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Q [D, M], R [M, M], R~ [M, M])`` from the unconstrained parameters."""
        Q = expm(self.S - self.S.T)[:, : self.n_hidden]
        R = torch.triu(self.R_off, 1) + torch.diag(torch.tanh(self.R_diag))
        Rt = torch.triu(self.Rt_off, 1) + torch.diag(torch.tanh(self.Rt_diag))
        return Q, R, Rt

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        Q, R, Rt = self.matrices()
        h = torch.tanh(x @ Q @ Rt.T + self.b)  # [B, M]
        y = x + h @ R.T @ Q.T
        diag = torch.diagonal(R) * torch.diagonal(Rt)  # [M]
        return y, torch.log1p(diag * (1 - h * h)).sum(dim=1)

    def _inverse(self, y: Tensor) -> Tensor:
        Q, R, Rt = self.matrices()
        w = y @ Q  # [B, M]
        v = torch.zeros_like(w)
        h = torch.zeros_like(w)  # tanh(R~ v + b), filled from the last coordinate backwards
        self.last_inverse_iterations = 0
        for i in reversed(range(self.n_hidden)):
            target = w[:, i] - h[:, i + 1 :] @ R[i, i + 1 :]  # [B]
            shift = v[:, i + 1 :] @ Rt[i, i + 1 :] + self.b[i]  # [B]
            r, rt = R[i, i], Rt[i, i]

            def g(a, r=r, rt=rt, shift=shift):
                t = torch.tanh(rt * a + shift)
                return a + r * t, 1 + r * rt * (1 - t * t)

            v_i, its = solve_monotone(g, target, target - r.abs(), target + r.abs())
            self.last_inverse_iterations += its
            v = v.clone()
            v[:, i] = v_i
            h = h.clone()
            h[:, i] = torch.tanh(rt * v_i + shift)
        return v @ Q.T + (y - w @ Q.T)


class GeneralizedSylvester(Flow):
    """Generalized Sylvester flow: ``y = x + W^{-1} f(W x)`` with ``W = expm(A)``.

    Formula: ``W = expm(A)`` is any invertible matrix with a free inverse
    ``W^{-1} = expm(-A)``; ``f`` is autoregressive,
    ``f_i(v) = tanh(s_i) / alpha_i * tanh(alpha_i v_i + beta_i)`` with
    ``(s_i, log alpha_i, beta_i) = MaskedMLP(v_{<i})``, so ``df_i/dv_i =
    tanh(s_i) tanh'(.)`` lies in ``(-1, 1)`` (the bounded diagonal that keeps
    ``v -> v + f(v)`` invertible).
    Inverse: ``u = W y = v + f(v)`` with ``v = W x`` is solved for ``v_1, v_2, ...``
    in order, one 1-D monotone solve per coordinate (root within ``1 / alpha_i`` of
    ``u_i``); then ``x = expm(-A) v``.
    Log-determinant: ``det(I + W^{-1} J_f W) = det(I + J_f)`` and ``J_f`` is
    triangular, so ``sum_i log(1 + tanh(s_i) tanh'(alpha_i v_i + beta_i))``; the
    ``W`` factors cancel.
    Cost: one ``D x D`` expm per call, ``O(D^2)`` per sample plus the MLP; inverse
    ``D`` sequential MLP calls and scalar solves.
    Shapes: ``x, y: [B, D]``, ``logdet: [B]``.
    Reference: "The Convolution Exponential and Generalized Sylvester Flows",
    Hoogeboom, Garcia Satorras, Tomczak & Welling, 2020.
    Taught in ``notebooks/04_sylvester_flows.ipynb``; the image version is
    ``flowlib.layers.sylvester``.
    """

    def __init__(self, shape, hidden: int = 32, init_scale: float = 0.5):
        dim = sample_shape(shape, "GeneralizedSylvester", ndim=1, fixed_size=True)[0]
        super().__init__((dim,))
        self.A = nn.Parameter(init_scale * torch.randn(dim, dim))
        self.net = MaskedMLP(dim, hidden, n_out=3)
        self.last_inverse_iterations = 0

    def _params(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s, log_alpha, beta = self.net(v).unbind(1)  # each [B, D]
        return torch.tanh(s), torch.exp(log_alpha), beta

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        v = x @ expm(self.A).T  # [B, D]
        gate, alpha, beta = self._params(v)
        t = torch.tanh(alpha * v + beta)
        y = x + (gate / alpha * t) @ expm(-self.A).T
        return y, torch.log1p(gate * (1 - t * t)).sum(dim=1)

    def _inverse(self, y: Tensor) -> Tensor:
        u = y @ expm(self.A).T  # [B, D]
        v = torch.zeros_like(u)
        self.last_inverse_iterations = 0
        for i in range(self.shape[0]):
            gate, alpha, beta = (p[:, i] for p in self._params(v))  # depend on v_{<i} only

            def g(a, gate=gate, alpha=alpha, beta=beta):
                t = torch.tanh(alpha * a + beta)
                return a + gate / alpha * t, 1 + gate * (1 - t * t)

            v_i, its = solve_monotone(g, u[:, i], u[:, i] - 1 / alpha, u[:, i] + 1 / alpha)
            self.last_inverse_iterations += its
            v = v.clone()
            v[:, i] = v_i
        return v @ expm(-self.A).T


def _lipswish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x) / 1.1  # Lipschitz constant < 1 (max slope of swish is ~1.0998)


def series_logdet(
    g,
    x: Tensor,
    terms: int = 10,
    roulette: float | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> Tensor:
    """Stochastic ``log det(I + J_g(x))`` per sample from the power series.

    ``log det(I + J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k`` (converges when
    ``||J|| < 1``), with Hutchinson's ``tr(J^k) ~ v^T J^k v``, ``v ~ N(0, I)``, and
    ``J^k`` applied by ``k`` vector-Jacobian products (:func:`flowlib.functional.logdet_series`).

    * ``roulette=None``: the first ``terms`` terms (Behrmann et al. 2019): biased
      by the truncated tail.
    * ``roulette=p``: Russian roulette (Chen et al. 2019): ``terms`` terms always,
      then ``G ~ Geometric(p)`` more (drawn per sample), term ``k`` divided by
      ``P(N >= k)``: unbiased, at the price of a random cost (``terms + (1-p)/p``
      terms on average, the batch's maximum in practice).

    Shapes: ``x: [B, D]``; returns ``[B]``. ``create_graph=True`` keeps the graph
    for training.
    """
    batch = x.shape[0]
    keep = torch.full((batch,), terms, dtype=torch.long)  # terms computed for each sample
    if roulette is not None:
        if not 0 < roulette < 1:
            raise ValueError(f"roulette must be a probability in (0, 1), got {roulette}")
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        keep += torch.floor(torch.log(u) / math.log1p(-roulette)).long()  # G ~ Geometric, P(G >= j) = (1-p)^j
    probes = torch.stack([torch.randn(x.shape, generator=generator, dtype=x.dtype) for _ in range(n_samples)])
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        # term k counts for the samples with N >= k, divided by P(N >= k) = (1-p)^(k - terms) beyond terms
        return logdet_series(g(x), x, probes.to(x.device), keep.to(x.device), roulette, terms, create_graph)


class ResidualMLP(Flow):
    """Residual flow on vectors: ``y = x + g(x)`` with ``Lip(g) <= c = coeff^3 < 1``.

    Formula: ``g`` is a 3-layer MLP with LipSwish activations (slope ``<= 1.0998 / 1.1``) whose
    weight matrices are scaled by ``min(1, coeff / ||W||_2)`` (:func:`~flowlib.functional.rescale_to_bound`;
    exact spectral norm, cheap for small matrices), recomputed on every call: so ``Lip(g) <= coeff^3`` (the attribute
    ``lipschitz``) for *any* parameter values, after any training. Biases do not change a
    Lipschitz constant; the activation's slack ``0.9998`` covers the rounding of the computed
    norms. ``x -> x + g(x)`` is then invertible.
    Inverse: :func:`~flowlib.functional.invert_contraction`, the fixed point
    ``x_{k+1} = y - g(x_k)`` with error ``<= c^n / (1 - c) ||g(y)||`` after ``n`` iterations, run
    for the ``n`` that makes it ``<= inverse_tol (1 + ||y||)`` (known in advance; default ``1e-12``
    in float64, ``1e-6`` otherwise); raises :class:`~flowlib.functional.SeriesNotConverged` naming
    ``ResidualMLP`` if that needs more than ``max_iter`` iterations or a step breaks the bound.
    Log-determinant: ``logdet="exact"`` builds the ``D x D`` Jacobian of ``g`` with
    ``D`` vector-Jacobian products and takes ``slogdet(I + J)`` (what a 2-D toy can
    afford); ``"series"`` / ``"roulette"`` use :func:`series_logdet` (truncated /
    unbiased stochastic estimates, what image-size residual flows must use, see
    ``flowlib.layers.residual``).
    Cost: ``D`` backward passes for the exact log-det; ``terms`` for the series;
    the inverse costs one ``g`` per iteration, about ``log(inverse_tol (1 - c) / ||g(y)||) / log c`` of them.
    Shapes: ``x, y: [B, D]``, ``logdet: [B]``.
    Reference: "Invertible Residual Networks", Behrmann, Grathwohl, Chen, Duvenaud &
    Jacobsen, 2019; "Residual Flows for Invertible Generative Modeling", Chen,
    Behrmann, Duvenaud & Jacobsen, 2019.
    Taught in ``notebooks/04_sylvester_flows.ipynb``.

    >>> layer = ResidualMLP((2,), coeff=0.9).double()
    >>> y, _ = layer(torch.randn(4, 2, dtype=torch.float64))
    >>> bool((layer(layer.inverse(y))[0] - y).abs().max() < 1e-10), round(layer.lipschitz, 3)
    (True, 0.729)
    """

    def __init__(
        self,
        shape,
        hidden: int = 64,
        coeff: float = 0.97,
        logdet: str = "exact",
        terms: int = 10,
        roulette: float = 0.5,
        inverse_tol: float | None = None,
        max_iter: int = 500,
    ):
        dim = sample_shape(shape, "ResidualMLP", ndim=1, fixed_size=True)[0]
        super().__init__((dim,))
        if not 0 < coeff < 1:
            raise ValueError(f"ResidualMLP needs a Lipschitz coefficient 0 < coeff < 1, got {coeff}")
        if logdet not in ("exact", "series", "roulette"):
            raise ValueError(f"logdet must be 'exact', 'series' or 'roulette', got {logdet!r}")
        self.coeff, self.logdet_mode, self.terms, self.roulette = coeff, logdet, terms, roulette
        self.inverse_tol, self.max_iter = inverse_tol, max_iter
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, dim)])
        self.lipschitz = coeff ** len(self.layers)
        self.last_inverse_iterations = 0

    def g(self, x: Tensor) -> Tensor:
        """The residual branch ``g(x)``, ``Lip(g) <= coeff^3 = lipschitz``."""
        for k, layer in enumerate(self.layers):
            weight = rescale_to_bound(layer.weight, torch.linalg.matrix_norm(layer.weight, ord=2), self.coeff)
            x = F.linear(x, weight, layer.bias)
            if k < len(self.layers) - 1:
                x = _lipswish(x)
        return x

    @staticmethod
    def _jacobian_logdet(gx: Tensor, x: Tensor, create_graph: bool) -> Tensor:
        rows = [
            torch.autograd.grad(gx[:, i].sum(), x, retain_graph=True, create_graph=create_graph)[0]
            for i in range(x.shape[1])
        ]
        J = torch.stack(rows, dim=1)  # [B, D, D], J[b, i, j] = d g_i / d x_j
        return torch.linalg.slogdet(torch.eye(x.shape[1], dtype=x.dtype, device=x.device) + J).logabsdet

    def exact_logdet(self, x: Tensor) -> Tensor:
        """``log |det(I + J_g(x))|`` from the dense ``[B, D, D]`` Jacobian (``D`` backward passes)."""
        create_graph = torch.is_grad_enabled()  # keep the graph only when training
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            return self._jacobian_logdet(self.g(xg), xg, create_graph)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.logdet_mode != "exact":
            roulette = self.roulette if self.logdet_mode == "roulette" else None
            logdet = series_logdet(self.g, x, self.terms, roulette, create_graph=torch.is_grad_enabled())
            return x + self.g(x), logdet
        grad_on = torch.is_grad_enabled()
        with torch.enable_grad():  # one evaluation of g serves the output and its Jacobian
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self.g(xg)
            logdet = self._jacobian_logdet(gx, xg, create_graph=grad_on)
            y = xg + gx
        return (y, logdet) if grad_on else (y.detach(), logdet.detach())

    def _inverse(self, y: Tensor) -> Tensor:
        tol = self.inverse_tol if self.inverse_tol is not None else default_inverse_tol(y.dtype)
        x, self.last_inverse_iterations = invert_contraction(
            self.g, y, self.lipschitz, tol, self.max_iter, "ResidualMLP"
        )
        return y - self.g(x)  # one step with autograd: exact value, first-order gradient


TOY_FLOWS = {
    "planar": Planar,
    "sylvester": Sylvester,
    "generalized_sylvester": GeneralizedSylvester,
    "residual": ResidualMLP,
}


def make_stack(kind: str, dim: int = 2, n_layers: int = 8, **kwargs) -> Sequential:
    """A stack of ``n_layers`` vector flows of one kind (a key of :data:`TOY_FLOWS`).

    ``kwargs`` go to every layer (e.g. ``hidden=32`` or ``logdet="series"``).
    """
    if kind not in TOY_FLOWS:
        raise ValueError(f"unknown toy flow {kind!r}; choose one of {sorted(TOY_FLOWS)}")
    return Sequential(*(TOY_FLOWS[kind]((dim,), **kwargs) for _ in range(n_layers)))
