"""Mixing layers compared inside one Glow-style model (Hoogeboom et al. 2020, Table 2).

Protocol: the same multi-scale model (``flowlib.models`` preset; actnorm -> mixing ->
affine coupling per step) with each mixing layer in turn: ``conv1x1``, ``conv1x1_lu``,
``conv1x1_exp``, ``convexp``, ``emerging``, ``woodbury``, ``periodic``, ``dct``. Every arm
gets the same data, the same optimizer and schedule (the trainer's preset), the same
number of steps and batch size, and at least 3 seeds. Parameter counts are equalised
within 5% by changing each arm's conditioner width (DenseNet growth; hidden channels of
the tiny conv conditioner at ci scale), as the official commands do with growth 64 for
the 1x1 convolution and 63 for the others; the counts are checked and reported.
Measured: test bits/dim (full test set of the scale), train images/s (the trainer's
average over the run), sampling images/s (one timed ``model.sample`` after a warm-up)
and the parameter count.

Scales: ``ci`` = tiny conv-conditioner model (2 levels x 2 steps) on synthetic 3x8x8
images, 20 steps; ``gpu-small`` = ``small-mixing`` preset on CIFAR-10 with train = the
10,000 images of ``data_batch_1`` and test = the first 2,000 of ``test_batch``, 400 steps of
batch 64 (about 10 minutes for 24 runs on one H100 was the aim; not yet timed on a GPU);
``paper`` = ``paper-mixing`` on full CIFAR-10, batch 256, 1000 epochs, importance-weighted
test bpd with 1000 samples.
The paper reports that the convolution exponential gives the best test bpd among
1x1, emerging and Woodbury mixing; the notes check that ordering from the numbers.
"""

from __future__ import annotations

from pathlib import Path

from .common import (
    DIVERGED_COLUMN,
    PARAMS_COLUMN,
    SCALE_CAVEAT,
    Arm,
    aggregate,
    budget_markdown,
    diff_note,
    diverged_notes,
    image_budget,
    image_data,
    image_grid,
    image_info,
    image_scale,
    markdown_table,
    mean_std,
    write_results,
)

__all__ = ["MIXINGS", "SCALES", "TITLE", "run"]

TITLE = "Mixing layers in a Glow-style flow"
MIXINGS = ("conv1x1", "conv1x1_lu", "conv1x1_exp", "convexp", "emerging", "woodbury", "periodic", "dct")
PAPER_ARMS = ("conv1x1", "emerging", "woodbury")  # the baselines of the paper's table

SCALES = {
    "ci": image_scale("ci", "tiny", model=dict(dequant="uniform"), knob="hidden_channels", base=16),
    "gpu-small": image_scale(
        "gpu-small",
        "small-mixing",
        train=dict(steps=400, batch_size=64, log_every=50, eval_every=10**6, save_every=200),
        knob="densenet_growth",
        base=32,
    ),
    "paper": image_scale("paper", "paper-mixing", knob="densenet_growth", base=63),
}


def _arms() -> list[Arm]:
    return [Arm(m, m, {"mixing": m}) for m in MIXINGS]


def run(
    scale: str, seeds: int, out: Path, runs: Path, device: str, command: str, data_dir=None, quiet: bool = False
) -> dict[str, Path]:
    """Run (or resume) every mixing arm for ``seeds`` seeds; write ``out/mixing-<scale>.*``."""
    s = SCALES[scale]
    arms = _arms()
    data, data_text = image_data(scale, data_dir, runs.parent, s["n_test"])
    budget, models = image_budget(
        arms,
        s["preset"],
        lambda a: {**s["model"], "mixing": a.settings["mixing"]},
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
    wins = [diff_note(by, "test_bpd", "convexp", b) for b in PAPER_ARMS]
    if all(w for w, _ in wins):
        notes.append(
            "Agrees with the paper: convexp has a lower mean test bpd than 1x1, emerging and Woodbury ("
            + "; ".join(t for _, t in wins)
            + ")."
        )
    else:
        lost = [t for w, t in wins if not w]
        notes.append("DISAGREES with the paper (convexp best among 1x1, emerging, Woodbury): " + "; ".join(lost) + ".")
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
