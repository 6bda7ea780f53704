"""Throughput of a model preset: training steps (``train``) or sampling and density evaluation (``sample``).

Prints one JSON line::

    python -m flowlib.bench train --preset paper-mixing --mixing convexp --batch-size 256 --steps 50 \\
        --device cuda --conditioner-dtype bfloat16 --compile --baseline
    python -m flowlib.bench sample --preset paper-mixing --batch-size 256 --device cuda

``train`` times full optimizer steps (forward, backward, gradient norm, Adamax) on one
batch of synthetic CIFAR-shaped images; ``ms_per_step`` is the median over ``--steps``
steps after ``--warmup`` untimed ones, each synchronised (:func:`flowlib.bench.timing.median_ms`). ``sample`` times
``model.sample(batch)`` and a no-grad ``model(x)`` (bits per dimension) the same way.
``--baseline`` also runs the same preset in the plain configuration (float32, no
compile, NCHW) in the same process and reports ``speedup = baseline ms / ms``.
Peak memory is ``torch.cuda.max_memory_allocated`` (``null`` on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

import flowlib
from flowlib import cli, data, precision
from flowlib.bench.timing import median_ms
from flowlib.devices import DEVICES, DeviceError, device_name, resolve_device

__all__ = ["add_arguments", "run", "measure"]


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Flags of ``python -m flowlib.bench train|sample`` (plus every ModelConfig field)."""
    from flowlib.presets import PRESETS

    parser.set_defaults(bench=name)
    parser.add_argument("--preset", default="paper-mixing", choices=sorted(PRESETS))
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps (batches)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotuning)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--conditioner-dtype", default="float32", choices=tuple(precision.CONDITIONER_DTYPES))
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW on CUDA (channels-last is the default there)",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also run fp32 / no compile / NCHW and report the ratio"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sample: sampling temperature")
    parser.add_argument("--seed", type=int, default=0)
    model_group = parser.add_argument_group("model (ModelConfig overrides of the preset)")
    cli.add_model_arguments(model_group, skip=("image_shape",))


def measure(
    kind: str,
    preset: str,
    overrides: dict,
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
    conditioner_dtype: str = "float32",
    compile: bool = False,
    channels_last: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    """One configuration: build the model, time ``kind`` ("train" or "sample"), return the numbers."""
    from flowlib.models import build_model

    torch.manual_seed(seed)
    channels_last = channels_last and device.type == "cuda"
    model = build_model(preset, **overrides).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    shape = tuple(model.config.image_shape)
    x = data.load_synthetic(batch_size, shape=shape, seed=seed)[0].to(device)  # [B, C, H, W] uint8
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    precision.set_conditioner_dtype(model, conditioner_dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "conditioner_dtype": conditioner_dtype,
        "compile": compile,
        "channels_last": channels_last,
    }
    with flowlib.validation("shape"):
        with torch.no_grad():
            model.train()(x)  # data-dependent init
        fwd = torch.compile(model) if compile else model
        if kind == "train":
            opt = torch.optim.Adamax(model.parameters(), lr=1e-5, eps=1e-7)

            def step():
                loss = fwd(x).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
                opt.step()
                opt.zero_grad(set_to_none=True)

            ms = median_ms(step, steps, warmup, device)
            result.update(ms_per_step=ms, images_per_s=batch_size / ms * 1e3)
        else:
            model.eval()
            with torch.no_grad():
                ms_eval = median_ms(lambda: fwd(x), steps, warmup, device)
                g = torch.Generator(device=device).manual_seed(seed)
                ms_sample = median_ms(
                    lambda: model.sample(batch_size, temperature=temperature, generator=g),
                    steps,
                    min(warmup, 2),
                    device,
                )
            result.update(
                ms_per_eval_batch=ms_eval,
                eval_images_per_s=batch_size / ms_eval * 1e3,
                ms_per_sample_batch=ms_sample,
                sample_images_per_s=batch_size / ms_sample * 1e3,
            )
    result["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result["config"] = dataclasses.asdict(model.config)
    return result


def run(args: argparse.Namespace) -> int:
    from flowlib.models import ModelConfig

    try:
        device = resolve_device(args.device)
    except DeviceError as err:
        raise SystemExit(f"error: {err}") from None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    common = dict(
        kind=args.bench,
        preset=args.preset,
        overrides=overrides,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        device=device,
        temperature=args.temperature,
        seed=args.seed,
    )
    result = {
        "bench": args.bench,
        "preset": args.preset,
        "overrides": overrides,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "device": device_name(device),
        "torch": torch.__version__,
    }
    result.update(
        measure(
            **common, conditioner_dtype=args.conditioner_dtype, compile=args.compile, channels_last=args.channels_last
        )
    )
    if args.baseline:
        base = measure(**common, conditioner_dtype="float32", compile=False, channels_last=False)
        base.pop("config")
        result["baseline"] = base
        key = "ms_per_step" if args.bench == "train" else "ms_per_eval_batch"
        result["speedup"] = base[key] / result[key]
        if args.bench == "sample":
            result["sample_speedup"] = base["ms_per_sample_batch"] / result["ms_per_sample_batch"]
    print(json.dumps(result))
    return 0
