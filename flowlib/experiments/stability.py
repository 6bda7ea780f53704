"""Training stability: affine vs matrix-exponential coupling across learning rates, and 1x1 convolutions.

Protocol, part A (Xiao & Liu 2020, matrix exponential coupling): the same Glow-style model
(actnorm -> plain 1x1 convolution -> coupling per step) with ``affine`` or ``exp``
(matrix-exponential) coupling, trained at each learning rate of the scale's grid with the
trainer's preset schedule (warm-up, then decay), the same steps, batch and data, at least
3 seeds. A run *diverges* when its loss or a gradient becomes non-finite (the trainer stops
it), a series or solver fails, or its final test bpd exceeds 8 bits/dim (worse than a
uniform distribution over the 256 levels). Reported per learning rate: the fraction of
runs that diverged and the final test bpd of the others (mean ± std).
Part B: ``conv1x1`` (plain), ``conv1x1_lu`` (PLU) and ``conv1x1_exp`` (matrix exponential)
1x1 convolutions with affine coupling at one (high) learning rate: fraction of runs that
collapsed (diverged as above), final test bpd, milliseconds per step and seconds per
epoch (one pass over the training set at the measured speed).
The conditioner width is matched so that parameter counts agree within 5% (checked).

Scales: ``ci`` = 2 levels x 2 steps on synthetic 3x8x8 images, 20 steps, learning rates
1e-3, 1e-2, 1e-1 (part B at 1e-2); ``gpu-small`` = ``small-mixing`` preset on the CIFAR-10
subset (train = the 10,000 images of ``data_batch_1``, test = the first 2,000 of
``test_batch``), 150 steps of batch 64, learning rates 1e-3, 3e-3, 1e-2, 3e-2 (part B at
1e-2; aimed at about 10 minutes for 33 runs on one H100, not yet timed on a GPU);
``paper`` = ``paper-mixing`` on full CIFAR-10, batch 256, 1000 epochs, learning rates 1e-3,
2e-3, 5e-3 (part B at 2e-3).
The papers report that matrix-exponential coupling diverges less often than affine coupling
and that matrix-exponential 1x1 convolutions do not collapse; the notes check both.
"""

from __future__ import annotations

from pathlib import Path

from .budget import budget_markdown, image_budget
from .grid import Arm, aggregate
from .images import image_data, image_grid, image_info, image_scale
from .provenance import SCALE_CAVEAT
from .report import DIVERGED_COLUMN, PARAMS_COLUMN, diff_note, fmt, markdown_table, mean_std, paper_note, write_results

__all__ = ["COUPLINGS", "CONV1X1", "SCALES", "TITLE", "run"]

TITLE = "Training stability of couplings and 1x1 convolutions"
COUPLINGS = ("affine", "exp")
CONV1X1 = ("conv1x1", "conv1x1_lu", "conv1x1_exp")

SCALES = {
    "ci": image_scale(
        "ci",
        "tiny",
        model=dict(dequant="uniform"),
        knob="hidden_channels",
        base=16,
        lrs=(1e-3, 1e-2, 1e-1),
        lr_b=1e-2,
    ),
    "gpu-small": image_scale(
        "gpu-small",
        "small-mixing",
        train=dict(steps=150, batch_size=64, log_every=50, eval_every=10**6, save_every=150),
        knob="densenet_growth",
        base=32,
        lrs=(1e-3, 3e-3, 1e-2, 3e-2),
        lr_b=1e-2,
    ),
    "paper": image_scale("paper", "paper-mixing", knob="densenet_growth", base=64, lrs=(1e-3, 2e-3, 5e-3), lr_b=2e-3),
}


def _arms(s: dict) -> tuple[list[Arm], list[Arm]]:
    part_a = [
        Arm(f"{c}-lr{lr:g}", f"{c} coupling, lr {lr:g}", {"part": "A", "coupling": c, "mixing": "conv1x1", "lr": lr})
        for c in COUPLINGS
        for lr in s["lrs"]
    ]
    part_b = [
        Arm(
            f"{m}-lr{s['lr_b']:g}",
            f"{m}, lr {s['lr_b']:g}",
            {"part": "B", "coupling": "affine", "mixing": m, "lr": s["lr_b"]},
        )
        for m in CONV1X1
    ]
    return part_a, part_b


def _coupling_notes(by: dict, lrs, scale: str) -> list[str]:
    affine = [by[f"affine-lr{lr:g}"]["diverged_frac"] for lr in lrs]
    exp = [by[f"exp-lr{lr:g}"]["diverged_frac"] for lr in lrs]
    listing = ", ".join(f"lr {lr:g}: affine {a:.0%} vs exp {e:.0%}" for lr, a, e in zip(lrs, affine, exp, strict=True))
    claim = "exp coupling diverges less often than affine coupling, at no rate more often"
    if sum(affine) == sum(exp) == 0:
        notes = [f"Not tested at this scale: neither coupling diverged at any learning rate ({listing})."]
    elif sum(exp) == sum(affine) and not any(e > a for a, e in zip(affine, exp, strict=True)):
        notes = [f"Inconclusive: both couplings diverged equally often ({listing})."]
    else:
        holds = sum(exp) < sum(affine) and not any(e > a for a, e in zip(affine, exp, strict=True))
        notes = [paper_note(scale, holds, claim, f"diverged runs {listing}")]
    for lr in lrs:
        c = diff_note(by, "test_bpd", f"exp-lr{lr:g}", f"affine-lr{lr:g}")
        notes.append(f"Final test bpd at lr {lr:g} ({'exp lower' if c.better else 'exp not lower'}): {c.text}.")
    return notes


