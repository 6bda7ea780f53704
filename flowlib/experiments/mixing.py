"""Mixing layers compared inside one Glow-style model (Hoogeboom et al. 2020, Table 2).

Protocol: the same multi-scale model (``flowlib.models`` preset; actnorm -> mixing ->
affine coupling per step) with each mixing layer of the registry in turn
(``flowlib.layers.available("mixing")``, sorted by name: ``conv1x1``, ``conv1x1_exp``,
``conv1x1_lu``, ``convexp``, ``dct``, ``emerging``, ``periodic``, ``woodbury``). Every arm
gets the same data, the same optimizer and schedule (the trainer's preset), the same
number of steps and batch size, and at least 3 seeds. Parameter counts are equalised
within 5% by changing each arm's conditioner width (DenseNet growth; hidden channels of
the tiny conv conditioner at ci scale), as the official commands do with growth 64 for
the 1x1 convolution and 63 for the others; the counts are checked and reported.
Measured: test bits/dim (full test set of the scale), train images/s (the trainer's
average over the run), sampling images/s (one timed ``model.sample`` after a warm-up)
and the parameter count.

At every scale but ``ci`` an extra arm ``convexp-official`` ("convexp (official terms)")
runs ``convexp`` with the official code's fixed series lengths, ``mixing_kwargs =
{"train_terms": 6, "eval_terms": 13}`` (no error bound then), next to flowlib's default
``convexp`` (terms chosen from the norm bound and the tolerance).

Scales: ``ci`` = tiny conv-conditioner model (2 levels x 2 steps) on synthetic 3x8x8
images, 20 steps; ``cpu-real`` = conv-conditioner model (``tiny`` preset, 2 levels x 4
steps, uniform dequantization) on the real CIFAR-10 subset (train = the 10,000 images of
``data_batch_1``, test = the first 2,000 of ``test_batch``) downsampled to 3x16x16 by 2x2
average pooling, 500 steps of batch 32 on one CPU thread (about one minute per run on an
idle core; bpd on 16x16 images, so only the ordering is comparable with the paper; sized from
one-thread CPU times measured on 2026-12-01: 73-154 ms per step per arm, convexp the slowest,
0.88 s for one step of all nine arms, so the 27 runs take about 25 minutes with evaluation on
an idle core, and two to three times that on a loaded one; a 3-seed calibration at 300 steps
already separated conv1x1, 5.403 ± 0.010 test bpd, from convexp, 5.285 ± 0.003: a gap ten
times the seed std); ``gpu-small`` =
``small-mixing`` preset on CIFAR-10 with train = the 10,000 images of ``data_batch_1`` and
test = the first 2,000 of ``test_batch``, 400 steps of batch 64 (about 10 minutes for 24
runs on one H100 was the aim; not yet timed on a GPU); ``paper`` = ``paper-mixing`` on full
CIFAR-10, batch 256, 1000 epochs, importance-weighted test bpd with 1000 samples.
The paper reports that the convolution exponential gives the best test bpd among
1x1, emerging and Woodbury mixing; the notes check that ordering from the numbers.
"""

from __future__ import annotations

from pathlib import Path

from flowlib.layers import available

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

__all__ = ["MIXINGS", "SCALES", "TITLE", "run"]

TITLE = "Mixing layers in a Glow-style flow"
MIXINGS = tuple(available("mixing"))  # every mixing layer of the registry, sorted by name (the arms' order)
PAPER_ARMS = ("conv1x1", "emerging", "woodbury")  # the baselines of the paper's table
OFFICIAL_TERMS = {"train_terms": 6, "eval_terms": 13}  # the official code's fixed series lengths

SCALES = {
    "ci": image_scale("ci", "tiny", model=dict(dequant="uniform"), knob="hidden_channels", base=16),
    "cpu-real": image_scale(
        "cpu-real",
        "tiny",
        model=dict(dequant="uniform", n_subflows=4),
        train=cpu_real_schedule(500),
        knob="hidden_channels",
        base=32,
    ),
    "gpu-small": image_scale(
        "gpu-small",
        "small-mixing",
        train=dict(steps=400, batch_size=64, log_every=50, eval_every=10**6, save_every=200),
        knob="densenet_growth",
        base=32,
    ),
    "paper": image_scale("paper", "paper-mixing", knob="densenet_growth", base=63),
}


