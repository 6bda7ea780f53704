"""Numerical checks of the flow contract, shared by the tests, the notebooks and the lessons.

* :func:`brute_force_logdet` - ``log |det J|`` from the full Jacobian (autograd), per sample.
* :func:`perturb_` - add ``scale * randn`` to every parameter (layers must stay valid).
* :func:`flow_errors` - inverse round-trip error and log-determinant error of a layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["brute_force_logdet", "perturb_", "flow_errors"]


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