def _conv_notes(by: dict, lr_b: float, scale: str) -> list[str]:
    frac = {m: by[f"{m}-lr{lr_b:g}"]["diverged_frac"] for m in CONV1X1}
    listing = ", ".join(f"{m} {f:.0%}" for m, f in frac.items())
    if frac["conv1x1_exp"] == frac["conv1x1"] == frac["conv1x1_lu"] == 0:
        notes = [f"Not tested at this scale: no 1x1 variant collapsed (collapsed runs at lr {lr_b:g}: {listing})."]
    else:
        holds = frac["conv1x1_exp"] == 0
        claim = "conv1x1_exp never collapses while plain or PLU 1x1 convolutions can"
        notes = [paper_note(scale, holds, claim, f"collapsed runs at lr {lr_b:g}: {listing}")]
    ranking = sorted(
        (by[f"{m}-lr{lr_b:g}"] for m in CONV1X1 if by[f"{m}-lr{lr_b:g}"]["test_bpd_n"]),
        key=lambda r: r["test_bpd_mean"],
    )
    notes.append("1x1 variants by mean test bpd (best first): " + ", ".join(r["mixing"] for r in ranking) + ".")
    return notes


def run(
    scale: str, seeds: int, out: Path, runs: Path, device: str, command: str, data_dir=None, quiet: bool = False
) -> dict[str, Path]:
    """Run (or resume) parts A and B for ``seeds`` seeds; write ``out/stability-<scale>.*``."""
    s = SCALES[scale]
    part_a, part_b = _arms(s)
    data, data_text = image_data(scale, data_dir, runs.parent, s["n_test"])
    budgets, models = {}, {}
    for part, arms in (("A", part_a), ("B", part_b)):
        budgets[part], matched = image_budget(
            arms,
            s["preset"],
            lambda a: {**s["model"], "coupling": a.settings["coupling"], "mixing": a.settings["mixing"]},
            lambda a: s["knob"],
            lambda a: s["base"],
        )
        models.update(matched)
    arms = part_a + part_b
    records = image_grid(arms, seeds, runs, s, data, models, device, f"stability {scale}", quiet)  # at each arm's lr
    metrics = ["test_bpd", "train_bpd", "ms_per_step", "epoch_s", "params"]
    rows = aggregate(records, arms, metrics)
    by = {r["arm"]: r for r in rows}
    notes = [SCALE_CAVEAT[scale], *_coupling_notes(by, s["lrs"], scale), *_conv_notes(by, s["lr_b"], scale)]

    common_cols = [
        ("test bpd (non-diverged)", lambda r: mean_std(r, "test_bpd", 4)),
        DIVERGED_COLUMN,
    ]
    table_a = markdown_table(
        [by[a.name] for a in part_a],
        [
            ("coupling", lambda r: r["coupling"]),
            ("learning rate", lambda r: f"{r['lr']:g}"),
            *common_cols,
            PARAMS_COLUMN,
        ],
    )
    table_b = markdown_table(
        [by[a.name] for a in part_b],
        [
            ("1x1 convolution", lambda r: r["mixing"]),
            ("learning rate", lambda r: f"{r['lr']:g}"),
            *common_cols,
            ("ms / step", lambda r: mean_std(r, "ms_per_step", 1)),
            ("s / epoch", lambda r: mean_std(r, "epoch_s", 1)),
            PARAMS_COLUMN,
        ],
    )
    labels = {a.name: a.label for a in arms}
    body = (
        f"## Part A: coupling vs learning rate\n\n{table_a}\n\n## Part B: 1x1 convolutions\n\n{table_b}\n\n"
        + "\n\n".join(budget_markdown(budgets[part], labels, f"part {part}") for part in ("A", "B"))
    )
    info = image_info(
        TITLE,
        command,
        scale,
        seeds,
        device,
        __doc__,
        s,
        data_text,
        budgets,
        learning_rates=list(s["lrs"]),
        lr_part_b=s["lr_b"],
    )

    def plot(fig):
        ax1, ax2, ax3 = fig.subplots(1, 3)
        for c in COUPLINGS:
            sub = [by[f"{c}-lr{lr:g}"] for lr in s["lrs"]]
            ax1.plot(s["lrs"], [r["diverged_frac"] for r in sub], "o-", label=f"{c} coupling")
            ax2.errorbar(
                s["lrs"],
                [r["test_bpd_mean"] for r in sub],
                yerr=[r["test_bpd_std"] for r in sub],
                fmt="o-",
                capsize=3,
                label=f"{c} coupling",
            )
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            ax.legend(fontsize=7)
        ax1.set_ylabel("fraction of runs diverged")
        ax1.set_ylim(-0.05, 1.05)
        ax2.set_ylabel("test bits/dim (non-diverged)")
        sub = [by[a.name] for a in part_b]
        ax3.bar(
            [r["mixing"] for r in sub],
            [r["test_bpd_mean"] for r in sub],
            yerr=[r["test_bpd_std"] for r in sub],
            capsize=3,
        )
        for i, r in enumerate(sub):
            ax3.annotate(
                f"{fmt(r['ms_per_step_mean'], 1)} ms/step\n{r['diverged_frac']:.0%} collapsed",
                (i, r["test_bpd_mean"] if r["test_bpd_n"] else 0),
                ha="center",
                fontsize=6,
                xytext=(0, 4),
                textcoords="offset points",
            )
        ax3.set_ylabel(f"test bits/dim at lr {s['lr_b']:g}")
        ax3.tick_params(axis="x", rotation=30)
        fig.suptitle(f"{TITLE} ({scale}, {seeds} seeds)")

    return write_results(out, "stability", scale, info, rows, records, body, notes, plot)
