"""``python -m flowlib.bench gpu``: the one command a lent GPU runs: environment, correctness, throughput, CIFAR-10.

Usage, from the repository root (on the device machine: see ``benchmarks/README.md``)::

    PYTHONPATH=. python3 -m flowlib.bench gpu --device cuda --out $OUT --data-dir .gpu/cifar-10-batches-py
    python -m flowlib.bench gpu --device cpu --quick --out runs/gpu_check     # CPU rehearsal, < 1 minute

What is measured, in this order:

1. ``env``: torch / CUDA / cuDNN versions, device name, compute capability, memory,
   multiprocessors, and the TF32 settings as found (steps 3-5 then turn TF32 on, as the
   official measurement and ``flowlib.train`` do).
2. ``correctness`` (:mod:`flowlib.bench.gpu_correctness`): every registered layer
   (``flowlib.layers.available()``, default arguments; one that does not build is recorded as
   skipped) for samples of shape (12, 16, 16), batch 8, from ``flowlib.testing.build_layer``
   (initialised, perturbed by 0.05, eval mode): float32 on the device against float64 on the
   CPU with the same parameters. Relative errors ``||a - ref|| / ||ref||`` of ``y`` and of the
   log-determinant (denominator at least 1: log-dets near 0 are compared absolutely), and the
   inverse round trip ``||inverse(y) - x|| / ||x||`` on the device. Also ``flowlib.linalg.expm``
   against float64 ``torch.linalg.matrix_exp`` (12 matrices 64 x 64, 1-norms 0.01 .. 31.6) and
   ``flowlib.functional.conv_exp`` against float64 on the CPU (kernel norm bound 0.5, as the
   layers use). On CUDA all of it twice: strict float32 (TF32 off) and TF32 on (what training
   uses). Values over ``FLAG`` (1e-3) are flagged.
3. ``train``: ``flowlib.bench.train.measure`` of the ``paper-mixing`` convexp model, batch 256:
   the plain baseline (float32, no compile, NCHW) and the fast configuration (bf16 conditioners,
   ``torch.compile``, channels-last) in the same process: images/s, ms/step (median of the
   timed steps after untimed warm-up ones, each synchronised: ``flowlib.bench.timing``), peak
   memory, parameter count, the fast/baseline ratio and the ratio to the official implementation
   (``flowlib.bench.gpu_plan.OFFICIAL``).
4. ``sample``: the same for density evaluation (no-grad forward, bits/dim) and sampling.
5. ``cifar`` (only with ``--data-dir`` holding CIFAR-10 batches): ``flowlib.train.train`` with
   the faster configuration of step 3 on the real data for the time that is left minus a margin
   (the number of steps is computed from step 3's ms/step and compile time), then train bpd
   (mean of the last logged steps) and test bpd over the test split of ``--data-dir`` (2,000
   images for the subset the README carries). Issue 7's goal is test bpd after *10 minutes*
   of training; this run is much shorter (a few minutes inside the budget), so its bpd is an
   early point of that curve, not the goal's number.

Time budget: ``--budget-s`` counts from the start of :func:`run`. Each step has a minimum
time (``flowlib.bench.gpu_plan.Sizes``); it starts only if it gets that minimum after reserving
the minimum of every later step that applies, and it is cut by ``SIGALRM`` at that deadline. A
step that is skipped or cut is recorded with its reason, and later steps still run. ``--quick``
shrinks everything for a CPU rehearsal (``QUICK``): the ``tiny`` preset, batch 16, 2 timed
steps, at most 20 training steps, and no ``torch.compile`` (compiling even the tiny model takes
~20 s on 2 cores).

Output: ``DIR/gpu_check.jsonl``, one JSON object per line, each with ``step`` (``env``,
``correctness``, ``train``, ``sample``, ``cifar``, ``summary``) and ``t_s`` (seconds since the
start); a skipped step has ``skipped``, a failed or cut one ``error``. The CIFAR run also leaves
``cifar_metrics.jsonl``, ``cifar_bpd_curve.png`` and a sample grid in DIR. Last, a
human-readable summary table on stdout (:mod:`flowlib.bench.gpu_report`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import torch

from flowlib import data
from flowlib.bench.gpu_correctness import conv_exp_errors, expm_errors, layer_errors, tf32
from flowlib.bench.gpu_plan import CONFIGS, FULL, OFFICIAL, QUICK, TARGET_RATIO, Run, StepTimeout, hard_limit
from flowlib.bench.gpu_report import summary_table
from flowlib.bench.train import measure
from flowlib.devices import DEVICES, DeviceError, resolve_device
from flowlib.layers import available

__all__ = ["add_arguments", "run", "run_steps", "STEPS"]

WARMUP_STEPS = 100  # learning-rate warm-up of the short CIFAR run (the paper's 10 epochs would fill it)


def step_env(run: Run, seconds: float) -> None:
    """Versions, the device and the TF32 settings as found."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "device": str(run.device),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if run.device.type == "cuda":
        props = torch.cuda.get_device_properties(run.device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 2),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    run.record("env", **info)


