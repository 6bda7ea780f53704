"""The one script a lent GPU runs: environment, GPU correctness, throughput against issue 7, a short CIFAR-10 run.

Usage, from the repository root (on the device machine: see ``benchmarks/README.md``)::

    PYTHONPATH=. python3 benchmarks/gpu_check.py --device cuda --out $OUT --data-dir .gpu/cifar-10-batches-py
    python benchmarks/gpu_check.py --device cpu --quick --out runs/gpu_check     # CPU rehearsal, < 1 minute

What is measured, in this order:

1. ``env``: torch / CUDA / cuDNN versions, device name, compute capability, memory,
   multiprocessors, and the TF32 settings as found (steps 3-5 then turn TF32 on, as the
   official measurement and ``flowlib.train`` do).
2. ``correctness``: every registered layer (``flowlib.layers.available()``, default
   arguments; one that does not build is recorded as skipped) for samples of shape
   (12, 16, 16), batch 8, after a data-dependent-init forward and ``perturb_(layer, 0.05)``,
   in eval mode: float32 on the device against float64 on the CPU with the same parameters.
   Relative errors ``||a - ref|| / ||ref||`` of ``y`` and of the log-determinant (denominator
   at least 1: log-dets near 0 are compared absolutely), and the inverse round trip
   ``||inverse(y) - x|| / ||x||`` on the device. Also ``flowlib.linalg.expm`` against float64
   ``torch.linalg.matrix_exp`` (12 matrices 64 x 64, 1-norms 0.01 .. 30) and
   ``flowlib.functional.conv_exp`` against float64 on the CPU (kernel norm bound 0.5, as the
   layers use). On CUDA all of it twice: strict float32 (TF32 off) and TF32 on (what training
   uses). Values over :data:`FLAG` are flagged.
3. ``train``: ``flowlib.bench.train.measure`` of the ``paper-mixing`` convexp model, batch 256:
   the plain baseline (float32, no compile, NCHW) and the fast configuration (bf16 conditioners,
   ``torch.compile``, channels-last) in the same process: images/s, ms/step (median of the
   timed steps after untimed warm-up ones, each synchronised), peak memory, parameter count,
   the fast/baseline ratio and the ratio to the official implementation (:data:`OFFICIAL`).
4. ``sample``: the same for density evaluation (no-grad forward, bits/dim) and sampling.
5. ``cifar`` (only with ``--data-dir`` holding CIFAR-10 batches): ``flowlib.train.train`` with
   the faster configuration of step 3 on the real data for the time that is left minus a margin
   (the number of steps is computed from step 3's ms/step and compile time), then train bpd
   (mean of the last logged steps) and test bpd over the test split of ``--data-dir`` (2,000
   images for the subset the README carries). Issue 7's goal is test bpd after *10 minutes*
   of training; this run is much shorter (a few minutes inside the budget), so its bpd is an
   early point of that curve, not the goal's number.

Time budget: ``--budget-s`` counts from the start of :func:`main`. Each step has a minimum
time (:class:`Sizes`); it starts only if it gets that minimum after reserving the minimum of
every later step that applies, and it is cut by ``SIGALRM`` at that deadline. A step that is
skipped or cut is recorded with its reason, and later steps still run. ``--quick`` shrinks
everything for a CPU rehearsal: the ``tiny`` preset, batch 16, 2 timed steps, at most 20
training steps, and no ``torch.compile`` (compiling even the tiny model takes ~20 s on 2 cores).

Output: ``DIR/gpu_check.jsonl``, one JSON object per line, each with ``step`` (``env``,
``correctness``, ``train``, ``sample``, ``cifar``, ``summary``) and ``t_s`` (seconds since the
start); a skipped step has ``skipped``, a failed or cut one ``error``. The CIFAR run also leaves
``cifar_metrics.jsonl``, ``cifar_bpd_curve.png`` and a sample grid in DIR. Last, a
human-readable summary table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flowlib import data, functional, linalg
from flowlib.bench.train import measure
from flowlib.layers import available, make
from flowlib.layers.convexp import RHO
from flowlib.testing import perturb_

__all__ = ["main", "Sizes", "FULL", "QUICK", "OFFICIAL", "FLAG"]

# Issue 7, item 4: the official implementation of the paper-mixing convexp model on one H100
# (55.9 M parameters, batch 256, Adamax, 6 series terms, TF32 on, PyTorch 2.11).
OFFICIAL = {"train": 493.0, "eval": 1712.0, "sample": 1872.0, "n_params": 55.9e6, "ms_per_step": 519.0}
TARGET_RATIO = 2.0  # flowlib must reach at least twice the official rates
FLAG = 1e-3  # relative error above which a correctness value is flagged
PERTURB = 0.05
WARMUP_STEPS = 100  # learning-rate warm-up of the short CIFAR run (the paper's 10 epochs would fill it)

# A layer whose evaluation log-det is a stochastic estimate whose probes are drawn in the input's
# dtype cannot match a float64 run: its log-det is compared with float32 on the CPU instead.
LOGDET_VS_FLOAT32 = {
    "residual": "Hutchinson probes drawn in the input dtype above exact_max_dim=1024 (12x16x16 = 3072)",
}


@dataclass(frozen=True)
class Sizes:
    """Everything ``--quick`` shrinks; ``min_s`` is the least time worth starting each step with."""

    preset: str
    batch_size: int
    steps: int  # timed steps of the throughput measurements
    warmup: int  # untimed steps first (compilation, cuDNN autotuning)
    compile: bool  # part of the fast configuration
    layer_shape: tuple = (12, 16, 16)
    layer_batch: int = 8
    max_train_steps: int | None = None  # cap of the CIFAR run (None: as many as the time allows)
    log_every: int = 10  # CIFAR run: steps between metrics lines (train bpd is their mean)
    final_margin_s: float = 5.0  # kept free at the end of the budget for the summary
    cifar_final_s: float = 20.0  # CIFAR run after its last step: checkpoint, evaluation, samples, plot
    min_s: dict = field(default_factory=dict)


FULL = Sizes(
    "paper-mixing",
    256,
    steps=20,
    warmup=5,
    compile=True,
    min_s={"env": 0, "correctness": 20, "train": 90, "sample": 60, "cifar": 120},
)
QUICK = Sizes(
    "tiny",
    16,
    steps=2,
    warmup=1,
    compile=False,
    max_train_steps=20,
    log_every=5,
    final_margin_s=0.5,
    cifar_final_s=2.0,
    min_s={"env": 0, "correctness": 1, "train": 1, "sample": 1, "cifar": 3},
)


# --------------------------------------------------------------------------------------------
# Budget and records
# --------------------------------------------------------------------------------------------


class StepTimeout(BaseException):
    """Raised in the main thread by SIGALRM when a step reaches its deadline.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that the ``except Exception`` of a
    step's per-layer loop, or of library code, cannot swallow the cut.
    """


@contextlib.contextmanager
def hard_limit(seconds: float):
    """Raise :class:`StepTimeout` inside the block after ``seconds`` (SIGALRM, main thread only)."""

    def on_alarm(signum, frame):
        raise StepTimeout(f"cut at its deadline after {seconds:.1f} s (time budget)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Run:
    """The state the steps share: settings, device, clock, the JSONL file and step 3's results."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, device: torch.device):
        self.args, self.sizes, self.device = args, sizes, device
        self.t0 = time.perf_counter()
        self.end = self.t0 + args.budget_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.file = open(self.out / "gpu_check.jsonl", "w")
        self.records: list[dict] = []
        self.throughput: dict[str, dict] = {}  # "baseline" / "fast" -> train result (+ "overhead_s")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.end - time.perf_counter()

    def record(self, step: str, **fields) -> dict:
        """Append one JSON line (flushed at once, so a cut run keeps what it measured) and echo it."""
        rec = {"step": step, **fields, "t_s": round(self.elapsed(), 2)}
        self.records.append(rec)
        self.file.write(json.dumps(rec, default=str) + "\n")
        self.file.flush()
        brief = {k: _fmt(v) for k, v in rec.items() if k not in ("step", "t_s") and not isinstance(v, (dict, list))}
        print(f"[{rec['t_s']:7.1f} s] {step}: " + ", ".join(f"{k}={v}" for k, v in brief.items()), flush=True)
        return rec


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _rel(a: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """``||a - ref|| / max(||ref||, floor)`` in float64 on the CPU (``a`` may live on the device)."""
    ref = ref.detach().double().cpu()
    return float((a.detach().double().cpu() - ref).norm() / max(float(ref.norm()), floor, 1e-300))


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA matmuls and convolutions inside the block (the previous settings come back)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --------------------------------------------------------------------------------------------
# 1. Environment
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# 2. Correctness on the device
# --------------------------------------------------------------------------------------------


def layer_errors(name: str, shape: tuple, batch: int, device: torch.device, seed: int) -> dict:
    """float32 on ``device`` against float64 on the CPU, same parameters; see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    try:
        ref = make(name, shape=shape).double()
    except (TypeError, ValueError) as e:
        return {"skipped": f"does not build with default arguments for shape {shape}: {e}"}
    with torch.no_grad():
        ref.train()(torch.randn(batch, *shape, generator=gen, dtype=torch.float64))  # data-dependent init
        perturb_(ref, PERTURB, gen)
        ref.eval()
        x64 = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)  # [B, C, H, W]
        y64, ld64 = ref(x64)
        layer = copy.deepcopy(ref).to(device=device, dtype=torch.float32)
        x = x64.to(device=device, dtype=torch.float32)
        y, ld = layer(x)
        x_back = layer.inverse(y)
        result = {"y_rel": _rel(y, y64), "logdet_rel": _rel(ld, ld64, 1.0), "inverse_rel": _rel(x_back, x)}
        if name in LOGDET_VS_FLOAT32:
            _, ld32 = copy.deepcopy(ref).float()(x64.float())
            result.update(logdet_rel=_rel(ld, ld32, 1.0), logdet_reference=f"float32 cpu: {LOGDET_VS_FLOAT32[name]}")
    result["flagged"] = sorted(k for k in ("y_rel", "logdet_rel", "inverse_rel") if not result[k] <= FLAG)
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

    rel, torch_rel = worst(linalg.expm(A32)), worst(torch.linalg.matrix_exp(A32))
    return {"expm_rel": rel, "torch_matrix_exp_rel": torch_rel, "flagged": ["expm_rel"] if not rel <= FLAG else []}


def conv_exp_errors(shape: tuple, batch: int, device: torch.device, seed: int) -> dict:
    """``flowlib.functional.conv_exp`` and its inverse in float32 on ``device`` vs float64 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    C = shape[0]
    x64 = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)  # [B, C, H, W]
    kernel = torch.randn(C, C, 3, 3, generator=gen, dtype=torch.float64)
    H, W = shape[1:]
    rho = RHO  # ||M||_2 <= rho, as the convexp layer keeps it (tight FFT bound)
    kernel = kernel * (rho / functional.conv_spectral_norm_bound(kernel, H, W))
    terms = functional.conv_exp_terms(rho, 1e-8)
    y64 = functional.conv_exp(x64, kernel, terms=terms)
    x, k32 = x64.to(device, torch.float32), kernel.to(device, torch.float32)
    y = functional.conv_exp(x, k32, terms=terms)
    x_back = functional.inv_conv_exp(y, k32, terms=terms)
    result = {"terms": terms, "y_rel": _rel(y, y64), "inverse_rel": _rel(x_back, x)}
    result["flagged"] = sorted(k for k in ("y_rel", "inverse_rel") if not result[k] <= FLAG)
    return result


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


