"""Step 2 of the GPU check: float32 on a device against float64 on the CPU, for every layer and two kernels.

Each check returns relative errors ``rel(a, ref) = ||a - ref||_F / max(||ref||_F, floor)``,
computed in float64 on the CPU (``a`` may live on the device), and ``flagged``: the keys whose
error exceeds :data:`FLAG` (or is NaN).

* :func:`layer_errors`: a registered layer from :func:`flowlib.testing.build_layer` (float64 on
  the CPU: built, initialised on ``batch`` samples, perturbed by :data:`PERTURB`, eval mode) and
  an exact float32 copy of it on the device, applied to the same ``x`` of shape ``[batch, *shape]``:
  ``y_rel`` of the outputs, ``logdet_rel`` of the log-determinants (``floor = 1``: log-dets near 0
  are compared absolutely), ``inverse_rel = rel(inverse(y), x)`` on the device. Cost: two forward
  passes and one inverse of the layer.
* :func:`expm_errors`: :func:`flowlib.linalg.expm` of 12 matrices 64 x 64 with 1-norms 0.01 .. 31.6
  in float32 on the device against float64 ``torch.linalg.matrix_exp`` (the worst of the 12), and
  torch's own float32 ``matrix_exp`` for scale.
* :func:`conv_exp_errors`: :func:`flowlib.functional.conv_exp` and its inverse with a random
  ``C x C x 3 x 3`` kernel scaled to the norm bound the convexp layer keeps (``RHO``), in float32
  on the device against float64 on the CPU.

>>> cpu = torch.device("cpu")
>>> result = layer_errors("conv1x1", (2, 4, 4), batch=3, device=cpu, seed=0)
>>> result["flagged"], result["y_rel"] < 1e-5
([], True)
>>> expm_errors(cpu, seed=0)["flagged"], conv_exp_errors((2, 4, 4), 3, cpu, seed=0)["flagged"]
([], [])
"""

from __future__ import annotations

import contextlib
import copy

import torch

from flowlib import functional, linalg
from flowlib.layers.convexp import RHO
from flowlib.testing import build_layer

__all__ = ["FLAG", "PERTURB", "relative_error", "tf32", "layer_errors", "expm_errors", "conv_exp_errors"]

FLAG = 1e-3  # relative error above which a correctness value is flagged
PERTURB = 0.05  # build_layer's perturbation scale: parameters away from their initial values

# A layer whose evaluation log-det is a stochastic estimate whose probes are drawn in the input's
# dtype cannot match a float64 run: its log-det is compared with float32 on the CPU instead.
LOGDET_VS_FLOAT32 = {
    "residual": "Hutchinson probes drawn in the input dtype above exact_max_dim=1024 (12x16x16 = 3072)",
}


def relative_error(a: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """``||a - ref|| / max(||ref||, floor)`` in float64 on the CPU (``a`` may live on the device)."""
    ref = ref.detach().double().cpu()
    return float((a.detach().double().cpu() - ref).norm() / max(float(ref.norm()), floor, 1e-300))


def _flagged(result: dict, keys: tuple[str, ...]) -> list[str]:
    """The ``keys`` of ``result`` over :data:`FLAG`; ``not <=`` also flags NaN."""
    return sorted(k for k in keys if not result[k] <= FLAG)


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA matmuls and convolutions inside the block (the previous settings come back)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def layer_errors(name: str, shape: tuple, batch: int, device: torch.device, seed: int) -> dict:
    """float32 on ``device`` against float64 on the CPU, same parameters; see the module docstring."""
    try:  # float64, CPU; build_layer draws from seeds seed and seed + 1, x from seed + 2
        ref = build_layer(name, shape, seed=seed, scale=PERTURB, init_batch=batch)
    except (TypeError, ValueError) as e:
        return {"skipped": f"does not build with default arguments for shape {shape}: {e}"}
    with torch.no_grad():
        x64 = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
        y64, ld64 = ref(x64)  # [B, C, H, W], [B]
        layer = copy.deepcopy(ref).to(device=device, dtype=torch.float32)
        x = x64.to(device=device, dtype=torch.float32)
        y, ld = layer(x)
        x_back = layer.inverse(y)
        result = {
            "y_rel": relative_error(y, y64),
            "logdet_rel": relative_error(ld, ld64, 1.0),
            "inverse_rel": relative_error(x_back, x),
        }
        if name in LOGDET_VS_FLOAT32:
            _, ld32 = copy.deepcopy(ref).float()(x64.float())
            result.update(
                logdet_rel=relative_error(ld, ld32, 1.0), logdet_reference=f"float32 cpu: {LOGDET_VS_FLOAT32[name]}"
            )
    result["flagged"] = _flagged(result, ("y_rel", "logdet_rel", "inverse_rel"))
    return result


def expm_errors(device: torch.device, seed: int) -> dict:
    """``flowlib.linalg.expm`` in float32 on ``device`` (and torch's own, for scale) vs float64 ``matrix_exp``."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(12, 64, 64, generator=gen, dtype=torch.float64)
    norms = torch.logspace(-2, 1.5, 12, dtype=torch.float64)  # 1-norms 0.01 .. 31.6
    A = A / A.abs().sum(-2).amax(-1)[:, None, None] * norms[:, None, None]  # [12, 64, 64]
    ref = torch.linalg.matrix_exp(A)
    A32 = A.to(device=device, dtype=torch.float32)

    def worst(out: torch.Tensor) -> float:
        diff = (out.double().cpu() - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)  # [12]
        return float(diff.max())

    result = {"expm_rel": worst(linalg.expm(A32)), "torch_matrix_exp_rel": worst(torch.linalg.matrix_exp(A32))}
    result["flagged"] = _flagged(result, ("expm_rel",))
    return result


def conv_exp_errors(shape: tuple, batch: int, device: torch.device, seed: int) -> dict:
    """``flowlib.functional.conv_exp`` and its inverse in float32 on ``device`` vs float64 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    C, H, W = shape
    x64 = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)  # [B, C, H, W]
    kernel = torch.randn(C, C, 3, 3, generator=gen, dtype=torch.float64)
    kernel = kernel * (RHO / functional.conv_spectral_norm_bound(kernel, H, W))  # ||M||_2 <= RHO, as the layer
    terms = functional.conv_exp_terms(RHO, 1e-8)
    y64 = functional.conv_exp(x64, kernel, terms=terms)
    x, k32 = x64.to(device, torch.float32), kernel.to(device, torch.float32)
    y = functional.conv_exp(x, k32, terms=terms)
    x_back = functional.inv_conv_exp(y, k32, terms=terms)
    result = {"terms": terms, "y_rel": relative_error(y, y64), "inverse_rel": relative_error(x_back, x)}
    result["flagged"] = _flagged(result, ("y_rel", "inverse_rel"))
    return result
