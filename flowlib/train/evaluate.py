"""Test-set bits per dimension, and the diagnosis of a non-finite step.

>>> import torch, flowlib
>>> from flowlib.train.runtime import Runtime
>>> model = flowlib.models.build_model("tiny")
>>> images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
>>> evaluate(model, images, batch_size=4, rt=Runtime(torch.device("cpu")), seed=0) > 0
True
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .runtime import Runtime

__all__ = ["evaluate", "first_nonfinite"]


@torch.no_grad()
def evaluate(model, images, batch_size: int, rt: Runtime, seed: int, iw_samples: int = 0) -> float:
    """Mean test bpd over ``images`` ``[N, C, H, W]`` (sharded over ranks); ``iw_samples > 0`` uses ``log_prob_iw``.

    Runs under its own seeded RNG so evaluations neither disturb nor depend on the training RNG.
    """
    was_training = model.training
    model.eval()
    shard = images[rt.rank :: rt.world]
    D = math.prod(images.shape[1:])
    total = torch.zeros(2, dtype=torch.float64, device=rt.device)  # [sum of bpd, count]
    with torch.random.fork_rng(devices=rt.rng_devices):
        torch.manual_seed(seed)
        for i in range(0, len(shard), batch_size):
            x = shard[i : i + batch_size].to(rt.device)
            if iw_samples > 0:
                bpd = -model.log_prob_iw(x, n_samples=iw_samples) / (D * math.log(2))
            else:
                bpd = model(x)
            total += torch.stack([bpd.double().sum(), torch.tensor(float(len(x)), device=rt.device)])
    if rt.ddp:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def first_nonfinite(model: nn.Module, x) -> str:
    """Name the input batch, or the first parameter, gradient or layer output that is not finite.

    Only called on failure. A non-finite input is bad data, reported as such (not blamed on a layer).
    """
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        return f"bad data: the input batch holds {bad} NaN/Inf value(s) (check the data set, not the model)"
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return f"first non-finite parameter: {name}"
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"first non-finite gradient: {name}"
    found = []

    def hook(module, args, output):
        outs = output if isinstance(output, (tuple, list)) else (output,)
        if not found and any(
            torch.is_tensor(o) and o.is_floating_point() and not torch.isfinite(o).all() for o in outs
        ):
            found.append(module)

    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # a layer may refuse NaN input; the layer found so far is what we want
        pass
    finally:
        for h in handles:
            h.remove()
    if found:
        m = found[0]
        return f"first layer with non-finite output: {names[m] or 'model'} ({type(m).__name__})"
    return "parameters and gradients are finite (the loss itself overflowed)"