# --------------------------------------------------------------------------------------------
# 3. and 4. Throughput
# --------------------------------------------------------------------------------------------

CONFIGS = {  # name -> measure() arguments; "fast" also drops compile under --quick
    "baseline": dict(conditioner_dtype="float32", compile=False, channels_last=False),
    "fast": dict(conditioner_dtype="bfloat16", compile=True, channels_last=True),
}


def _config(run: Run, name: str) -> dict:
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


# --------------------------------------------------------------------------------------------
# 5. A short training run on CIFAR-10
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Summary table
# --------------------------------------------------------------------------------------------


def _correctness_lines(records: list[dict]) -> list[str]:
    corr = [r for r in records if r["step"] == "correctness" and "layer" in r]
    if not corr:
        return []
    modes = list(dict.fromkeys(r["precision"] for r in corr))
    columns = [(m, key) for m in modes for key in ("y_rel", "logdet_rel", "inverse_rel")]
    lines = [
        f"\ncorrectness: float32 on the device vs float64 on the CPU, relative errors ('!' above {FLAG:g})",
        f"{'layer':22s}" + "".join(f"{m + ' ' + key[:-4]:>15s}" for m, key in columns),
    ]
    for layer in dict.fromkeys(r["layer"] for r in corr):
        by_mode = {r["precision"]: r for r in corr if r["layer"] == layer}
        cells = []
        for m, key in columns:
            r = by_mode.get(m, {})
            shown = "expm_rel" if key == "y_rel" and "expm_rel" in r else key  # expm has one error, in the y column
            value, flagged = r.get(shown), r.get("flagged", ())
            mark = "!" if shown in flagged else "*" if shown == "logdet_rel" and "logdet_reference" in r else " "
            cells.append(f"{value:14.2e}{mark}" if isinstance(value, float) else f"{'-':>14s} ")
        r = next(iter(by_mode.values()))
        note = r.get("skipped") or r.get("error") or ""
        lines.append(f"{layer:22s}" + "".join(cells) + (f"  {note[:70]}" if note else ""))
    if any("logdet_reference" in r for r in corr):
        lines.append("* log-det compared with float32 on the CPU: a stochastic estimate (logdet_reference in the JSON)")
    flagged = sorted({r["layer"] for r in corr if r.get("flagged")})
    lines.append(f"flagged: {', '.join(flagged)}" if flagged else "nothing flagged")
    return lines


