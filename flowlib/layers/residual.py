"""Invertible residual block (i-ResNet / Residual Flows baseline): ``residual``.

``y = x + g(x)`` is invertible when ``g`` is a contraction (``Lip(g) < 1``): the
inverse is the fixed point of ``x = y - g(x)`` (Banach). Its log-determinant has
no closed form; it is the power series ``log det(I + J) = sum_k (-1)^(k+1) tr(J^k) / k``
(converges for ``||J||_2 <= Lip(g) < 1``), estimated stochastically in training
and deterministically in evaluation. The baseline that the linear flows of this
package are compared with. Taught in ``notebooks/04_sylvester_flows.ipynb``
(comparison section).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Flow, sample_shape
from ..functional import (
    conv_spectral_norm_bound,
    default_inverse_tol,
    invert_contraction,
    logdet_series,
    rescale_to_bound,
    series_terms,
)
from .registry import register

__all__ = ["ResidualFlow", "LipSwish"]


class LipSwish(nn.Module):
    """``x sigmoid(beta x) / 1.1`` with learnable ``beta = softplus(raw) > 0``: 1-Lipschitz (Chen et al. 2019).

    ``d/dx [x sigmoid(beta x)]`` is at most ``1.0998`` for every ``beta > 0``, so dividing by 1.1
    keeps the slope in ``[-0.1, 1]``.
    """

    def __init__(self):
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(0.5413))  # softplus(0.5413) = 1

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(F.softplus(self.raw_beta) * x) / 1.1


@register("residual")
class ResidualFlow(Flow):
    """Residual flow block ``y = x + g(x)`` with ``Lip(g) <= c < 1`` (Behrmann et al. 2019; Chen et al. 2019).

    Formula: ``g(x) = conv3x3_2(LipSwish(conv3x3_1(x)))``; each convolution's weight
    is rescaled as ``w * min(1, sqrt(c) / s(w))`` where ``s(w)`` is
    :func:`~flowlib.functional.conv_spectral_norm_bound` for the input's ``H x W``: an
    actual upper bound of the zero-padded convolution's spectral norm (FFT of the
    kernel on the ``(H+2) x (W+2)`` grid, exact for the circular convolution that
    contains it), recomputed on every call (no state, valid after any parameter
    change). So ``Lip(g) <= sqrt(c) * 1 * sqrt(c) = c`` always (default ``c = 0.9``).

    The factor ``1.0998 / 1.1 = 0.9998`` of the activation leaves room for the float32
    rounding of the computed bounds (relative ``~1e-6``), so ``Lip(g) <= c`` holds as computed.

    Inverse: :func:`~flowlib.functional.invert_contraction`, the fixed point ``x_{k+1} = y - g(x_k)`` from
    ``x_0 = y`` without autograd, error ``<= c^n ||g(y)|| / (1 - c)`` after ``n`` iterations,
    run for the ``n`` that makes this ``<= inverse_tol (1 + ||y||)`` per sample (known in advance, about
    ``log(inverse_tol (1 - c) / ||g(y)||) / log c``; fewer when the a-posteriori bound is met first);
    ``last_inverse_iterations`` records it. A last step ``x = y - g(x)`` is taken with autograd
    on, so gradients flow through one step (first-order). Raises
    :class:`~flowlib.functional.SeriesNotConverged` naming the layer when ``n > max_iter`` or
    when a step breaks the contraction bound.

    Log-determinant: ``log det(I + J) = sum_{k>=1} (-1)^(k+1) tr(J^k) / k``.

    * Training: unbiased Russian-roulette estimate with one Hutchinson probe per
      sample (Chen et al. 2019): ``n = n_exact + G``, ``G ~ Geometric(p)`` (``P(G >= j) =
      (1-p)^j``; :meth:`sample_terms` draws it from the CPU generator, so choosing ``n`` never
      synchronises with the device), ``sum_{k<=n} (-1)^(k+1) v^T J^k v / (k P(n >= k))`` with ``v ~ N(0, I)``;
      ``v^T J^k`` by ``k`` vector-Jacobian products. Default ``p = 1 - c``: each weighted
      term is then ``<= D c^n_exact / k`` in size, so the estimator has finite variance;
      expected terms ``n_exact + c / (1 - c)`` (11 for ``c = 0.9``). Gradients: autograd
      through the series (``create_graph=True``): the gradient of an unbiased estimator
      for fixed ``(n, v)`` is an unbiased gradient estimate (memory ``O(n)`` graphs;
      Chen et al.'s Neumann-gradient trick would save memory at equal expectation).
      An unbiased estimate needs an unbounded random number of vector-Jacobian products
      (a fixed number ``N`` estimates a degree-``N`` polynomial of ``J``, which is biased),
      so the graph changes from call to call: under ``torch.compile`` the block runs eagerly
      (``torch.compiler.disable``; one graph break per block, no recompilation, and the
      double backward through ``g`` that compiled graphs do not support).
    * Evaluation (deterministic): for ``D = C H W <= exact_max_dim`` (1024) the dense
      Jacobian from ``D`` batched vector-Jacobian products and ``log |det(I + J)|`` by
      LU, i.e. the series summed to all orders: no bias, cost ``O(D)`` backward passes and
      ``O(D^3)``. Above: the series truncated after ``n = series_terms(c, 1, 1e-3)`` terms
      (50 for ``c = 0.9``; bias ``<= D c^(n+1)/((n+1)(1-c)) <= 1e-3 D``) with ``eval_probes``
      fixed-seed Hutchinson probes (seed 0, the same on every call).

    Cost: forward ``O(B C h k^2 H W)`` per ``g`` call, times ``1 + E[n]`` (training);
    inverse one ``g`` call per iteration. Parameters ``2 C h k^2 + C + h + 1``.

    Shapes: ``x, y: [B, C, H, W]``, ``logdet: [B]``.

    Reference: Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen, "Invertible Residual
    Networks", ICML 2019; Chen, Behrmann, Duvenaud & Jacobsen, "Residual Flows for
    Invertible Generative Modeling", NeurIPS 2019. Taught in notebook 04 (baseline).

    Arguments:
        shape: ``(C, H, W)``.
        hidden: channels of the hidden layer (default 32).
        lipschitz: ``c`` (default 0.9).
        n_exact, roulette_p: Russian roulette (default 2 and ``1 - c``).
        exact_max_dim, eval_probes: evaluation mode choices (above).
        inverse_tol, max_iter: inverse (``inverse_tol`` default
            :func:`~flowlib.functional.default_inverse_tol`: ``1e-12`` in float64, ``1e-6`` otherwise;
            ``max_iter`` 500).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("residual", shape=(2, 4, 4)).double().eval()
    >>> x = torch.randn(2, 2, 4, 4, dtype=torch.float64); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-10), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(
        self,
        shape,
        hidden: int = 32,
        lipschitz: float = 0.9,
        n_exact: int = 2,
        roulette_p: float | None = None,
        exact_max_dim: int = 1024,
        eval_probes: int = 4,
        inverse_tol: float | None = None,
        max_iter: int = 500,
    ):
        super().__init__(shape)
        sample_shape(shape, "residual")
        if not 0 < lipschitz < 1:
            raise ValueError(f"residual needs 0 < lipschitz < 1 (contraction), got {lipschitz}")
        C = int(shape[0])
        self.lipschitz = float(lipschitz)
        self.n_exact = int(n_exact)
        self.roulette_p = float(roulette_p) if roulette_p is not None else 1 - self.lipschitz
        if not 0 < self.roulette_p <= 1:
            raise ValueError(f"residual needs 0 < roulette_p <= 1, got {self.roulette_p}")
        self.exact_max_dim = int(exact_max_dim)
        self.eval_probes = int(eval_probes)
        self.eval_terms = series_terms(self.lipschitz, 1, 1e-3)
        self.inverse_tol = inverse_tol
        self.max_iter = int(max_iter)
        self.last_inverse_iterations = 0
        self.w1 = nn.Parameter(torch.randn(hidden, C, 3, 3) / math.sqrt(9 * C))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.act = LipSwish()
        self.w2 = nn.Parameter(0.1 * torch.randn(C, hidden, 3, 3) / math.sqrt(9 * hidden))
        self.b2 = nn.Parameter(torch.zeros(C))

    # -- the contraction g ----------------------------------------------------------------
    def _normalized(self, w: Tensor, height: int, width: int) -> Tensor:
        return rescale_to_bound(w, conv_spectral_norm_bound(w, height, width), math.sqrt(self.lipschitz))

    def g(self, x: Tensor, weights=None) -> Tensor:
        """The residual branch ``g(x)``, ``Lip(g) <= lipschitz``; ``weights`` = normalised ``(w1, w2)``."""
        w1, w2 = weights if weights is not None else self.weights(x.shape[2], x.shape[3])
        return F.conv2d(self.act(F.conv2d(x, w1, self.b1, padding=1)), w2, self.b2, padding=1)

    def weights(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The spectrally normalised convolution weights for ``height x width`` inputs."""
        return self._normalized(self.w1, height, width), self._normalized(self.w2, height, width)

    # -- log-determinant estimators ---------------------------------------------------------
    def sample_terms(self) -> int:
        """Russian-roulette truncation ``n = n_exact + G``, ``G ~ Geometric(p)`` on ``{0, 1, ...}``.

        Drawn from the default *CPU* generator (seeded by ``torch.manual_seed``) whatever the
        default device is: reading it back is not a device synchronisation.
        """
        draw = torch.empty((), dtype=torch.float64, device="cpu").geometric_(self.roulette_p)  # trials to success
        return self.n_exact + int(draw) - 1

    def _roulette(self, gx: Tensor, x: Tensor, create_graph: bool) -> Tensor:
        probe = torch.randn_like(x)[None]  # [1, B, C, H, W]
        return logdet_series(gx, x, probe, self.sample_terms(), self.roulette_p, self.n_exact, create_graph)

    def _exact(self, gx: Tensor, x: Tensor, create_graph: bool) -> Tensor:
        B, D = x.shape[0], x[0].numel()
        basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, *x.shape[1:]).expand(D, *x.shape)
        (rows,) = torch.autograd.grad(
            gx, x, basis, create_graph=create_graph, retain_graph=True, is_grads_batched=True
        )  # [D, B, C, H, W]: row i of each J_b
        jac = rows.reshape(D, B, D).transpose(0, 1)  # [B, D, D]
        return torch.linalg.slogdet(jac + torch.eye(D, dtype=x.dtype, device=x.device)).logabsdet

    def _hutchinson(self, gx: Tensor, x: Tensor, create_graph: bool) -> Tensor:
        generator = torch.Generator().manual_seed(0)
        probes = torch.randn(self.eval_probes, *x.shape, generator=generator, dtype=x.dtype).to(x.device)  # [P, B, ...]
        return logdet_series(gx, x, probes, self.eval_terms, create_graph=create_graph)

    # -- flow contract ----------------------------------------------------------------------
    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._forward_eager(x)

    @torch.compiler.disable(reason="residual: random series length and double backward through g stay eager")
    def _forward_eager(self, x: Tensor) -> tuple[Tensor, Tensor]:
        grad_on = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self.g(xg)
            if self.training:
                logdet = self._roulette(gx, xg, create_graph=grad_on)
            elif x[0].numel() <= self.exact_max_dim:
                logdet = self._exact(gx, xg, create_graph=grad_on)
            else:
                logdet = self._hutchinson(gx, xg, create_graph=grad_on)
            y = xg + gx
        if not grad_on:
            return y.detach(), logdet.detach()
        return y, logdet

    def _inverse(self, y: Tensor) -> Tensor:
        tol = self.inverse_tol if self.inverse_tol is not None else default_inverse_tol(y.dtype)
        weights = self.weights(y.shape[2], y.shape[3])
        x, self.last_inverse_iterations = invert_contraction(
            lambda t: self.g(t, weights), y, self.lipschitz, tol, self.max_iter, "residual"
        )
        return y - self.g(x, weights)  # one step with autograd: exact value, first-order gradient
