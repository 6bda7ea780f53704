"""Convolutional Sylvester flow vs residual flow vs coupling baseline (Hoogeboom et al. 2020, Table 3).

Protocol: the same multi-scale model (split priors, the trainer's optimizer and schedule)
whose steps are, by ``model_type``: ``sylvester`` (actnorm -> convolutional Sylvester
layer -> flip), ``residual`` (actnorm -> residual block with spectral normalisation, the
residual-flow baseline) or ``coupling`` (actnorm -> 1x1 convolution -> affine coupling), each
with uniform and with variational (flow) dequantization: six arms, at least 3 seeds each,
the same data, steps and batch size. Within each dequantization, parameter counts are
equalised within 5%: the Sylvester layer has no width to change, so it sets the target;
the residual block's hidden channels and the coupling conditioner's width (hidden
channels of the conv conditioner, or DenseNet growth) are matched to it; the counts are
checked and reported. Measured: test bits/dim (for flow dequantization the single-sample
bound; at paper scale also the importance-weighted bound), train images/s, parameter count.

Scales: ``ci`` = 2 levels x 2 steps on synthetic 3x8x8 images, 20 steps; ``cpu-real`` = 2
levels x 2 steps (conv conditioners, ``tiny`` preset) on a real CIFAR-10 subset downsampled
to 3x16x16 by 2x2 average pooling (train = the first 2,500 images of ``data_batch_1``, test =
the first 500 of ``test_batch``: the residual flow's exact evaluation log-determinant costs
one backward pass per dimension, so the test set is small), uniform dequantization only
(three arms), 400 steps of batch 32 on one CPU thread (one-thread CPU times measured on
2026-12-01: Sylvester 133, residual 482, coupling 45 ms per step, and 138 s for the residual
flow's exact evaluation of the 500 test images, so the 9 runs take about 20 minutes); ``gpu-small`` =
``small-sylvester`` preset (3 levels x 4 steps) on the CIFAR-10 subset (train = the 10,000
images of ``data_batch_1``, test = the first 2,000 of ``test_batch``), 200 steps of batch 64
(aimed at about 10 minutes for 18 runs on one H100; not yet timed on a GPU); ``paper`` =
``paper-sylvester`` (3 levels x 16 steps) on full CIFAR-10, batch 256, 1000 epochs.
The paper reports that convolutional Sylvester flows reach a lower bpd than residual
flows; the notes check that ordering for each dequantization.
"""

from __future__ import annotations

from pathlib import Path

from .budget import budget_markdown, image_budget
from .grid import Arm, aggregate
from .images import cpu_real_schedule, image_data, image_grid, image_info, image_scale
from .provenance import SCALE_CAVEAT
from .report import (
    DIVERGED_COLUMN,
    PARAMS_COLUMN,
    diff_note,
    diverged_notes,
    markdown_table,
    mean_std,
    ordering,
    paper_note,
    write_results,
)

__all__ = ["MODEL_TYPES", "DEQUANTS", "SCALES", "TITLE", "run"]

TITLE = "Convolutional Sylvester vs residual vs coupling flows"
MODEL_TYPES = ("sylvester", "residual", "coupling")
DEQUANTS = ("uniform", "flow")

SCALES = {
    "ci": image_scale(
        "ci",
        "tiny",
        model=dict(mixing="none", hidden_channels=16),
        widths={"residual": "hidden_channels", "coupling": "hidden_channels"},
        base={"hidden_channels": 16},
    ),
    "cpu-real": image_scale(
        "cpu-real",
        "tiny",
        model=dict(mixing="none", n_subflows=2, hidden_channels=32),
        train=cpu_real_schedule(400, grad_clip=1.0),
        n_test=500,
        dequants=("uniform",),
        widths={"residual": "hidden_channels", "coupling": "hidden_channels"},
        base={"hidden_channels": 32},
    ),
    "gpu-small": image_scale(
        "gpu-small",
        "small-sylvester",
        train=dict(steps=200, batch_size=64, log_every=50, eval_every=10**6, save_every=100),
        widths={"residual": "hidden_channels", "coupling": "densenet_growth"},
        base={"hidden_channels": 128, "densenet_growth": 32},
    ),
    "paper": image_scale(
        "paper",
        "paper-sylvester",
        widths={"residual": "hidden_channels", "coupling": "densenet_growth"},
        base={"hidden_channels": 528, "densenet_growth": 64},
    ),
}


