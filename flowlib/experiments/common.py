"""Shared machinery of the experiments: seeds, resumable runs, budgets, aggregation, result files.

An experiment module (``mixing``, ``residual``, ``stability``, ``graph``) describes its
*arms* (the settings being compared) and a function that trains one ``(arm, seed)`` and
returns a flat dict of numbers. :func:`run_grid` runs every arm for every seed, storing
each finished run as ``<runs>/<arm>/seed<k>/result.json`` (written atomically) so that an
interrupted experiment continues where it stopped and never re-runs a finished run.
:func:`aggregate` turns the runs into ``mean ± std`` per arm, and :func:`write_results`
writes ``<out>/<experiment>-<scale>.json``, ``.csv``, ``.md`` and ``.png``, each naming
the command, scale, device, torch version and date that produced it. :func:`result_info`
assembles that provenance with the protocol (:func:`protocol_text`: the experiment module's
docstring and this run's settings); :data:`PARAMS_COLUMN`, :data:`DIVERGED_COLUMN` and
:func:`diverged_notes` are the table columns and the note every experiment shares.

Parameter budgets: :func:`match_budget` chooses, for every arm, the conditioner width
whose model has the parameter count closest to a common target (the official mixing
commands do the same by hand, DenseNet growth 64 for 1x1 convolutions and 63 for the
others), and :func:`check_budget` refuses to run when the counts differ by more than 5%.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = [
    "SCALES",
    "MIN_SEEDS",
    "BUDGET_TOLERANCE",
    "DIVERGED_BPD",
    "ExperimentError",
    "BudgetError",
    "Arm",
    "environment",
    "resolve_device",
    "device_name",
    "command_line",
    "match_budget",
    "check_budget",
    "run_grid",
    "aggregate",
    "fmt",
    "markdown_table",
    "write_results",
    "cifar_subset",
    "count_parameters",
    "image_run",
    "image_budget",
    "budget_markdown",
    "image_data",
    "spec_of",
    "diff_note",
    "Comparison",
    "ordering",
    "mean_std",
    "log_line",
    "SCALE_CAVEAT",
    "PARAMS_COLUMN",
    "DIVERGED_COLUMN",
    "diverged_notes",
    "paper_note",
    "protocol_text",
    "result_info",
    "image_scale",
    "image_grid",
    "image_info",
]

SCALES = ("ci", "cpu-real", "gpu-small", "paper")
CPU_SCALES = ("ci", "cpu-real")  # run on one torch thread on a CPU (small models gain nothing from more)
MIN_SEEDS = 3
BUDGET_TOLERANCE = 0.05  # parameter counts of the arms may differ by at most 5% (max / min - 1)
DIVERGED_BPD = 8.0  # a model worse than uniform over 256 levels (8 bits/dim) has diverged
SCALE_CAVEAT = {
    "ci": "**ci scale is far too small for conclusions**: tiny models, a few optimizer steps and tiny "
    "synthetic data, run on a CPU only to show that the pipeline works end to end. Do not read any "
    "ordering below as evidence for or against the papers.",
    "cpu-real": "cpu-real scale: small models trained for a few hundred steps (minutes) each on one CPU thread, on a "
    "fixed subset of the real CIFAR-10 **downsampled to 16x16** (2x2 average pooling): bits/dim are per "
    "dimension of the 16x16 images and must not be compared with the papers' 32x32 numbers; only the "
    "ORDERING of the arms is compared with the papers, and short training can order arms differently "
    "from fully trained models.",
    "gpu-small": "gpu-small scale: small models trained for a few minutes each on a fixed CIFAR-10 subset; "
    "orderings can differ from the papers' fully trained models.",
    "paper": "paper scale: the official model sizes and schedules.",
}


class ExperimentError(ValueError):
    """A bad experiment name, scale, seed count or data path; the message says what to do."""


class BudgetError(ExperimentError):
    """The arms' parameter counts differ by more than :data:`BUDGET_TOLERANCE`."""


