"""Small flows on vectors ``[B, D]``, a standard-normal base, and a training loop.

These are the image layers' little siblings, used where a picture of the density
helps: notebook 01 trains one on a 2-D toy density, notebook 04 compares flows there.

* :class:`ExpLinear` - ``y = expm(A) x + b`` (the matrix-exponential linear layer).
* :class:`AffineCoupling` - ``y_2 = x_2 * exp(s(x_1)) + t(x_1)`` (RealNVP).
* :class:`ExpCoupling` - ``y_2 = expm(A(x_1)) x_2 + t(x_1)`` (Xiao & Liu's matrix-exp coupling).
* :func:`toy_flow` - alternating linear and coupling layers.
* :func:`log_prob`, :func:`sample`, :func:`fit_density`, :func:`grid_log_prob`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..core import Flow, FlowDistribution, Sequential, half_sizes, merge_halves, sample_shape, split_halves
from ..linalg import expm

__all__ = [
    "ExpLinear",
    "AffineCoupling",
    "ExpCoupling",
    "toy_flow",
    "log_prob",
    "sample",
    "fit_density",
    "grid_log_prob",
]


def _dim(shape, who: str) -> int:
    """``D`` of a vector shape ``(D,)`` (:func:`flowlib.core.sample_shape`), at least 2 (two halves)."""
    (D,) = sample_shape(shape, who, ndim=1, fixed_size=True)
    if D < 2:
        raise ValueError(f"{who} needs shape=(D,) with D >= 2, got shape={tuple(shape)}")
    return int(D)


def _mlp(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    """``d_in -> hidden -> hidden -> d_out`` with a zero last layer (the coupling starts as the identity)."""
    net = nn.Sequential(
        nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d_out)
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class ExpLinear(Flow):
    """Matrix-exponential linear layer on vectors.

    Formula: ``y = expm(A) x + b`` with unconstrained ``A`` (``D x D``) and ``b``.

    Inverse: ``x = expm(-A) (y - b)``.

    Log-determinant: ``tr(A)`` for every sample (``det expm(A) = exp(tr A)``).

    Cost: two ``expm`` of a ``D x D`` matrix per call plus ``O(B D^2)``.

    Shapes: ``x, y: [B, D]``, ``logdet: [B]``.

    Reference: Xiao & Liu, "Generative Flows with Matrix Exponential", ICML 2020.
    Taught in notebook 01 (matrix exponential); the image version is
    :class:`flowlib.layers.linear.Conv1x1Exp`.
    """

    def __init__(self, shape, init_scale: float = 0.1):
        super().__init__(shape)
        D = _dim(shape, "ExpLinear")
        self.A = nn.Parameter(init_scale * torch.randn(D, D) / math.sqrt(D))
        self.b = nn.Parameter(torch.zeros(D))

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x @ expm(self.A).T + self.b
        return y, torch.diagonal(self.A).sum().expand(x.shape[0])

    def _inverse(self, y: Tensor) -> Tensor:
        return (y - self.b) @ expm(-self.A).T


class _Coupling(Flow):
    """Split ``x = (x_1, x_2)`` (:func:`flowlib.core.split_halves`: ``x_1`` the first ``D // 2`` entries,
    or the last ``D - D // 2`` if ``swap``)."""

    def __init__(self, shape, swap: bool):
        super().__init__(shape)
        self.D = _dim(shape, type(self).__name__)
        self.swap = swap
        self.d1, self.d2 = half_sizes(self.D, swap)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return split_halves(x, self.swap)

    def _join(self, x1: Tensor, x2: Tensor) -> Tensor:
        return merge_halves(x1, x2, self.swap)


class AffineCoupling(_Coupling):
    """Affine coupling on vectors (RealNVP).

    Formula: ``y_1 = x_1``, ``y_2 = x_2 * exp(s) + t`` with ``(s, t) = MLP(x_1)``
    and ``s = 2 tanh(raw / 2)`` (bounded scales keep early training stable).

    Inverse: ``x_2 = (y_2 - t) * exp(-s)`` with ``(s, t)`` from ``y_1 = x_1``.

    Log-determinant: ``sum(s)`` per sample.

    Cost: one MLP evaluation; ``O(B D)`` on top.

    Shapes: ``x, y: [B, D]``, ``logdet: [B]``.

    Reference: Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    Taught in notebooks 01 and 04.
    """

    def __init__(self, shape, hidden: int = 64, swap: bool = False):
        super().__init__(shape, swap)
        self.net = _mlp(self.d1, 2 * self.d2, hidden)

    def _params(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        raw, t = self.net(x1).chunk(2, dim=1)  # [B, d2] each
        return 2 * torch.tanh(raw / 2), t

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = self._split(x)
        s, t = self._params(x1)
        return self._join(x1, x2 * torch.exp(s) + t), s.sum(dim=1)

    def _inverse(self, y: Tensor) -> Tensor:
        y1, y2 = self._split(y)
        s, t = self._params(y1)
        return self._join(y1, (y2 - t) * torch.exp(-s))


class ExpCoupling(_Coupling):
    """Matrix-exponential coupling on vectors (Xiao & Liu 2020).

    Formula: ``y_1 = x_1``, ``y_2 = expm(A(x_1)) x_2 + t(x_1)`` where the MLP
    predicts a full ``d_2 x d_2`` matrix ``A`` (scaled by ``tanh`` to entries in
    ``(-2, 2)`` / ``d_2``) and a shift ``t``. With ``D = 2`` the block is ``1 x 1``
    and the layer reduces to an affine coupling; from ``D = 4`` on it mixes the
    entries of ``x_2`` with a data-dependent invertible matrix.

    Inverse: ``x_2 = expm(-A(y_1)) (y_2 - t(y_1))`` (no solve).

    Log-determinant: ``tr A(x_1)`` per sample.

    Cost: one MLP evaluation and a batched ``expm`` of ``B`` matrices ``d_2 x d_2``.

    Shapes: ``x, y: [B, D]``, ``logdet: [B]``.

    Reference: Xiao & Liu, "Generative Flows with Matrix Exponential", ICML 2020.
    Taught in notebook 01; the image version is ``make("exp_coupling", ...)``.
    """

    def __init__(self, shape, hidden: int = 64, swap: bool = False):
        super().__init__(shape, swap)
        self.net = _mlp(self.d1, self.d2 * self.d2 + self.d2, hidden)

    def _params(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(x1)  # [B, d2*d2 + d2]
        A = 2 * torch.tanh(out[:, : self.d2 * self.d2] / 2).reshape(-1, self.d2, self.d2) / self.d2  # [B, d2, d2]
        return A, out[:, self.d2 * self.d2 :]  # A: [B, d2, d2], t: [B, d2]

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = self._split(x)
        A, t = self._params(x1)
        y2 = (expm(A) @ x2.unsqueeze(-1)).squeeze(-1) + t  # [B, d2]
        return self._join(x1, y2), torch.diagonal(A, dim1=-2, dim2=-1).sum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        y1, y2 = self._split(y)
        A, t = self._params(y1)
        x2 = (expm(-A) @ (y2 - t).unsqueeze(-1)).squeeze(-1)  # [B, d2]
        return self._join(y1, x2)


_COUPLINGS = {"affine": AffineCoupling, "exp": ExpCoupling}


def toy_flow(dim: int = 2, depth: int = 4, coupling: str = "affine", hidden: int = 64) -> Sequential:
    """``depth`` blocks of ``ExpLinear`` followed by a coupling (alternating halves), for ``[B, dim]`` data.

    ``coupling`` is ``"affine"`` (:class:`AffineCoupling`) or ``"exp"`` (:class:`ExpCoupling`).
    """
    if coupling not in _COUPLINGS:
        raise ValueError(f"coupling must be one of {sorted(_COUPLINGS)}, got {coupling!r}")
    if depth < 1:
        raise ValueError(f"toy_flow needs depth >= 1, got {depth}")
    layers: list[Flow] = []
    for i in range(depth):
        layers.append(ExpLinear((dim,)))
        layers.append(_COUPLINGS[coupling]((dim,), hidden=hidden, swap=bool(i % 2)))
    return Sequential(*layers)


def log_prob(flow: Flow, x: Tensor) -> Tensor:
    """``log p(x) = log N(f(x); 0, I) + log |det df/dx|`` per sample, shape ``[B]``.

    The functional form of :meth:`flowlib.core.FlowDistribution.log_prob`.
    """
    return FlowDistribution(flow).log_prob(x)


def sample(flow: Flow, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` samples: ``x = f^{-1}(z)`` with ``z ~ N(0, I)``, shape ``[n, D]``.

    The functional form of :meth:`flowlib.core.FlowDistribution.sample` (``z`` in the flow's dtype).
    """
    return FlowDistribution(flow).sample(n, generator)


def fit_density(
    flow: Flow,
    sampler: Callable[[int], Tensor],
    steps: int = 1000,
    lr: float = 3e-3,
    batch_size: int = 256,
) -> list[float]:
    """Maximum likelihood: ``steps`` Adam steps on fresh batches ``sampler(batch_size)``.

    Returns the training loss (mean negative log-likelihood in nats) of every step.
    The learning rate decays to 0 along a cosine so that the final loss is a fair
    read-out of the fit.
    """
    if steps < 1:
        raise ValueError(f"fit_density needs steps >= 1, got {steps}")
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    flow.train()
    losses = []
    for _ in range(steps):
        loss = -log_prob(flow, sampler(batch_size)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    flow.eval()
    return torch.stack(losses).tolist()


@torch.no_grad()
def grid_log_prob(flow: Flow, limit: float = 4.0, resolution: int = 100) -> tuple[Tensor, Tensor]:
    """``log p`` of a 2-D flow on a ``resolution x resolution`` grid over ``[-limit, limit]^2``.

    Returns ``(axis, logp)``: ``axis`` of shape ``[resolution]`` and ``logp`` of shape
    ``[resolution, resolution]`` indexed ``[y, x]`` (ready for ``imshow``/``contourf``).
    """
    if flow.shape != (2,):
        raise ValueError(f"grid_log_prob plots 2-D flows (shape (2,)), got shape {flow.shape}")
    axis = torch.linspace(-limit, limit, resolution)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")  # [R, R] each
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # [R*R, 2]
    param = next(flow.parameters())
    return axis, log_prob(flow, points.to(param)).reshape(resolution, resolution).cpu()