def _arms(dequant: str) -> list[Arm]:
    return [Arm(f"{m}-{dequant}", f"{m} ({dequant} deq.)", {"model_type": m, "dequant": dequant}) for m in MODEL_TYPES]


def run(
    scale: str, seeds: int, out: Path, runs: Path, device: str, command: str, data_dir=None, quiet: bool = False
) -> dict[str, Path]:
    """Run (or resume) the arms (six; three at cpu-real) for ``seeds`` seeds; write ``out/residual-<scale>.*``."""
    s = SCALES[scale]
    dequants = s.get("dequants", DEQUANTS)
    data, data_text = image_data(scale, data_dir, runs.parent, s["n_test"], s["pool"])
    arms, budgets, models = [], {}, {}

    def knob(arm: Arm) -> str | None:
        return s["widths"].get(arm.settings["model_type"])  # sylvester: None (no width to change)

    for dq in dequants:  # budgets are matched within each dequantization (its flow adds the same to all)
        group = _arms(dq)
        budgets[dq], matched = image_budget(
            group,
            s["preset"],
            lambda a: {**s["model"], **a.settings},
            knob,
            lambda a: s["base"][knob(a)] if knob(a) else 0,
        )
        arms += group
        models.update(matched)
    records = image_grid(arms, seeds, runs, s, data, models, device, f"residual {scale}", quiet)
    metrics = ["test_bpd", "test_bpd_iw", "train_bpd", "train_images_per_s", "params"]
    rows = aggregate(records, arms, metrics)
    by = {r["arm"]: r for r in rows}

    notes = [SCALE_CAVEAT[scale]]
    for dq in dequants:
        holds, resolved, detail = ordering([diff_note(by, "test_bpd", f"sylvester-{dq}", f"residual-{dq}")])
        claim = f"convolutional Sylvester has a lower test bpd than the residual flow, {dq} dequantization"
        notes.append(paper_note(scale, holds, claim, detail, resolved))
        text = diff_note(by, "test_bpd", f"sylvester-{dq}", f"coupling-{dq}").text
        notes.append(f"For reference, Sylvester vs coupling baseline ({dq}): {text}.")
    notes += diverged_notes(rows)

    table = markdown_table(
        rows,
        [
            ("model", lambda r: r["model_type"]),
            ("dequantization", lambda r: r["dequant"]),
            ("test bpd", lambda r: mean_std(r, "test_bpd", 4)),
            ("test bpd (importance-weighted)", lambda r: mean_std(r, "test_bpd_iw", 4)),
            ("train images/s", lambda r: mean_std(r, "train_images_per_s", 0)),
            PARAMS_COLUMN,
            DIVERGED_COLUMN,
        ],
    )
    info = image_info(TITLE, command, scale, seeds, device, __doc__, s, data_text, budgets)

    def plot(fig):
        ax = fig.subplots()
        width = 0.38
        for k, dq in enumerate(dequants):
            sub = [by[f"{m}-{dq}"] for m in MODEL_TYPES]
            xs = [i + (k - (len(dequants) - 1) / 2) * width for i in range(len(MODEL_TYPES))]
            ax.bar(
                xs,
                [r["test_bpd_mean"] for r in sub],
                width,
                yerr=[r["test_bpd_std"] for r in sub],
                capsize=3,
                label=f"{dq} dequantization",
            )
        ax.set_xticks(range(len(MODEL_TYPES)), MODEL_TYPES)
        ax.set_ylabel("test bits/dim (lower is better)")
        ax.legend()
        ax.set_title(f"{TITLE} ({scale}, {seeds} seeds, mean ± std)")

    labels = {a.name: a.label for a in arms}
    body = "## Results\n\n" + table + "\n\n"
    body += "\n\n".join(budget_markdown(budgets[dq], labels, f"{dq} dequantization") for dq in dequants)
    return write_results(out, "residual", scale, info, rows, records, body, notes, plot)