def _throughput_lines(records: list[dict]) -> list[str]:
    rows = []  # (what, record, images/s key, ms key, official key)
    for r in records:
        if r["step"] == "train" and r.get("config") in CONFIGS:
            rows.append(("train", r, "images_per_s", "ms_per_step", "train"))
        if r["step"] == "sample" and r.get("config") in CONFIGS:
            rows.append(("eval", r, "eval_images_per_s", "ms_per_eval_batch", "eval"))
            rows.append(("sample", r, "sample_images_per_s", "ms_per_sample_batch", "sample"))
    if not rows:
        return []
    lines = [
        f"\nthroughput (official H100 figures of issue 7: train {OFFICIAL['train']:.0f}, eval {OFFICIAL['eval']:.0f}, "
        f"sample {OFFICIAL['sample']:.0f} img/s; target x{TARGET_RATIO:g})",
        f"{'':7s}{'configuration':34s}{'img/s':>9s}{'ms/batch':>10s}{'vs official':>13s}"
        f"{'peak GiB':>10s}{'params':>13s}",
    ]
    for what, r, rate, ms, official in sorted(rows, key=lambda row: ["train", "eval", "sample"].index(row[0])):
        label = f"{r['config']} ({'fp32' if r['conditioner_dtype'] == 'float32' else 'bf16'}, "
        label += f"{'compile' if r['compile'] else 'eager'}, "
        label += f"{'NHWC' if r['channels_last'] else 'NCHW'})"
        peak = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.2f}"
        lines.append(
            f"{what:7s}{label:34s}{r[rate]:9.1f}{r[ms]:10.2f}{r[rate] / OFFICIAL[official]:12.2f}x{peak:>10s}"
            f"{r['n_params']:13,d}"
        )
    for r in records:
        if r.get("config") == "ratio":
            ratios = {k: v for k, v in r.items() if k not in ("step", "t_s", "config", "target", "preset")}
            lines.append(f"{r['step']} ratios: " + ", ".join(f"{k} {_fmt(v)}" for k, v in ratios.items()))
    return lines


