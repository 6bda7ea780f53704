"""Rendering an experiment's results: numbers, tables, the paper comparisons and the result files.

:func:`aggregate <flowlib.experiments.grid.aggregate>` rows become markdown tables
(:func:`markdown_table`, :func:`mean_std`, the shared columns :data:`PARAMS_COLUMN` and
:data:`DIVERGED_COLUMN`); :func:`diff_note`, :func:`ordering` and :func:`paper_note` word the
comparison with a paper's claim by scale and by seed noise; :func:`write_results` writes
``<out>/<experiment>-<scale>.json``, ``.csv``, ``.md`` and ``.png``, each naming the command,
scale, device, torch version and date that produced it.

>>> fmt(12345), fmt(0.123456), fmt(float("nan"))
('12,345', '0.123', 'nan')
>>> mean_std({"n": 3, "x_mean": 1.0, "x_std": 0.25, "x_n": 2}, "x", 2)
'1.00 ± 0.25 (2/3)'
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from flowlib.rundir import atomic_write

__all__ = [
    "fmt",
    "mean_std",
    "markdown_table",
    "PARAMS_COLUMN",
    "DIVERGED_COLUMN",
    "diverged_notes",
    "Comparison",
    "diff_note",
    "ordering",
    "paper_note",
    "write_results",
    "write_json",
]


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

    write_json(paths["json"], {"experiment": name, **info, "notes": notes, "arms": rows, "runs": records})

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


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically (:func:`flowlib.rundir.atomic_write`).

    Non-finite floats are written as ``NaN`` / ``Infinity`` (Python's ``json`` reads them back):
    an arm whose every seed diverged has a ``NaN`` mean in the result files.
    """
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())