@dataclass
class Arm:
    """One setting of an experiment: a name (directory-safe), a display label and its settings."""

    name: str
    label: str
    settings: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; ``"cuda"`` without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ExperimentError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_name(device: str) -> str:
    """The GPU model (``torch.cuda.get_device_name``) or ``"cpu"``."""
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def environment(device: str) -> dict:
    """Device name, torch version and the current UTC date and time."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command_line(name: str, scale: str, seeds: int, extra: dict) -> str:
    """The shell command that reproduces a call of :func:`flowlib.experiments.run`."""
    args = [name, "--scale", scale, "--seeds", str(seeds)]
    for key, value in extra.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return "python -m flowlib.experiments " + shlex.join(args)


# ------------------------------------------------------------------------------------------
# Parameter budgets
# ------------------------------------------------------------------------------------------


def count_parameters(build: Callable[[], torch.nn.Module]) -> int:
    """Trainable parameters of ``build()``; built on the ``meta`` device when possible (no memory)."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # some constructors compute on real tensors (QR, LU): build for real
        model = build()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def match_budget(
    arms: list[Arm],
    count: Callable[[Arm, int | None], int],
    knob: Callable[[Arm], str | None],
    base_width: Callable[[Arm], int],
) -> dict:
    """Choose each arm's conditioner width so that all parameter counts are as equal as possible.

    ``knob(arm)`` names the width field the arm may change (``None``: fixed), ``count(arm,
    width)`` gives its parameter count at that width. The target is the largest count among
    the fixed arms, or, if every arm has a knob, the largest count at the base widths; each
    arm with a knob then gets the width (found by bisection, counts grow with width) whose
    count is closest to the target. Returns ``{"target", "widths", "knobs", "counts"}``.
    """
    base = {a.name: count(a, base_width(a)) for a in arms}
    fixed = [base[a.name] for a in arms if knob(a) is None]
    target = max(fixed) if fixed else max(base.values())
    widths, counts = {}, {}
    for a in arms:
        if knob(a) is None:
            widths[a.name], counts[a.name] = None, base[a.name]
            continue
        lo, hi = 1, max(2, base_width(a))
        while count(a, hi) < target and hi < 64 * base_width(a):
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # invariant: count(lo) < target <= count(hi), unless lo == 1 already exceeds it
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if count(a, mid) < target else (lo, mid)
        best = min((lo, hi), key=lambda w: abs(count(a, w) - target))
        widths[a.name], counts[a.name] = best, count(a, best)
    return {"target": target, "widths": widths, "knobs": {a.name: knob(a) for a in arms}, "counts": counts}


def check_budget(counts: dict[str, int], tolerance: float = BUDGET_TOLERANCE, what: str = "arms") -> dict:
    """``{"counts", "spread", "tolerance", "within"}``; raises :class:`BudgetError` if the spread is too large.

    ``spread = max / min - 1`` over the parameter counts of the compared arms.
    """
    spread = max(counts.values()) / min(counts.values()) - 1
    if spread > tolerance:
        listing = ", ".join(f"{k}: {v:,}" for k, v in counts.items())
        raise BudgetError(
            f"parameter counts of the {what} differ by {100 * spread:.1f}% (> {100 * tolerance:.0f}%): "
            f"{listing}; widen the search of the width knob or change the base widths"
        )
    return {"counts": dict(counts), "spread": spread, "tolerance": tolerance, "within": True}


# ------------------------------------------------------------------------------------------
# Running seeds, resumably
# ------------------------------------------------------------------------------------------


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file + rename): an interruption never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _jsonable(obj):
    """Round-trip through JSON so that comparisons see lists, not tuples."""
    return json.loads(json.dumps(obj, default=_json_default))