def step_correctness(run: Run, seconds: float) -> None:
    """Step 2 for each precision mode: strict float32, and TF32 on CUDA."""
    s = run.sizes
    modes = ("fp32", "tf32") if run.device.type == "cuda" else ("fp32",)
    for mode in modes:
        with tf32(mode == "tf32"):
            for i, name in enumerate(available()):
                try:
                    result = layer_errors(name, s.layer_shape, s.layer_batch, run.device, seed=i)
                except Exception as e:  # a layer that fails on the device is a finding, not a crash
                    result = {"error": _error(e), "flagged": ["error"]}
                run.record("correctness", precision=mode, layer=name, **result)
            run.record("correctness", precision=mode, layer="linalg.expm", **expm_errors(run.device, seed=100))
            run.record(
                "correctness",
                precision=mode,
                layer="functional.conv_exp",
                **conv_exp_errors(s.layer_shape, s.layer_batch, run.device, seed=101),
            )


def _config(run: Run, name: str) -> dict:
    """The ``measure()`` arguments of configuration ``name``; no ``torch.compile`` where the sizes say so."""
    cfg = dict(CONFIGS[name])
    cfg["compile"] = cfg["compile"] and run.sizes.compile
    return cfg


def _measure(run: Run, kind: str, name: str) -> dict:
    """``flowlib.bench.train.measure`` of one configuration; adds its wall time and the fixed cost."""
    s = run.sizes
    t = time.perf_counter()
    with tf32(True):  # as the official measurement (and flowlib.bench / flowlib.train on CUDA)
        result = measure(kind, s.preset, {}, s.batch_size, s.steps, s.warmup, run.device, **_config(run, name))
    result["wall_s"] = time.perf_counter() - t
    result["mixing"] = result.pop("config")["mixing"]
    if kind == "train":  # build, init and warm-up (compilation): what a training run pays before its first step
        result["overhead_s"] = max(0.0, result["wall_s"] - s.steps * result["ms_per_step"] / 1e3)
    return result


def step_train(run: Run, seconds: float) -> None:
    """Step 3: training steps, baseline then fast; ratios to each other and to the official code."""
    for name in CONFIGS:
        result = _measure(run, "train", name)
        run.throughput[name] = result
        run.record("train", config=name, **result, vs_official=result["images_per_s"] / OFFICIAL["train"])
        _free(run)
    base, fast = run.throughput["baseline"], run.throughput["fast"]
    run.record(
        "train",
        config="ratio",
        fast_over_baseline=fast["images_per_s"] / base["images_per_s"],
        fast_vs_official=fast["images_per_s"] / OFFICIAL["train"],
        params_vs_official=fast["n_params"] / OFFICIAL["n_params"],
        target=TARGET_RATIO,
        preset=run.sizes.preset,
    )


