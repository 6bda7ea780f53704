"""The training run: :func:`train` reads top to bottom, set-up, loop, final evaluation.

Set-up and process-wide switches are :mod:`~flowlib.train.runtime`'s, the run directory's
files :mod:`~flowlib.train.outputs`', checkpoints :mod:`~flowlib.train.state`'s, signals
:mod:`~flowlib.train.signals`'; this module only sequences them.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from flowlib import data, precision, rundir
from flowlib.models import FlowModel, ModelConfig, build_model

from .config import ConfigError, DivergedError, NonFiniteError, TrainConfig, lr_factor, resume_checkpoint
from .evaluate import evaluate, first_nonfinite
from .outputs import RunFiles, plot_curves
from .runtime import Runtime, runtime
from .signals import StopRequests
from .state import Checkpointer, Progress

__all__ = ["train"]


def train(cfg: TrainConfig) -> dict:
    """Run ``cfg`` and return a summary dict (also written to ``out/summary.json``).

    The summary holds ``step``, ``train_bpd``, ``test_bpd`` (full test set), ``test_bpd_iw``
    (flow dequantization), ``best_test_bpd``, ``images_per_s``, ``wall_s``, ``n_params``,
    ``interrupted`` (stopped by a signal; ``aborted`` too after a second Ctrl-C, which writes
    nothing more), ``out``, and ``model`` (the trained :class:`flowlib.models.FlowModel`, not
    written to disk). Raises :class:`NonFiniteError` when the loss diverges and
    ``on_nonfinite="stop"`` (:class:`DivergedError` past the divergence bound);
    :class:`ConfigError` / :class:`flowlib.data.DataError` for bad settings, a busy or unsafe
    ``out`` or a damaged checkpoint; :class:`flowlib.rundir.WriteError` when an output cannot be
    written; ``KeyboardInterrupt`` for a second Ctrl-C during start-up (nothing trained).

    >>> import tempfile
    >>> cfg = TrainConfig.for_preset("tiny", steps=2, eval_every=2, n_samples=4, progress=False,
    ...                              out=tempfile.mkdtemp() + "/run")
    >>> summary = train(cfg)  # doctest: +ELLIPSIS
    done: step 2 | ...
    >>> summary["step"], summary["interrupted"]
    (2, False)
    """
    cfg.validate()
    out = rundir.check_out(cfg.out)
    t_start = time.perf_counter()
    stop = StopRequests()  # from here on a signal ends the run cleanly, also during start-up
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(stop)  # the previous signal handlers come back at the end
            if int(os.environ.get("RANK", "0")) == 0:
                stack.enter_context(rundir.RunLock(out))  # first: a second trainer stops here
            ckpt = resume_checkpoint(cfg, out)
            rt = stack.enter_context(runtime(cfg))  # device, DDP, TF32, determinism; restored at the end
            if rt.master:
                rundir.prepare_out(out, cfg.resume, cfg.overwrite)
            train_x, test_x, batches = _data(cfg, rt)
            model = _model(cfg, rt, ckpt, train_x)
            opt, sched = _optimizer(cfg, model, batches.steps_per_epoch)
            saver = Checkpointer(cfg, rt, model, opt, sched, batches)
            progress = saver.restore(ckpt) if ckpt is not None else Progress()
            net = _wrapped(cfg, rt, model)
            files = stack.enter_context(RunFiles(out, rt.master, progress.step if ckpt else None))
            files.write_json("config.json", _run_info(cfg, rt, model, batches.steps_per_epoch))
            bar = stack.enter_context(_progress_bar(cfg, rt, progress.step))
            stack.callback(setattr, stop, "quiet", True)  # closing files: signals ignored, everything written
            run = _Run(
                cfg=cfg, out=out, rt=rt, model=model, opt=opt, test_x=test_x, batch=batches.batch_size,
                steps_per_epoch=batches.steps_per_epoch, saver=saver, files=files, stop=stop, bar=bar,
                progress=progress, t_start=t_start,
            )  # fmt: skip

            # ---- the loop: one optimizer step per batch until cfg.steps or a stop request
            params = [p for p in model.parameters() if p.requires_grad]
            model.train()
            stop.started = True
            try:
                while progress.step < cfg.steps:
                    if stop.stop and not rt.ddp:  # a step boundary: nothing of the next step is drawn yet
                        progress.interrupted = True
                        break
                    t0 = time.perf_counter()
                    x = next(batches)
                    if rt.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    loss = net(x).mean()  # bpd of the batch
                    loss.backward()
                    grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                    # The NaN/Inf guard: one small tensor, one device sync per step (and one all-reduce in DDP).
                    loss_v, grad_v, stop_v = rt.mean_over_ranks([loss.detach(), grad_norm, float(stop.stop)])
                    if math.isfinite(loss_v) and math.isfinite(grad_v):
                        opt.step()
                        run.window.add(loss_v, grad_v)
                        progress.skips = 0
                    else:
                        run.nonfinite_step(x, loss_v, grad_v)  # raises, or logs and skips the batch
                    opt.zero_grad(set_to_none=True)
                    sched.step()
                    progress.step += 1
                    progress.train_time += time.perf_counter() - t0
                    bar.update(1)
                    run.log_and_evaluate()
                    if progress.step % cfg.save_every == 0 or progress.step == cfg.steps or stop_v > 0:
                        run.save_last()
                    if cfg.sample_every and progress.step % cfg.sample_every == 0:
                        files.save_samples(model, cfg, progress.step, rt.rng_devices)
                    if stop_v > 0:
                        progress.interrupted = True
                        break
                if (progress.interrupted or progress.step == cfg.steps) and progress.last_saved != progress.step:
                    run.save_last()  # e.g. --steps 0: a step-0 checkpoint
            except KeyboardInterrupt:  # a second Ctrl-C: abort now, write nothing more
                progress.interrupted = progress.aborted = True
            bar.close()
            return run.finish(ckpt["step"] if ckpt else 0)
    except KeyboardInterrupt:
        if not stop.started:
            last = out / "last.pt"
            kept = f"{last} is unchanged" if last.exists() else "no checkpoint was written"
            message = f"aborted during start-up: nothing was trained; {kept}"
            print(message, file=sys.stderr)
            raise KeyboardInterrupt(message) from None
        raise


# --------------------------------------------------------------------------------------------
# Set-up steps
# --------------------------------------------------------------------------------------------


def _data(cfg: TrainConfig, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor, data.GPUBatches]:
    """Train and test images (rank 0 downloads first if asked), the test set on the device, the batches."""
    if rt.ddp and not rt.master:
        torch.distributed.barrier()
    train_x, _ = data.load_dataset(cfg.dataset, cfg.data_dir, "train", download=cfg.download)
    test_x, _ = data.load_dataset(cfg.dataset, cfg.data_dir, "test")
    if rt.ddp and rt.master:
        torch.distributed.barrier()
    batch = cfg.batch_size // rt.world  # per rank
    if batch > len(train_x) // rt.world:
        raise ConfigError(
            f"batch_size (--batch-size) {cfg.batch_size} is larger than the {len(train_x)} {cfg.dataset} "
            f"training images; use at most {len(train_x) // rt.world * rt.world}"
        )
    batches = data.GPUBatches(
        train_x, batch, device=rt.device, flip=cfg.flip, seed=cfg.seed, rank=rt.rank, world_size=rt.world
    )
    return train_x, test_x.to(rt.device), batches


def _model(cfg: TrainConfig, rt: Runtime, ckpt: dict | None, train_x: torch.Tensor) -> FlowModel:
    """The model of ``cfg`` (of the checkpoint on resume) on the device, its conditioner precision set.

    A fresh model gets actnorm's data-dependent init on every rank before DDP wraps it
    (actnorm all-reduces its statistics).
    """
    torch.manual_seed(cfg.seed)
    try:
        if ckpt is not None:
            model = build_model(ModelConfig(**ckpt["model_config"]))
        else:
            overrides, shape = dict(cfg.model), tuple(train_x.shape[1:])
            if tuple(overrides.get("image_shape", shape)) != shape:
                raise ConfigError(
                    f"image_shape {overrides['image_shape']} does not match the {cfg.dataset} "
                    f"images {shape}; leave image_shape out, it is taken from the data"
                )
            model = build_model(cfg.preset, **{**overrides, "image_shape": shape})
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"bad model configuration (preset {cfg.preset!r}, overrides {cfg.model}): {e}") from e
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    precision.set_conditioner_dtype(model, cfg.conditioner_dtype)
    torch.manual_seed(cfg.seed + rt.rank)  # per-rank dequantization noise
    if ckpt is None:
        n_init = min(len(train_x) // rt.world, max(cfg.batch_size // rt.world, 256))
        init = data.GPUBatches(train_x, n_init, device=rt.device, seed=cfg.seed + 1, rank=rt.rank, world_size=rt.world)
        with torch.no_grad():
            model.train()(next(init))
    return model


def _optimizer(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int):
    """Adamax (official) or AdamW, and the per-step schedule :func:`lr_factor`."""
    if cfg.optimizer == "adamax":
        opt = torch.optim.Adamax(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps_per_epoch))


def _wrapped(cfg: TrainConfig, rt: Runtime, model: nn.Module) -> nn.Module:
    """The model as the loop calls it: compiled with ``--compile``, in DDP under torchrun."""
    fwd = torch.compile(model) if cfg.compile else model
    if not rt.ddp:
        return fwd
    return nn.parallel.DistributedDataParallel(fwd, device_ids=[rt.device] if rt.device.type == "cuda" else None)


def _run_info(cfg: TrainConfig, rt: Runtime, model: FlowModel, steps_per_epoch: int) -> dict:
    """``config.json``: the settings and where the run executes (a record only; last.pt is the truth)."""
    return {
        "train": asdict(cfg),
        "model": asdict(model.config),
        "n_params": sum(p.numel() for p in model.parameters()),
        "world_size": rt.world,
        "device": str(rt.device),
        "steps_per_epoch": steps_per_epoch,
        "torch": torch.__version__,
    }


def _progress_bar(cfg: TrainConfig, rt: Runtime, step: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.steps, initial=step, disable=not (cfg.progress and rt.master), unit="step", dynamic_ncols=True
    )


# --------------------------------------------------------------------------------------------
# What the loop does besides the step itself
# --------------------------------------------------------------------------------------------


class _Window:
    """Sums of the train bpd and gradient norm since the last log line."""

    def __init__(self):
        self.loss, self.grad, self.n, self.t0 = 0.0, 0.0, 0, time.perf_counter()

    def add(self, loss: float, grad: float) -> None:
        self.loss, self.grad, self.n = self.loss + loss, self.grad + grad, self.n + 1


@dataclass
class _Run:
    """The parts of a run the loop's bookkeeping needs: logging, evaluation, checkpoints, the final summary."""

    cfg: TrainConfig
    out: Path
    rt: Runtime
    model: FlowModel
    opt: torch.optim.Optimizer
    test_x: torch.Tensor  # [N, C, H, W] uint8, on the device
    batch: int  # images per rank and step
    steps_per_epoch: int
    saver: Checkpointer
    files: RunFiles
    stop: StopRequests
    bar: object  # the tqdm bar
    progress: Progress
    t_start: float
    window: _Window = field(default_factory=_Window)

    @property
    def bound(self) -> float:
        """The divergence bound: ``diverge_factor`` x the uniform model's ``n_bits`` bits/dim."""
        return self.cfg.diverge_factor * self.model.config.n_bits

    def _kept(self) -> str:
        p = self.progress
        return f"{self.out / 'last.pt'} (step {p.last_saved})" if p.last_saved is not None else "none was written"

    def nonfinite_step(self, x: torch.Tensor, loss: float, grad: float) -> None:
        """Log a non-finite loss or gradient; raise :class:`NonFiniteError` (stop mode, or too many skips)."""
        p, cfg = self.progress, self.cfg
        p.skips += 1
        where = first_nonfinite(self.model, x) if self.rt.master else ""
        msg = (
            f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} at step {p.step + 1} "
            f"(loss {loss}, grad norm {grad}); {where}"
        )
        self.files.log({"step": p.step + 1, "event": "nonfinite", "message": msg}, p.step)
        if cfg.on_nonfinite == "stop" or p.skips > cfg.max_skips:
            kept = (
                f"last good checkpoint: {self.out / 'last.pt'} (step {p.last_saved})"
                if p.last_saved is not None
                else "no checkpoint was written before it"
            )
            reason = "" if cfg.on_nonfinite == "stop" else f" ({p.skips} in a row, max_skips {cfg.max_skips})"
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteError(f"{msg}{reason}; stopped, {kept}")
        self.bar.write(f"skipping batch: {msg}")

    def log_and_evaluate(self) -> None:
        """Every ``log_every`` / ``eval_every`` steps: a metrics line, the divergence guard, best.pt."""
        p, cfg = self.progress, self.cfg
        log_now = p.step % cfg.log_every == 0 or p.step == cfg.steps
        eval_now = p.step % cfg.eval_every == 0 or p.step == cfg.steps
        if not (log_now or eval_now):
            return
        now = time.perf_counter()
        record = {
            "step": p.step,
            "epoch": round(p.step / self.steps_per_epoch, 4),
            "time": round(now - self.t_start, 3),
        }
        if log_now:
            w = self.window
            p.train_bpd = w.loss / max(w.n, 1)
            images = cfg.batch_size * (p.step % cfg.log_every or cfg.log_every)
            record.update(
                train_bpd=p.train_bpd,
                images_per_s=images / (now - w.t0),
                lr=self.opt.param_groups[0]["lr"],
                grad_norm=w.grad / max(w.n, 1),
            )
            self.bar.set_postfix(bpd=f"{p.train_bpd:.3f}", img_s=f"{images / (now - w.t0):.0f}", refresh=False)
            p.diverge_streak = p.diverge_streak + 1 if cfg.diverge_factor > 0 and p.train_bpd > self.bound else 0
        if eval_now:
            sub = self.test_x[: cfg.eval_images] if cfg.eval_images else self.test_x
            record["test_bpd"] = evaluate(self.model, sub, self.batch, self.rt, cfg.seed)
        self.files.log(record, p.step)
        if log_now:
            self.window = _Window()
        if p.diverge_streak >= cfg.diverge_logs:
            raise DivergedError(
                f"diverged: train bpd {p.train_bpd:.4g} at step {p.step} is above {self.bound:g} "
                f"(diverge_factor {cfg.diverge_factor:g} x the uniform model's {self.model.config.n_bits} "
                f"bits/dim) for {p.diverge_streak} logs in a row; stopped without writing a checkpoint of it "
                f"(last good checkpoint: {self._kept()}). Lower --lr, set --grad-clip, or pass "
                "--diverge-factor 0 to train on regardless"
            )
        if eval_now and record["test_bpd"] < p.best:
            p.best = record["test_bpd"]
            with self.stop.protect():
                self.saver.save(self.out / "best.pt", p)

    def save_last(self) -> None:
        with self.stop.protect():  # a second Ctrl-C waits for the write and the bookkeeping
            self.saver.save(self.out / "last.pt", self.progress)
            self.progress.last_saved = self.progress.step

    def finish(self, start_step: int) -> dict:
        """The final evaluation, samples, ``summary.json`` and ``bpd_curve.png``; the summary dict."""
        p, cfg = self.progress, self.cfg
        summary = {
            "step": p.step,
            "epoch": round(p.step / self.steps_per_epoch, 4),
            "train_bpd": p.train_bpd,
            "best_test_bpd": p.best,
            "n_params": sum(q.numel() for q in self.model.parameters()),
            "interrupted": p.interrupted,
            "out": str(self.out),
        }
        last = self.out / "last.pt"
        saved = f"{last} holds step {p.last_saved}" if p.last_saved is not None else "no checkpoint was written"
        try:
            if p.aborted:
                summary["aborted"] = True
                how = "continue with --resume" if p.last_saved is not None else "start again with --overwrite"
                print(
                    f"aborted at step {p.step} by a second Ctrl-C: nothing more was written; {saved}; {how}",
                    file=sys.stderr,
                )
                return {**summary, "model": self.model}
            self.stop.finishing()  # from here any signal stops at once: last.pt is complete
            if self.stop.stop and not p.interrupted:
                raise KeyboardInterrupt
            if not p.interrupted:
                summary.update(self._final_evaluation())
            summary["images_per_s"] = cfg.batch_size * (p.step - start_step) / max(p.train_time, 1e-9)
            summary["wall_s"] = round(time.perf_counter() - self.t_start, 2)
            if self.rt.master:
                self._write_summary(summary, saved)
        except KeyboardInterrupt:
            if p.interrupted:  # a second signal while summary.json and the plot of a stopped run were written
                what = f"interrupted at step {p.step}: {saved}; summary.json or bpd_curve.png may be missing"
            else:
                what = (
                    f"interrupted after the training steps (step {p.step}): {saved}; the final evaluation, samples "
                    "or summary.json may be missing"
                )
            summary["interrupted"] = True
            print(f"{what}: run the same command with --resume to write them", file=sys.stderr)
        return {**summary, "model": self.model}

    def _final_evaluation(self) -> dict:
        """Full test-set bpd, the importance-weighted bound (flow dequantization), the last sample grids."""
        cfg, rt = self.cfg, self.rt
        result = {"test_bpd": evaluate(self.model, self.test_x, self.batch, rt, cfg.seed)}
        if self.model.config.dequant == "flow" and cfg.iw_samples > 0:
            result["test_bpd_iw"] = evaluate(
                self.model, self.test_x, max(1, self.batch // 4), rt, cfg.seed, iw_samples=cfg.iw_samples
            )
        if rt.master:
            result["samples"] = self.files.save_samples(self.model, cfg, self.progress.step, rt.rng_devices)
        return result

    def _write_summary(self, summary: dict, saved: str) -> None:
        p, cfg = self.progress, self.cfg
        final = {k: v for k, v in summary.items() if k != "samples"}
        if not p.interrupted:
            self.files.log({"final": True, **final}, p.step)
        self.files.write_json("summary.json", final)
        plot_curves(self.out)
        if p.interrupted:
            print(f"interrupted at step {p.step}: {saved}; continue with --resume", file=sys.stderr)
            return
        iw = f" | test (iw, K={cfg.iw_samples}) {summary['test_bpd_iw']:.4f}" if "test_bpd_iw" in summary else ""
        print(
            f"done: step {p.step} | train {p.train_bpd:.4f} bpd | test {summary['test_bpd']:.4f} bpd{iw} | "
            f"{summary['images_per_s']:.0f} img/s | {summary['wall_s']:.1f} s | {summary['n_params']:,} params | "
            f"{self.out}"
        )
