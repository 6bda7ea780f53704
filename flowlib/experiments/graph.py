"""Graph normalizing flow with and without the graph convolution exponential (Hoogeboom et al. 2020).

Protocol: :class:`flowlib.graphs.GraphFlow` (blocks of actnorm -> [graph convolution
exponential] -> two message-passing affine couplings) with ``use_convexp=True`` and
``False``, trained by :func:`flowlib.graphs.fit` (Adam, random mini-batches) for the same
number of steps on the same synthetic data set (:func:`flowlib.graphs.make_graph_dataset`:
node features diffused along the edges of a fixed ring-with-chords graph, with a nonlinear
dependence between channels; the samples are split into train and test halves of the
scale's sizes), at least 3 seeds. The coupling width (``hidden``) is matched so that the
parameter counts agree within 5% (checked). Measured: test negative log-likelihood in nats
per node feature (lower is better), the train loss of the last 10% of steps, milliseconds
per step and the parameter count; a non-finite loss counts as diverged.

Scales: ``ci`` = 12 nodes x 2 features, 512 train / 512 test samples, 2 blocks, 100 steps;
``gpu-small`` = 20 nodes x 4 features, 4,096 / 1,024 samples, 4 blocks, 2,000 steps (minutes,
CPU or GPU); ``paper`` = the paper's graph data sets are not bundled with flowlib, so this
scale is the largest synthetic setting: 32 nodes x 4 features, 16,384 / 4,096 samples,
8 blocks, 10,000 steps.
The paper reports that the graph convolution exponential improves the likelihood of graph
normalizing flows; the notes check that ordering.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .budget import budget_markdown, check_budget, match_budget
from .grid import Arm, aggregate, log_line, run_grid
from .provenance import SCALE_CAVEAT, protocol_text, result_info
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

__all__ = ["SCALES", "TITLE", "run"]

TITLE = "Graph flow with and without the graph convolution exponential"

SCALES = {
    "ci": dict(nodes=12, features=2, n_train=512, n_test=512, blocks=2, hidden=16, steps=100, batch_size=64, lr=5e-3),
    "gpu-small": dict(
        nodes=20, features=4, n_train=4096, n_test=1024, blocks=4, hidden=64, steps=2000, batch_size=256, lr=2e-3
    ),
    "paper": dict(
        nodes=32, features=4, n_train=16384, n_test=4096, blocks=8, hidden=128, steps=10000, batch_size=256, lr=1e-3
    ),
}
ARMS = [
    Arm("convexp", "with graph conv. exp.", {"use_convexp": True}),
    Arm("no-convexp", "without graph conv. exp.", {"use_convexp": False}),
]


def run(
    scale: str, seeds: int, out: Path, runs: Path, device: str, command: str, data_dir=None, quiet: bool = False
) -> dict[str, Path]:
    """Run (or resume) both arms for ``seeds`` seeds; write ``out/graph-<scale>.*`` (``data_dir`` is unused)."""
    from flowlib.functional import SeriesNotConverged
    from flowlib.graphs import GraphFlow, fit, make_graph_dataset

    s = SCALES[scale]
    dataset = make_graph_dataset(
        num_samples=s["n_train"] + s["n_test"], num_nodes=s["nodes"], features=s["features"], seed=0
    )
    train_x, test_x = dataset.x[: s["n_train"]], dataset.x[s["n_train"] :]  # [S, N, C] each

    def build(arm: Arm, hidden: int) -> GraphFlow:
        return GraphFlow(
            dataset.adjacency, s["features"], blocks=s["blocks"], hidden=hidden, use_convexp=arm.settings["use_convexp"]
        )

    matched = match_budget(
        ARMS, lambda a, w: sum(p.numel() for p in build(a, w).parameters()), lambda a: "hidden", lambda a: s["hidden"]
    )
    budget = {**matched, **check_budget(matched["counts"])}

    def one(arm: Arm, seed: int, run_dir: Path) -> dict:
        torch.manual_seed(seed)
        model = build(arm, budget["widths"][arm.name]).to(device)
        dims = train_x[0].numel()
        record = {
            "params": sum(p.numel() for p in model.parameters()),
            "test_nll": float("nan"),
            "train_nll": float("nan"),
            "ms_per_step": float("nan"),
            "diverged": False,
            "error": None,
        }
        t0 = time.perf_counter()
        try:
            losses = fit(model, train_x.to(device), steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed)
        except (SeriesNotConverged, ValueError, torch.linalg.LinAlgError) as e:  # ValueError: NaN reached a layer
            record.update(diverged=True, error=f"{type(e).__name__}: {e}")
            return record
        record["ms_per_step"] = 1000 * (time.perf_counter() - t0) / s["steps"]
        tail = losses[-max(1, len(losses) // 10) :]
        record["train_nll"] = sum(tail) / len(tail)
        model.eval()
        with torch.no_grad():
            record["test_nll"] = (-model.log_prob(test_x.to(device)).mean() / dims).item()
        if not (math.isfinite(record["test_nll"]) and math.isfinite(record["train_nll"])):
            record.update(diverged=True, error="non-finite loss")
        return record

    records = run_grid(
        ARMS,
        seeds,
        runs,
        one,
        lambda a, seed: {**s, "hidden": budget["widths"][a.name], **a.settings},
        device,
        f"graph {scale}",
        log_line(quiet),
    )
    rows = aggregate(records, ARMS, ["test_nll", "train_nll", "ms_per_step", "params"])
    by = {r["arm"]: r for r in rows}
    holds, resolved, detail = ordering([diff_note(by, "test_nll", "convexp", "no-convexp")])
    notes = [
        SCALE_CAVEAT[scale].replace("synthetic data", "synthetic graphs"),
        paper_note(scale, holds, "the graph convolution exponential lowers the test NLL", detail, resolved),
    ]
    if scale == "paper":
        notes.append("The paper's graph data sets are not bundled: 'paper' scale here is a larger synthetic setting.")
    notes += diverged_notes(rows)

    table = markdown_table(
        rows,
        [
            ("model", lambda r: r["label"]),
            ("test NLL (nats/dim)", lambda r: mean_std(r, "test_nll", 4)),
            ("train NLL, last 10% of steps", lambda r: mean_std(r, "train_nll", 4)),
            ("ms / step", lambda r: mean_std(r, "ms_per_step", 1)),
            PARAMS_COLUMN,
            DIVERGED_COLUMN,
        ],
    )
    data_text = (
        f"make_graph_dataset(num_samples={s['n_train'] + s['n_test']}, num_nodes={s['nodes']}, "
        f"features={s['features']}, seed=0), first {s['n_train']} samples train, last {s['n_test']} test"
    )
    protocol = protocol_text(__doc__, f"{s}; data: {data_text}.")
    info = result_info(TITLE, command, scale, seeds, device, protocol, settings=s, data=data_text, budget=budget)

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        ax1.bar(
            [r["label"] for r in rows],
            [r["test_nll_mean"] for r in rows],
            yerr=[r["test_nll_std"] for r in rows],
            capsize=3,
        )
        ax1.set_ylabel("test NLL, nats per node feature (lower is better)")
        for arm in ARMS:
            nll = [r["test_nll"] for r in records if r["arm"] == arm.name]
            ax2.plot(range(len(nll)), nll, "o", label=arm.label)
        ax2.set_xlabel("seed")
        ax2.set_ylabel("test NLL per seed")
        ax2.legend(fontsize=7)
        fig.suptitle(f"{TITLE} ({scale}, {seeds} seeds)")

    body = "## Results\n\n" + table + "\n\n" + budget_markdown(budget, {a.name: a.label for a in ARMS})
    return write_results(out, "graph", scale, info, rows, records, body, notes, plot)