def run_grid(
    arms: list[Arm],
    seeds: int,
    runs_dir: Path,
    run_one: Callable[[Arm, int, Path], dict],
    spec: Callable[[Arm, int], dict],
    device: str,
    label: str,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run ``run_one(arm, seed, run_dir)`` for every arm and seed ``0..seeds-1``; return all records.

    A run whose ``result.json`` exists is loaded, not re-run. ``spec(arm, seed)`` (the exact
    settings) is written to ``spec.json`` before a run starts; a stored run with different
    settings raises :class:`ExperimentError` rather than mixing protocols in one table.
    Prints one line per run (``label``, arm, seed, the headline numbers, seconds).
    """
    records, total, done = [], len(arms) * seeds, 0
    for arm in arms:
        for seed in range(seeds):
            done += 1
            run_dir = runs_dir / arm.name / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            want = _jsonable(spec(arm, seed))
            spec_path, result_path = run_dir / "spec.json", run_dir / "result.json"
            if spec_path.exists() and json.loads(spec_path.read_text()) != want:
                raise ExperimentError(
                    f"{run_dir} holds a run with other settings (see its spec.json); delete that directory "
                    "or pass another --runs directory"
                )
            _write_json(spec_path, want)
            if result_path.exists():
                record = json.loads(result_path.read_text())
                log(f"[{label}] {done}/{total} {arm.name} seed {seed}: done before, loaded {result_path}")
            else:
                t0 = time.perf_counter()
                record = {
                    "arm": arm.name,
                    "seed": seed,
                    **run_one(arm, seed, run_dir),
                    "run_s": round(time.perf_counter() - t0, 2),
                    **environment(device),
                }
                _write_json(result_path, record)
                head = ", ".join(
                    f"{k} {fmt(v)}" for k, v in record.items() if k in ("test_bpd", "test_nll", "diverged", "params")
                )
                log(f"[{label}] {done}/{total} {arm.name} seed {seed}: {head} ({record['run_s']:.1f} s)")
            records.append(record)
    return records


# ------------------------------------------------------------------------------------------
# Aggregation and rendering
# ------------------------------------------------------------------------------------------


def aggregate(records: list[dict], arms: list[Arm], metrics: list[str]) -> list[dict]:
    """Per arm: ``n`` seeds, and for each metric ``<m>_mean``, ``<m>_std`` (sample std) and ``<m>_n``.

    Non-finite values (diverged runs) are left out of mean and std and counted by ``<m>_n``;
    ``diverged_frac`` is the fraction of seeds that diverged (when records have ``diverged``).
    """
    rows = []
    for arm in arms:
        runs = [r for r in records if r["arm"] == arm.name]
        row = {"arm": arm.name, "label": arm.label, "n": len(runs), **arm.settings}
        for m in metrics:
            vals = [float(r[m]) for r in runs if r.get(m) is not None and math.isfinite(float(r[m]))]
            t = torch.tensor(vals, dtype=torch.float64)
            row[f"{m}_mean"] = t.mean().item() if vals else float("nan")
            row[f"{m}_std"] = t.std().item() if len(vals) > 1 else float("nan")
            row[f"{m}_n"] = len(vals)
        if runs and "diverged" in runs[0]:
            row["diverged_frac"] = sum(bool(r["diverged"]) for r in runs) / len(runs)
        rows.append(row)
    return rows


def fmt(value, digits: int = 3) -> str:
    """A number for a table: ints with thousands separators, floats to ``digits`` decimals."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def mean_std(row: dict, metric: str, digits: int = 3) -> str:
    """``"mean ± std"`` of an aggregated metric (``"(k/n)"`` appended when runs were left out)."""
    mean, std, k = row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"]
    if k == 0:
        return "—"
    text = f"{fmt(mean, digits)} ± {fmt(std, digits)}" if k > 1 else fmt(mean, digits)
    return text if k == row["n"] else f"{text} ({k}/{row['n']})"


def markdown_table(rows: list[dict], columns: list[tuple[str, Callable[[dict], str]]]) -> str:
    """A GitHub markdown table; ``columns`` are ``(header, row -> text)``."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f(r) for _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


# The table column of an aggregated row's parameter count ("—" when no run reported one).
PARAMS_COLUMN = ("parameters", lambda r: fmt(int(r["params_mean"])) if r["params_n"] else "—")
# The table column of the fraction of an arm's runs that diverged.
DIVERGED_COLUMN = ("diverged", lambda r: f"{r['diverged_frac']:.0%}")


def diverged_notes(rows: list[dict]) -> list[str]:
    """The note naming the arms with diverged runs and the fraction of each; no note when none diverged."""
    diverged = [r for r in rows if r.get("diverged_frac", 0) > 0]
    if not diverged:
        return []
    listing = ", ".join(f"{r['label']} {r['diverged_frac']:.0%}" for r in diverged)
    return [f"Runs that diverged (left out of the means): {listing}."]


def paper_note(scale: str, holds: bool, claim: str, detail: str, resolved: bool = True) -> str:
    """One note comparing an ordering with a paper's ``claim``, worded by scale and by seed noise.

    At ``ci`` scale the numbers are no evidence, so the note only reports whether the
    ordering holds in them ("Ordering only, ci scale ..."). At the other scales it says
    ``Agrees with the paper`` or ``DISAGREES with the paper`` only when ``resolved`` (the
    deciding gaps exceed the pooled seed std, see :func:`ordering`), and otherwise
    ``Not resolved by these seeds``: the means' ordering is reported but claims nothing.
    ``detail`` (gaps and seed stds, :func:`diff_note`) follows.
    """
    if scale == "ci":
        verdict = "holds" if holds else "does not hold"
        return f"Ordering only, ci scale (no evidence either way): '{claim}' {verdict} in these numbers: {detail}."
    if not resolved:
        means = "follow" if holds else "do not follow"
        return (
            f"Not resolved by these seeds ({claim}): the means {means} the paper's ordering, "
            f"but a deciding gap is within the pooled seed std: {detail}."
        )
    return f"{'Agrees with the paper' if holds else 'DISAGREES with the paper'} ({claim}): {detail}."


def ordering(comparisons: list[Comparison]) -> tuple[bool, bool, str]:
    """``(holds, resolved, detail)`` of a paper's claim that arm ``a`` beats each ``b`` of the comparisons.

    ``holds``: ``a`` has the better mean in every comparison. ``resolved``: if it holds, every
    gap exceeds the pooled seed std; if not, some comparison goes against the paper by more
    than the pooled seed std. ``detail`` joins the comparisons' sentences.
    """
    holds = all(c.better for c in comparisons)
    if holds:
        resolved = all(c.resolved for c in comparisons)
    else:
        resolved = any(c.resolved and not c.better for c in comparisons)
    return holds, resolved, "; ".join(c.text for c in comparisons)


def protocol_text(doc: str, this_run: str) -> str:
    """The protocol of a result file: a module docstring without its title line, then ``This run: ...``."""
    return doc.split("\n\n", 1)[1].strip() + f"\n\nThis run: {this_run}"


def result_info(title: str, command: str, scale: str, seeds: int, device: str, protocol: str, **settings) -> dict:
    """The ``info`` of :func:`write_results`: provenance, protocol and the experiment's settings.

    In this order: title, command, scale, seeds, the :func:`environment` of ``device`` (device
    name, torch version, date), protocol, then ``settings``.
    """
    return {
        "title": title,
        "command": command,
        "scale": scale,
        "seeds": seeds,
        **environment(device),
        "protocol": protocol,
        **settings,
    }


def write_results(
    out: Path,
    name: str,
    scale: str,
    info: dict,
    rows: list[dict],
    records: list[dict],
    markdown_body: str,
    notes: list[str],
    plot: Callable[[object], None],
) -> dict[str, Path]:
    """Write ``<name>-<scale>.json/.csv/.md/.png`` into ``out``; return their paths.

    ``info`` holds the provenance (``command``, ``device``, ``torch``, ``date``) and the
    protocol and settings; every file repeats the provenance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{scale}"
    prov = {k: info[k] for k in ("command", "scale", "device", "torch", "date")}
    paths = {ext: stem.with_suffix(f".{ext}") for ext in ("json", "csv", "md", "png")}

    _write_json(paths["json"], {"experiment": name, **info, "notes": notes, "arms": rows, "runs": records})

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*keys, *prov])
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: r.get(k, "") for k in keys}, **prov})

    devices = sorted({r.get("device", "?") for r in records})
    header = (
        f"# {info['title']} ({scale})\n\n"
        f"- command: `{info['command']}`\n- scale: {scale}\n- device: {info['device']}"
        + (f" (runs: {', '.join(devices)})" if devices != [info["device"]] else "")
        + f"\n- torch: {info['torch']}\n- date: {info['date']}\n"
        f"- seeds: {info['seeds']} per arm; mean ± sample std over seeds\n"
    )
    md = (
        f"{header}\n## Protocol\n\n{info['protocol']}\n\n{markdown_body}\n\n## Notes\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )
    paths["md"].write_text(md)

    fig = plt.figure(figsize=(9, 4.8))
    plot(fig)
    fig.text(
        0.01,
        0.005,
        f"{info['command']} | {info['device']} | torch {info['torch']} | {info['date']}",
        fontsize=6,
        color="0.4",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(paths["png"], dpi=110, metadata={"Description": json.dumps(prov)})
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------
# Data and image-model runs (shared by mixing, residual and stability)
# ------------------------------------------------------------------------------------------


def cifar_subset(source, dest: Path, n_test: int, pool: int = 1) -> Path:
    """A CIFAR-format subset: train = ``data_batch_1[:5 n_test]``, test = ``test_batch[:n_test]``.

    Only ``data_batch_1``, ``test_batch`` and ``batches.meta`` of ``source`` are read, so the
    subset can be made where only those files travel. The format's six files have equal
    sizes, so the subset holds ``5 n_test`` train images (``n_test = 2000``: all of
    ``data_batch_1``) and ``n_test`` test images. With ``pool > 1`` the images are
    downsampled by :func:`flowlib.data.average_pool` (``pool = 2``: 3x16x16). Written once
    and reused.
    """
    from flowlib import data

    if (dest / "test_batch").exists():
        return dest
    source = Path(source).expanduser()
    if not (source / "data_batch_1").exists() and (source / "cifar-10-batches-py" / "data_batch_1").exists():
        source = source / "cifar-10-batches-py"
    for name in ("batches.meta", "data_batch_1", "test_batch"):
        if not (source / name).exists():
            raise ExperimentError(
                f"CIFAR-10 subset: {source / name} is missing; --data-dir must point to a "
                "cifar-10-batches-py directory holding at least batches.meta, data_batch_1 "
                "and test_batch"
            )
    rows, side = data.read_cifar_meta(source / "batches.meta")
    train_x, train_y = data.read_cifar_batch(source / "data_batch_1", rows, side)
    test_x, test_y = data.read_cifar_batch(source / "test_batch", rows, side)
    n_train = 5 * n_test
    if n_train > len(train_x) or n_test > len(test_x):
        raise ExperimentError(
            f"CIFAR-10 subset needs {n_train} train and {n_test} test images; "
            f"data_batch_1 has {len(train_x)} and test_batch {len(test_x)}"
        )
    import numpy as np

    train = data.average_pool(torch.from_numpy(train_x[:n_train]).view(-1, 3, side, side), pool)
    test = data.average_pool(torch.from_numpy(test_x[:n_test]).view(-1, 3, side, side), pool)
    data.write_cifar_batches(dest, torch.cat([train, test]), np.concatenate([train_y[:n_train], test_y[:n_test]]))
    return dest


def image_run(preset: str, model: dict, train: dict, seed: int, run_dir: Path, device: str, sample_n: int) -> dict:
    """Train one image model with :func:`flowlib.train.train` and measure it.

    Returns ``params``, ``train_bpd``, ``test_bpd`` (and ``test_bpd_iw``), ``train_images_per_s``,
    ``ms_per_step``, ``epoch_s`` (time of one pass over the training set at that speed),
    ``sample_images_per_s`` (a timed ``model.sample(sample_n)`` after one warm-up call),
    ``diverged`` (a non-finite loss, a series or solver failure, or test bpd above
    :data:`DIVERGED_BPD`) and ``error`` (the message of a failure). A run interrupted by
    Ctrl-C raises ``KeyboardInterrupt`` so nothing half-done is recorded; re-running
    continues it from its ``last.pt``.
    """
    from flowlib.functional import SeriesNotConverged
    from flowlib.train import NonFiniteError, TrainConfig
    from flowlib.train import train as train_fn

    resume = (run_dir / "train" / "last.pt").exists()  # an unfinished run continues; one without a checkpoint restarts
    cfg = TrainConfig.for_preset(
        preset,
        **{"n_samples": 4, "temperatures": (1.0,), "progress": False, "iw_samples": 0, **train},
        model=model,
        seed=seed,
        device=device,
        out=str(run_dir / "train"),
        resume=resume,
        overwrite=not resume,
        on_nonfinite="stop",
    )
    record = {
        "params": None,
        "train_bpd": float("nan"),
        "test_bpd": float("nan"),
        "train_images_per_s": float("nan"),
        "ms_per_step": float("nan"),
        "epoch_s": float("nan"),
        "sample_images_per_s": float("nan"),
        "diverged": False,
        "error": None,
    }
    try:
        summary = train_fn(cfg)
    except (NonFiniteError, SeriesNotConverged, torch.linalg.LinAlgError) as e:
        record.update(diverged=True, error=f"{type(e).__name__}: {e}")
        return record
    if summary["interrupted"]:
        raise KeyboardInterrupt(f"training of {run_dir} was interrupted; run the same command again to continue")
    net = summary.pop("model")
    ips = summary["images_per_s"]
    steps_per_epoch = json.loads((run_dir / "train" / "config.json").read_text())["steps_per_epoch"]
    record.update(
        params=summary["n_params"],
        train_bpd=summary["train_bpd"],
        test_bpd=summary["test_bpd"],
        train_images_per_s=ips,
        ms_per_step=1000 * cfg.batch_size / ips,
        epoch_s=steps_per_epoch * cfg.batch_size / ips,
    )
    if "test_bpd_iw" in summary:
        record["test_bpd_iw"] = summary["test_bpd_iw"]
    if not math.isfinite(summary["test_bpd"]) or summary["test_bpd"] > DIVERGED_BPD:
        record.update(diverged=True, error=f"test bpd {summary['test_bpd']} > {DIVERGED_BPD}")
    net.eval()
    try:
        g = torch.Generator(device=device).manual_seed(seed)
        net.sample(min(sample_n, 8), generator=g)  # warm-up (kernels, caches)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        net.sample(sample_n, generator=g)
        if device == "cuda":
            torch.cuda.synchronize()
        record["sample_images_per_s"] = sample_n / (time.perf_counter() - t0)
    except (SeriesNotConverged, torch.linalg.LinAlgError, ValueError) as e:
        record["error"] = f"sampling failed: {type(e).__name__}: {e}"
    return record


def image_budget(
    arms: list[Arm],
    preset: str,
    model: Callable[[Arm], dict],
    knob: Callable[[Arm], str | None],
    base_width: Callable[[Arm], int],
) -> tuple[dict, dict[str, dict]]:
    """Match the arms' parameter budgets (:func:`match_budget`) and check it (:func:`check_budget`).

    ``model(arm)`` gives the arm's :class:`flowlib.models.ModelConfig` overrides of ``preset``;
    the width field ``knob(arm)`` is then set to the matched width. Returns the budget record
    (target, knobs, widths, counts, spread, tolerance) and each arm's final overrides.
    """
    from flowlib.models import build_model

    cache: dict = {}

    def overrides(arm: Arm, width: int | None) -> dict:
        return {**model(arm), **({knob(arm): width} if knob(arm) is not None and width is not None else {})}

    def count(arm: Arm, width: int | None) -> int:
        key = json.dumps(overrides(arm, width), sort_keys=True, default=_json_default)
        if key not in cache:
            cache[key] = count_parameters(lambda: build_model(preset, **overrides(arm, width)))
        return cache[key]

    matched = match_budget(arms, count, knob, base_width)
    budget = {**matched, **check_budget(matched["counts"])}
    return budget, {a.name: overrides(a, matched["widths"][a.name]) for a in arms}


def budget_markdown(budget: dict, labels: dict[str, str], group: str | None = None) -> str:
    """The parameter-budget section: per arm the width knob, its value and the parameter count.

    ``group`` names the arms a budget was matched within (heading ``## Parameter budget (group)``)
    when an experiment matches several groups separately.
    """
    rows = [
        {
            "arm": labels[k],
            "knob": budget["knobs"][k] or "(fixed)",
            "width": "—" if budget["widths"][k] is None else str(budget["widths"][k]),
            "count": v,
        }
        for k, v in budget["counts"].items()
    ]
    table = markdown_table(
        rows,
        [
            ("arm", lambda r: r["arm"]),
            ("width knob", lambda r: r["knob"]),
            ("width", lambda r: r["width"]),
            ("parameters", lambda r: fmt(r["count"])),
        ],
    )
    heading = "## Parameter budget" + (f" ({group})" if group else "")
    return (
        f"{heading}\n\nTarget {budget['target']:,} parameters; spread max/min − 1 = "
        f"{100 * budget['spread']:.2f}% (tolerance {100 * budget['tolerance']:.0f}%: checked, within).\n\n{table}"
    )


# What every image experiment shares at a scale: test images (``n_test``, see :func:`image_data`;
# an experiment may use fewer), the downsampling factor of the CIFAR-10 subset (``pool``), images
# per timed sampling call (``sample_n``), model overrides (image shape; at ci two levels) and, at
# ci and paper scale, the training schedule (cpu-real and gpu-small step counts differ per experiment).
_IMAGE_SCALES = {
    "ci": dict(
        n_test=0,
        pool=1,
        sample_n=16,
        model=dict(image_shape=(3, 8, 8), n_subflows=2),
        train=dict(steps=20, batch_size=32, log_every=10, eval_every=10**6, save_every=10**6),
    ),
    "cpu-real": dict(n_test=2000, pool=2, sample_n=16, model=dict(image_shape=(3, 16, 16))),
    "gpu-small": dict(n_test=2000, pool=1, sample_n=64, model=dict(image_shape=(3, 32, 32))),
    "paper": dict(
        n_test=10000,
        pool=1,
        sample_n=256,
        model=dict(image_shape=(3, 32, 32)),
        train=dict(steps=195_000, batch_size=256, iw_samples=1000),
    ),
}


def image_scale(
    scale: str,
    preset: str,
    model: dict | None = None,
    train: dict | None = None,
    n_test: int | None = None,
    **settings,
) -> dict:
    """One scale's settings of an image experiment (mixing, residual, stability).

    ``{"preset", **settings, "n_test", "pool", "sample_n", "model", "train"}``: ``n_test``
    (unless given: an experiment may test on fewer images), ``pool``, ``sample_n`` and the
    shared model overrides come from the scale (the same for every image experiment),
    followed in ``model`` by the experiment's own overrides; ``train`` is the scale's shared
    schedule (ci, paper) unless given, and must be given at cpu-real and gpu-small.
    ``settings`` are the experiment's own (width knob and base width, learning rates).
    """
    shared = _IMAGE_SCALES[scale]
    if train is None and "train" not in shared:
        raise ValueError(f"image_scale({scale!r}, ...): this scale has no shared schedule; pass train=dict(...)")
    return {
        "preset": preset,
        **settings,
        "n_test": shared["n_test"] if n_test is None else n_test,
        "pool": shared["pool"],
        "sample_n": shared["sample_n"],
        "model": {**shared["model"], **(model or {})},
        "train": dict(shared["train"] if train is None else train),
    }


def image_grid(
    arms: list[Arm],
    seeds: int,
    runs: Path,
    s: dict,
    data: dict,
    models: dict[str, dict],
    device: str,
    label: str,
    quiet: bool,
) -> list[dict]:
    """:func:`run_grid` over image arms, each run an :func:`image_run`.

    Arm ``a`` trains the model ``models[a.name]`` (overrides of the preset ``s["preset"]``)
    with the scale's schedule ``s["train"]`` on ``data`` (:func:`image_data`); an arm with an
    ``lr`` setting trains at that learning rate. A run's spec (:func:`spec_of`) holds the
    preset, the model overrides and the schedule with that learning rate.
    """

    def schedule(arm: Arm) -> dict:
        return {**s["train"], "lr": arm.settings["lr"]} if "lr" in arm.settings else s["train"]

    def one(arm: Arm, seed: int, run_dir: Path) -> dict:
        return image_run(s["preset"], models[arm.name], {**schedule(arm), **data}, seed, run_dir, device, s["sample_n"])

    def spec(arm: Arm, seed: int) -> dict:
        return spec_of(data, preset=s["preset"], model=models[arm.name], train=schedule(arm))

    return run_grid(arms, seeds, runs, one, spec, device, label, log_line(quiet))


def image_info(
    title: str,
    command: str,
    scale: str,
    seeds: int,
    device: str,
    doc: str,
    s: dict,
    data_text: str,
    budget: dict,
    **extra,
) -> dict:
    """:func:`result_info` of an image experiment whose module docstring is ``doc``.

    The protocol ends with this run's preset, data, schedule and model overrides; the settings
    are ``preset``, ``model_overrides``, ``train``, then ``extra``, ``data`` and ``budget``.
    """
    this_run = (
        f"preset `{s['preset']}`, data: {data_text}; training settings {s['train']}; model overrides {s['model']}."
    )
    return result_info(
        title,
        command,
        scale,
        seeds,
        device,
        protocol_text(doc, this_run),
        preset=s["preset"],
        model_overrides=s["model"],
        train=s["train"],
        **extra,
        data=data_text,
        budget=budget,
    )


def log_line(quiet: bool) -> Callable[[str], None]:
    """``print`` to stderr (flushed), or nothing when ``quiet``."""
    return (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))


def image_data(scale: str, data_dir, runs_root: Path, n_test: int, pool: int = 1) -> tuple[dict, str]:
    """The trainer's data settings for a scale and a one-line description of the data.

    ``ci``: the embedded synthetic 3x8x8 set (2,000 train, 500 test). ``cpu-real`` and
    ``gpu-small``: the :func:`cifar_subset` of ``data_dir`` (train = ``data_batch_1[:5 n_test]``,
    test = ``test_batch[:n_test]``, downsampled ``pool`` x ``pool``), written once under
    ``runs_root``. ``paper``: the full CIFAR-10 in ``data_dir``.
    """
    if scale == "ci":
        return {"dataset": "synthetic"}, "flowlib.data synthetic 3x8x8 (2,000 train / 500 test images)"
    if data_dir is None:
        raise ExperimentError(
            f"--scale {scale} trains on CIFAR-10: pass --data-dir pointing to a cifar-10-batches-py "
            "directory (cpu-real and gpu-small read only batches.meta, data_batch_1 and test_batch)"
        )
    if scale in ("cpu-real", "gpu-small"):
        name = f"cifar10-subset-{n_test}" + (f"-pool{pool}" if pool > 1 else "")
        subset = cifar_subset(data_dir, runs_root / name, n_test, pool)
        side = 32 // pool
        return (
            {"dataset": "cifar10", "data_dir": str(subset)},
            f"CIFAR-10 subset: train = first {5 * n_test:,} images of data_batch_1, "
            f"test = first {n_test:,} images of test_batch"
            + (f", downsampled to 3x{side}x{side} by {pool}x{pool} average pooling" if pool > 1 else ""),
        )
    return {"dataset": "cifar10", "data_dir": str(data_dir)}, "CIFAR-10 (50,000 train / 10,000 test images)"


def spec_of(data: dict, **parts) -> dict:
    """The settings that identify a run (data directory paths left out, so runs can move machines)."""
    return {"data": {k: v for k, v in data.items() if k != "data_dir"}, **parts}


class Comparison(NamedTuple):
    """Arm ``a`` against arm ``b`` on one metric (:func:`diff_note`)."""

    better: bool  # a's mean is better than b's
    resolved: bool  # the gap exceeds the pooled seed std
    text: str  # both means, the gap and the pooled std, in a sentence


def diff_note(rows: dict[str, dict], metric: str, a: str, b: str, lower_better: bool = True) -> Comparison:
    """Whether arm ``a`` beats arm ``b`` on ``metric`` (means), beyond the seed noise, and a sentence saying so."""
    ra, rb = rows[a], rows[b]
    ma, mb = ra[f"{metric}_mean"], rb[f"{metric}_mean"]
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return Comparison(
            False, False, f"{ra['label']} vs {rb['label']}: not comparable (a mean is missing: all seeds diverged)"
        )
    better = ma < mb if lower_better else ma > mb
    sa, sb = ra[f"{metric}_std"], rb[f"{metric}_std"]
    pooled = math.sqrt(((sa if math.isfinite(sa) else 0) ** 2 + (sb if math.isfinite(sb) else 0) ** 2) / 2)
    resolved = abs(ma - mb) > pooled
    return Comparison(
        better,
        resolved,
        f"{ra['label']} {fmt(ma, 4)} vs {rb['label']} {fmt(mb, 4)} (gap {fmt(abs(ma - mb), 4)}, "
        f"{'larger' if resolved else 'smaller'} than the pooled seed std {fmt(pooled, 4)})",
    )