def summary_table(records: list[dict]) -> str:
    """The human-readable summary of all records (printed last, so it ends the device's output)."""
    env = next((r for r in records if r["step"] == "env" and "name" in r), {})
    lines = [
        f"== gpu_check on {env.get('name', '?')} (capability {env.get('capability', '-')}, "
        f"{env.get('memory_gib', '-')} GiB), torch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}; "
        f"TF32 as found: matmul {env.get('tf32_matmul')}, cuDNN {env.get('tf32_cudnn')}"
    ]
    lines += _correctness_lines(records)
    lines += _throughput_lines(records)
    for r in records:
        if r["step"] == "cifar" and "steps" in r:
            test = "-" if r["test_bpd"] is None else f"{r['test_bpd']:.4f}"
            lines.append(
                f"\ncifar: {r['config']} configuration, {r['steps']} steps in {r['wall_s']:.1f} s "
                f"({r['images_per_s']:.0f} img/s, {r['n_train']} train images): train bpd {r['train_bpd']:.4f}, "
                f"test bpd {test} ({r['n_test']} test images). A shortened run: issue 7's goal is test bpd "
                "<= 3.50 after 10 minutes of training."
            )
        if r["step"] == "cifar" and r.get("partial") and r["curve"]:
            step, seconds, bpd = r["curve"][-1]
            lines.append(
                f"\ncifar (cut): {r['config']} configuration, train bpd {bpd:.4f} at step {step} ({seconds:.0f} s)"
            )
    lines.append("")
    for r in records:
        if "layer" not in r and ("skipped" in r or "error" in r):
            lines.append(f"{r['step']}: {'skipped' if 'skipped' in r else 'error'}: {r.get('skipped') or r['error']}")
    done = next((r for r in records if r["step"] == "summary"), {})
    lines.append(f"total {done.get('elapsed_s', '?')} s of a {done.get('budget_s', '?')} s budget")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_check.py",
        description=__doc__.splitlines()[0],
        epilog="See the module docstring and benchmarks/README.md for what is measured.",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--out", default="runs/gpu_check", help="directory of gpu_check.jsonl (default runs/gpu_check)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no torch.compile: a CPU rehearsal (< 1 min)")
    parser.add_argument("--budget-s", dest="budget_s", type=float, default=540.0, help="total seconds (default 540)")
    parser.add_argument("--data-dir", dest="data_dir", default=None, help="CIFAR-10 batches for step 5 (else skipped)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device is available (use --device cpu)")
    if args.budget_s <= 0:
        raise SystemExit(f"error: --budget-s must be positive, got {args.budget_s}")
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as flowlib.bench and flowlib.train
    run = Run(args, QUICK if args.quick else FULL, device)
    try:
        run_steps(run)
    finally:
        flagged = [f"{r['precision']}:{r['layer']}" for r in run.records if r.get("flagged")]
        run.record(
            "summary",
            budget_s=args.budget_s,
            elapsed_s=round(run.elapsed(), 2),
            flagged=flagged,
            skipped_steps=[r["step"] for r in run.records if "skipped" in r and "layer" not in r],
            failed_steps=[r["step"] for r in run.records if "error" in r and "layer" not in r],
        )
        run.file.close()
    print(summary_table(run.records), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
