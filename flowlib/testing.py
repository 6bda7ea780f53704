"""Numerical checks of the flow contract, shared by the tests, the notebooks and the lessons.

* :func:`brute_force_logdet` - ``log |det J|`` from the full Jacobian (autograd), per sample.
* :func:`perturb_` - add ``scale * randn`` to every parameter (layers must stay valid).
* :func:`flow_errors` - inverse round-trip error and log-determinant error of a layer.
* :func:`build_layer` - a registered layer by name, initialised on one batch, perturbed, in eval mode.
* :func:`measured_lipschitz` - a measured lower bound of a map's Lipschitz constant.

>>> layer = build_layer("conv1x1", (2, 3, 3))
>>> errors = flow_errors(layer, torch.randn(2, 2, 3, 3, dtype=torch.float64))
>>> errors["inverse"] < 1e-12, errors["logdet"] < 1e-12
(True, True)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import make

__all__ = ["brute_force_logdet", "perturb_", "flow_errors", "build_layer", "measured_lipschitz"]


def brute_force_logdet(fn, x: Tensor) -> Tensor:
    """``log |det d fn(x_b) / d x_b|`` for each sample ``b``, from the dense Jacobian.

    ``fn`` maps a batch ``[B, *shape]`` to ``[B, *shape]`` (extra outputs of a
    tuple are ignored). Cost: ``D`` backward passes and a ``D x D`` determinant with
    ``D = prod(shape)``: only for small shapes, ideally in float64.
    """

    def one(sample: Tensor) -> Tensor:
        out = fn(sample.unsqueeze(0))
        out = out[0] if isinstance(out, tuple) else out
        return out.squeeze(0)

    dets = []
    for sample in x:
        jac = torch.autograd.functional.jacobian(one, sample)  # [*shape, *shape]
        dim = sample.numel()
        dets.append(torch.linalg.slogdet(jac.reshape(dim, dim)).logabsdet)
    return torch.stack(dets)


@torch.no_grad()
def perturb_(module: nn.Module, scale: float = 0.1, generator: torch.Generator | None = None) -> nn.Module:
    """Add ``scale * N(0, 1)`` noise to every floating-point parameter of ``module``, in place."""
    for p in module.parameters():
        if p.is_floating_point():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
    return module


def flow_errors(flow: nn.Module, x: Tensor) -> dict[str, float]:
    """Max-abs errors of a layer on ``x``: ``{"inverse": ..., "logdet": ...}``.

    ``inverse`` is ``max |flow.inverse(flow(x)[0]) - x|``; ``logdet`` is
    ``max |logdet - brute_force_logdet|``. ``flow`` must be in a deterministic
    mode (e.g. ``eval()`` for layers with stochastic estimates).
    """
    with torch.no_grad():
        y, logdet = flow(x)
        x_back = flow.inverse(y)
    if logdet.shape != (x.shape[0],):
        raise AssertionError(f"logdet must have shape [{x.shape[0]}], got {list(logdet.shape)}")
    reference = brute_force_logdet(lambda t: flow(t)[0], x).detach()
    return {
        "inverse": float((x_back - x).abs().max()),
        "logdet": float((logdet - reference).abs().max()),
    }


def build_layer(
    name: str,
    shape,
    seed: int = 0,
    scale: float = 0.1,
    dtype: torch.dtype = torch.float64,
    *,
    init_batch: int = 8,
    **kwargs,
) -> nn.Module:
    """The layer registered as ``name``, ready for a numerical check: built, initialised, perturbed, in eval mode.

    Steps, each deterministic given ``seed``:

    1. ``torch.manual_seed(seed)``, then ``make(name, shape=shape, **kwargs).to(dtype)``;
    2. one training-mode forward pass on ``init_batch`` samples ``N(0, 1)`` (generator seeded with
       ``seed``): the data-dependent initialisation of ``actnorm`` and the layers that contain one
       (``init_batch=0`` skips it; it needs every size of ``shape`` fixed);
    3. :func:`perturb_` with ``scale`` (generator seeded with ``seed + 1``; ``scale=0`` skips it),
       so that a check does not only see the layer at its initial, often near-identity, parameters;
    4. ``eval()``: deterministic log-determinants (no stochastic estimates).

    Shared by the contract tests, the layer tests and the device check.

    >>> layer = build_layer("actnorm", (2, 4, 4), scale=0.0)
    >>> bool(layer.initialized), layer.training
    (True, False)
    """
    torch.manual_seed(seed)
    layer = make(name, shape=shape, **kwargs).to(dtype)
    if init_batch:
        if any(size is None for size in shape):
            raise ValueError(
                f"build_layer({name!r}): shape={tuple(shape)} has a free size; the initialisation batch needs "
                "fixed sizes (pass init_batch=0 to skip it)"
            )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            layer.train()(torch.randn(init_batch, *shape, generator=generator, dtype=dtype))
    if scale:
        perturb_(layer, scale, torch.Generator().manual_seed(seed + 1))
    return layer.eval()


def measured_lipschitz(g, x: Tensor, jacobian_points: int = 8, generator: torch.Generator | None = None) -> float:
    """A measured lower bound of ``Lip(g)``: what a guaranteed bound ``Lip(g) <= c`` must stay above.

    The largest of (a) ``||g(a) - g(b)|| / ||a - b||`` over the pairs ``(x_i, x_pi(i))`` (a random
    permutation: far pairs) and ``(x_i, x_i + 1e-3 s_i n_i)`` (``s_i = 1 + ||x_i||``, ``n_i`` a random
    unit direction: near pairs, which approach the local slope), and (b) the spectral norm of the
    dense Jacobian ``J_g(x_i)`` at the first ``jacobian_points`` samples (the local Lipschitz
    constant exactly). Norms are Euclidean over all non-batch dimensions.

    Shapes: ``x: [B, ...]``, ``g: [B, ...] -> [B, ...]``. Cost: 3 calls of ``g`` on ``B`` samples and
    ``jacobian_points`` dense Jacobians (``D`` backward passes each, ``D`` = numel of one sample).

    >>> A = torch.tensor([[0.3, 0.4], [0.0, 0.5]], dtype=torch.float64)
    >>> c = measured_lipschitz(lambda t: t @ A.T, torch.randn(64, 2, dtype=torch.float64))
    >>> abs(c - float(torch.linalg.matrix_norm(A, ord=2))) < 1e-12  # exact for a linear map
    True
    """
    flat = x.flatten(1)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    direction = torch.randn(flat.shape, generator=generator, dtype=x.dtype).to(x.device)
    direction = direction / direction.norm(dim=1, keepdim=True)
    near = (flat + 1e-3 * (1 + flat.norm(dim=1, keepdim=True)) * direction).reshape(x.shape)
    with torch.no_grad():
        gx = g(x).flatten(1)
        ratios = [
            (gx - gx[perm]).norm(dim=1) / (flat - flat[perm]).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny),
            (gx - g(near).flatten(1)).norm(dim=1) / (flat - near.flatten(1)).norm(dim=1),
        ]
    best = max(float(r.max()) for r in ratios)
    dim = flat.shape[1]
    for point in x[:jacobian_points]:
        jac = torch.autograd.functional.jacobian(lambda t: g(t.unsqueeze(0)).squeeze(0), point).reshape(dim, dim)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best
