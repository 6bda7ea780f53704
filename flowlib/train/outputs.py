"""The files of a run directory: ``config.json``, ``metrics.jsonl``, TensorBoard events, samples, plots.

Only rank 0 writes; on the other ranks a :class:`RunFiles` writes nothing. Every write goes
through :mod:`flowlib.rundir` (atomic files, strict JSON, disk errors that name the path).
Checkpoints are :mod:`flowlib.train.state`'s.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> with RunFiles(out, master=True, start_step=0) as files:
...     files.log({"step": 1, "train_bpd": 3.5}, step=1)
>>> (out / "metrics.jsonl").read_text()
'{"step": 1, "train_bpd": 3.5}\\n'
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from flowlib import rundir

from .config import TrainConfig

__all__ = ["RunFiles", "plot_curves", "sample_grid"]


class RunFiles:
    """Opens ``metrics.jsonl`` (appending) and the TensorBoard writer of ``out``; a context manager closes them.

    ``start_step``: the step a resumed run continues from (lines of ``metrics.jsonl`` after it,
    written by the interrupted run past its checkpoint, are dropped; damaged lines are set
    aside); ``None`` for a fresh run.
    """

    def __init__(self, out: Path, master: bool, start_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.out, self.master = out, master
        self.metrics = self.writer = None
        if not master:
            return
        self.writer = SummaryWriter(str(out / "tb"), purge_step=start_step)
        if start_step is not None:
            records = rundir.read_metrics(out / "metrics.jsonl", set_aside=True)
            keep = [r for r in records if r.get("step", 0) <= start_step and "final" not in r]
            rundir.atomic_write(out / "metrics.jsonl", "".join(rundir.strict_json(r) + "\n" for r in keep).encode())
        with rundir.write_guard(out / "metrics.jsonl"):
            self.metrics = open(out / "metrics.jsonl", "a")

    def __enter__(self) -> RunFiles:
        return self

    def __exit__(self, *exc) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.writer.close()

    def write_json(self, name: str, obj: dict) -> None:
        """``out/name`` as indented strict JSON, atomically (``config.json``, ``summary.json``)."""
        if self.master:
            rundir.atomic_write(self.out / name, rundir.strict_json(obj, indent=2).encode())

    def log(self, record: dict, step: int) -> None:
        """One line of ``metrics.jsonl``; its float values (but step, epoch, time) also to TensorBoard."""
        if not self.master:
            return
        with rundir.write_guard(self.out / "metrics.jsonl"):
            self.metrics.write(rundir.strict_json(record) + "\n")
            self.metrics.flush()
        for k, v in record.items():
            if k not in ("step", "epoch", "time") and isinstance(v, float):
                self.writer.add_scalar(k.replace("_", "/", 1) if k.startswith(("train", "test")) else k, v, step)

    @torch.no_grad()
    def save_samples(self, model, cfg: TrainConfig, step: int, rng_devices: list) -> list[str]:
        """Sample grids at each temperature as PNG (and TensorBoard images); the same noise at every call."""
        from PIL import Image

        if not self.master:
            return []
        was_training = model.training
        model.eval()
        paths = []
        (self.out / "samples").mkdir(exist_ok=True)
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=rng_devices):
            for t in cfg.temperatures:
                torch.manual_seed(cfg.seed + 1)
                g = torch.Generator(device=device).manual_seed(cfg.seed + 1)
                grid = sample_grid(model.sample(cfg.n_samples, temperature=float(t), generator=g).cpu())
                self.writer.add_image(f"samples/T{t:.2f}", grid, step)
                scale = max(1, 256 // grid.shape[-1])  # small images (8x8) are enlarged, pixels stay sharp
                img = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()  # [h, w, C]
                path = self.out / "samples" / f"step{step:07d}_T{t:.2f}.png"
                with rundir.write_guard(path):
                    Image.fromarray(img[..., 0] if grid.shape[0] == 1 else img).save(path)
                paths.append(str(path))
        model.train(was_training)
        return paths


def sample_grid(images: torch.Tensor) -> torch.Tensor:
    """``[n, C, H, W]`` uint8 images as one ``[C, rows*(H+1)+1, cols*(W+1)+1]`` grid, 1-pixel black lines."""
    n, C, H, W = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros(C, rows * (H + 1) + 1, cols * (W + 1) + 1, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[:, 1 + r * (H + 1) : 1 + r * (H + 1) + H, 1 + c * (W + 1) : 1 + c * (W + 1) + W] = images[i]
    return grid


def plot_curves(out: Path) -> Path:
    """``bpd_curve.png``: train and test bits/dim against the step, from ``metrics.jsonl``."""
    from matplotlib.figure import Figure

    records = rundir.read_metrics(out / "metrics.jsonl")
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    for key, style in (("train_bpd", "-"), ("test_bpd", "o-")):
        points = [(r["step"], r[key]) for r in records if key in r and "step" in r and not r.get("final")]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key.replace("_bpd", ""), markersize=3)
    ax.set(xlabel="step", ylabel="bits per dimension", title=out.name)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend()
    path = out / "bpd_curve.png"
    with rundir.write_guard(path):
        fig.savefig(path, dpi=120)
    return path