def _arms(scale: str) -> list[Arm]:
    arms = [Arm(m, m, {"mixing": m}) for m in MIXINGS]
    if scale != "ci":
        arms.append(
            Arm("convexp-official", "convexp (official terms)", {"mixing": "convexp", "mixing_kwargs": OFFICIAL_TERMS})
        )
    return arms


def run(
    scale: str, seeds: int, out: Path, runs: Path, device: str, command: str, data_dir=None, quiet: bool = False
) -> dict[str, Path]:
    """Run (or resume) every mixing arm for ``seeds`` seeds; write ``out/mixing-<scale>.*``."""
    s = SCALES[scale]
    arms = _arms(scale)
    data, data_text = image_data(scale, data_dir, runs.parent, s["n_test"], s["pool"])
    budget, models = image_budget(
        arms,
        s["preset"],
        lambda a: {**s["model"], **a.settings},
        lambda a: s["knob"],
        lambda a: s["base"],
    )
    records = image_grid(arms, seeds, runs, s, data, models, device, f"mixing {scale}", quiet)
    metrics = ["test_bpd", "train_bpd", "train_images_per_s", "sample_images_per_s", "params"]
    rows = aggregate(records, arms, metrics)
    by = {r["arm"]: r for r in rows}

    notes = [SCALE_CAVEAT[scale]]
    finite = [r for r in rows if r["test_bpd_n"] > 0]
    ranking = sorted(finite, key=lambda r: r["test_bpd_mean"])
    notes.append("Ranking by mean test bpd (best first): " + ", ".join(r["arm"] for r in ranking) + ".")
    candidates = [a for a in ("convexp", "convexp-official") if a in by]
    for arm in candidates:
        holds, resolved, detail = ordering([diff_note(by, "test_bpd", arm, b) for b in PAPER_ARMS])
        claim = f"{by[arm]['label']} has a lower test bpd than 1x1, emerging and Woodbury"
        notes.append(paper_note(scale, holds, claim, detail, resolved))
    if len(candidates) == 2:
        text = diff_note(by, "test_bpd", "convexp-official", "convexp").text
        notes.append(f"Official fixed terms (6 train / 13 eval) vs flowlib's tolerance-derived terms: {text}.")
    notes += diverged_notes(rows)

    table = markdown_table(
        rows,
        [
            ("mixing", lambda r: r["label"]),
            ("test bpd", lambda r: mean_std(r, "test_bpd", 4)),
            ("train bpd (last log interval)", lambda r: mean_std(r, "train_bpd", 4)),
            ("train images/s", lambda r: mean_std(r, "train_images_per_s", 0)),
            ("sampling images/s", lambda r: mean_std(r, "sample_images_per_s", 0)),
            PARAMS_COLUMN,
            DIVERGED_COLUMN,
        ],
    )
    info = image_info(TITLE, command, scale, seeds, device, __doc__, s, data_text, budget)

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        labels = [r["label"] for r in rows]
        ax1.bar(labels, [r["test_bpd_mean"] for r in rows], yerr=[r["test_bpd_std"] for r in rows], capsize=3)
        lo = min((r["test_bpd_mean"] - 2 * max(r["test_bpd_std"], 0) for r in finite), default=0)
        ax1.set_ylim(bottom=max(0.0, lo if lo == lo else 0))
        ax1.set_ylabel("test bits/dim (lower is better)")
        ax1.tick_params(axis="x", rotation=60)
        ax2.scatter([r["train_images_per_s_mean"] for r in rows], [r["test_bpd_mean"] for r in rows])
        for r in rows:
            ax2.annotate(r["label"], (r["train_images_per_s_mean"], r["test_bpd_mean"]), fontsize=7)
        ax2.set_xlabel("train images/s")
        ax2.set_ylabel("test bits/dim")
        fig.suptitle(f"{TITLE} ({scale}, {seeds} seeds, mean ± std)")

    body = "## Results\n\n" + table + "\n\n" + budget_markdown(budget, {a.name: a.label for a in arms})
    return write_results(out, "mixing", scale, info, rows, records, body, notes, plot)