def step_sample(run: Run, seconds: float) -> None:
    """Step 4: density evaluation and sampling, baseline then fast."""
    results = {}
    for name in CONFIGS:
        r = results[name] = _measure(run, "sample", name)
        run.record(
            "sample",
            config=name,
            **r,
            eval_vs_official=r["eval_images_per_s"] / OFFICIAL["eval"],
            sample_vs_official=r["sample_images_per_s"] / OFFICIAL["sample"],
        )
        _free(run)
    base, fast = results["baseline"], results["fast"]
    run.record(
        "sample",
        config="ratio",
        eval_fast_over_baseline=fast["eval_images_per_s"] / base["eval_images_per_s"],
        sample_fast_over_baseline=fast["sample_images_per_s"] / base["sample_images_per_s"],
        target=TARGET_RATIO,
    )


def step_cifar(run: Run, seconds: float) -> None:
    """Step 5: ``flowlib.train.train`` with the faster configuration of step 3 for about ``seconds``."""
    from flowlib.train import TrainConfig, train

    s = run.sizes
    data_dir = run.args.data_dir
    n_train, n_test = len(data.load_cifar10(data_dir, "train")[0]), len(data.load_cifar10(data_dir, "test")[0])
    measured = {k: v for k, v in run.throughput.items() if k in CONFIGS}
    best = max(measured, key=lambda k: measured[k]["images_per_s"]) if measured else "fast"
    ms = measured[best]["ms_per_step"] if measured else OFFICIAL["ms_per_step"]
    overhead = measured[best]["overhead_s"] if measured else (120.0 if _config(run, best)["compile"] else 10.0)
    final = s.cifar_final_s + n_test / s.batch_size * ms / 1e3  # evaluation costs less than a training step
    steps = int((seconds - overhead - final) / (ms / 1e3))
    if s.max_train_steps is not None:
        steps = min(steps, s.max_train_steps)
    if steps < 1:
        why = f"{seconds:.0f} s leave no training step (overhead {overhead:.0f} s, {ms:.0f} ms/step)"
        run.record("cifar", skipped=why)
        return
    cfg = _config(run, best)
    spe = max(1, n_train // s.batch_size)  # steps per epoch
    work = Path(tempfile.mkdtemp(prefix="gpu_check_cifar_"))  # checkpoints (~0.7 GB for paper-mixing) stay out of DIR
    config = TrainConfig.for_preset(
        s.preset,
        dataset="cifar10",
        data_dir=str(data_dir),
        batch_size=s.batch_size,
        steps=steps,
        warmup_epochs=min(WARMUP_STEPS, steps) / spe,
        log_every=s.log_every,
        eval_every=10**9,  # only the final evaluation (test split of data_dir)
        save_every=10**9,  # only the final checkpoint
        iw_samples=0,  # no importance-weighted bound: it would cost more than the run
        on_nonfinite="skip",
        progress=False,
        device=run.device.type,
        conditioner_dtype=cfg["conditioner_dtype"],
        compile=cfg["compile"],
        channels_last=cfg["channels_last"],
        out=str(work),
    )
    plan = {"config": best, "planned_steps": steps, "n_train": n_train, "n_test": n_test, "seconds": round(seconds, 1)}
    try:
        summary = train(config)
        curve = _curve(work)
    except StepTimeout:  # keep what the metrics file holds, then report the cut
        run.record("cifar", **plan, partial=True, **_curve(work))
        raise
    finally:
        _keep_outputs(run, work)
        shutil.rmtree(work, ignore_errors=True)
    run.record(
        "cifar",
        **plan,
        steps=summary["step"],
        train_bpd=summary["train_bpd"],
        test_bpd=summary.get("test_bpd"),
        images_per_s=summary["images_per_s"],
        wall_s=summary["wall_s"],
        n_params=summary["n_params"],
        **curve,
    )


def _curve(work: Path) -> dict:
    """``curve``: [step, seconds, train bpd] of every metrics line of the CIFAR run so far."""
    path = work / "metrics.jsonl"
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    return {"curve": [[r["step"], r["time"], r["train_bpd"]] for r in lines if "train_bpd" in r and not r.get("final")]}


def _keep_outputs(run: Run, work: Path) -> None:
    """Copy the CIFAR run's metrics, bpd curve and T=0.7 sample grid into DIR (small files only)."""
    for src, dest in (("metrics.jsonl", "cifar_metrics.jsonl"), ("bpd_curve.png", "cifar_bpd_curve.png")):
        if (work / src).exists():
            shutil.copyfile(work / src, run.out / dest)
    for grid in sorted((work / "samples").glob("*_T0.70.png"))[-1:]:
        shutil.copyfile(grid, run.out / "cifar_samples_T0.70.png")


STEPS = {
    "env": step_env,
    "correctness": step_correctness,
    "train": step_train,
    "sample": step_sample,
    "cifar": step_cifar,
}


def _error(e: BaseException) -> str:
    """``Type: first line of the message (at file:line)`` of an exception."""
    frames = traceback.extract_tb(e.__traceback__)
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {message[:300]}{at}"


def _free(run: Run) -> None:
    """Drop models, compiled graphs and cached device memory between steps and measurements."""
    torch.compiler.reset()
    gc.collect()
    if run.device.type == "cuda":
        torch.cuda.empty_cache()


def _cannot_run(run: Run, step: str) -> str | None:
    """Why ``step`` cannot run at all (None: it can)."""
    if step == "cifar":
        if run.args.data_dir is None:
            return "no --data-dir given"
        try:
            data.load_cifar10(run.args.data_dir, "test")
        except data.DataError as e:
            return f"--data-dir: {e}"
    return None


def run_steps(run: Run) -> None:
    """Each step in order, inside its share of the budget (see the module docstring)."""
    s = run.sizes
    reasons = {step: _cannot_run(run, step) for step in STEPS}
    names = list(STEPS)
    for i, step in enumerate(names):
        if reasons[step]:
            run.record(step, skipped=reasons[step])
            continue
        reserve = sum(s.min_s[later] for later in names[i + 1 :] if not reasons[later])
        seconds = run.left() - reserve - s.final_margin_s
        if seconds < s.min_s[step]:
            run.record(step, skipped=f"{max(seconds, 0):.1f} s left for it, it needs {s.min_s[step]} s")
            continue
        try:
            with hard_limit(seconds):
                STEPS[step](run, seconds)
        except StepTimeout as e:
            run.record(step, error=str(e), timed_out=True)
        except Exception as e:  # one failing step must not cost the others
            traceback.print_exc()
            run.record(step, error=_error(e))
        finally:
            _free(run)


def add_arguments(parser: argparse.ArgumentParser, name: str = "gpu") -> None:
    """Flags of ``python -m flowlib.bench gpu``."""
    parser.epilog = "See the docstring of flowlib.bench.gpu and benchmarks/README.md for what is measured."
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--out", default="runs/gpu_check", help="directory of gpu_check.jsonl (default runs/gpu_check)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no torch.compile: a CPU rehearsal (< 1 min)")
    parser.add_argument("--budget-s", dest="budget_s", type=float, default=540.0, help="total seconds (default 540)")
    parser.add_argument("--data-dir", dest="data_dir", default=None, help="CIFAR-10 batches for step 5 (else skipped)")


def run(args: argparse.Namespace) -> int:
    """Every step inside ``--budget-s``, then the ``summary`` record and the summary table on stdout."""
    if args.budget_s <= 0:
        raise SystemExit(f"error: --budget-s must be positive, got {args.budget_s}")
    try:
        device = resolve_device(args.device)
    except DeviceError as err:
        raise SystemExit(f"error: {err}") from None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as flowlib.bench and flowlib.train
    state = Run(args, QUICK if args.quick else FULL, device)
    try:
        run_steps(state)
    finally:
        records = state.records
        state.record(
            "summary",
            budget_s=args.budget_s,
            elapsed_s=round(state.elapsed(), 2),
            flagged=[f"{r['precision']}:{r['layer']}" for r in records if r.get("flagged")],
            skipped_steps=[r["step"] for r in records if "skipped" in r and "layer" not in r],
            failed_steps=[r["step"] for r in records if "error" in r and "layer" not in r],
        )
        state.file.close()
    print(summary_table(state.records), flush=True)
    return 0
