"""Running every arm of an experiment for every seed, resumably, and averaging over the seeds.

An experiment module (``mixing``, ``residual``, ``stability``, ``graph``) describes its
*arms* (:class:`Arm`: the settings being compared) and a function that trains one
``(arm, seed)`` and returns a flat dict of numbers. :func:`run_grid` runs every arm for
every seed, storing each finished run as ``<runs>/<arm>/seed<k>/result.json`` (written
atomically, :func:`flowlib.experiments.report.write_json`) so that an interrupted experiment
continues where it stopped and never re-runs a finished run. :func:`aggregate` turns the
runs into mean and sample std per arm.

>>> rows = aggregate([{"arm": "a", "x": 1.0}, {"arm": "a", "x": 3.0}], [Arm("a", "A")], ["x"])
>>> rows[0]["x_mean"], rows[0]["x_std"], rows[0]["x_n"]
(2.0, 1.4142135623730951, 2)
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .provenance import environment
from .report import fmt, write_json

__all__ = ["MIN_SEEDS", "ExperimentError", "Arm", "run_grid", "aggregate", "log_line"]

MIN_SEEDS = 3


class ExperimentError(ValueError):
    """A bad experiment name, scale, seed count or data path; the message says what to do."""


@dataclass
class Arm:
    """One setting of an experiment: a name (directory-safe), a display label and its settings."""

    name: str
    label: str
    settings: dict = field(default_factory=dict)


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
            want = json.loads(json.dumps(spec(arm, seed)))  # as stored: lists, not tuples
            spec_path, result_path = run_dir / "spec.json", run_dir / "result.json"
            if spec_path.exists() and json.loads(spec_path.read_text()) != want:
                raise ExperimentError(
                    f"{run_dir} holds a run with other settings (see its spec.json); delete that directory "
                    "or pass another --runs directory"
                )
            write_json(spec_path, want)
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
                write_json(result_path, record)
                head = ", ".join(
                    f"{k} {fmt(v)}" for k, v in record.items() if k in ("test_bpd", "test_nll", "diverged", "params")
                )
                log(f"[{label}] {done}/{total} {arm.name} seed {seed}: {head} ({record['run_s']:.1f} s)")
            records.append(record)
    return records


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


def log_line(quiet: bool) -> Callable[[str], None]:
    """``print`` to stderr (flushed), or nothing when ``quiet``."""
    return (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
