"""Parameter budgets: the arms of a comparison get (nearly) the same number of parameters.

:func:`match_budget` chooses, for every arm, the conditioner width whose model has the
parameter count closest to a common target (the official mixing commands do the same by
hand, DenseNet growth 64 for 1x1 convolutions and 63 for the others), and
:func:`check_budget` refuses to run when the counts differ by more than
:data:`BUDGET_TOLERANCE` (5%). :func:`image_budget` does both for image models,
:func:`budget_markdown` renders the result.

>>> check_budget({"a": 100, "b": 104})["within"]
True
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from .grid import Arm, ExperimentError
from .report import fmt, markdown_table

__all__ = [
    "BUDGET_TOLERANCE",
    "BudgetError",
    "count_parameters",
    "match_budget",
    "check_budget",
    "image_budget",
    "budget_markdown",
]

BUDGET_TOLERANCE = 0.05  # parameter counts of the arms may differ by at most 5% (max / min - 1)


class BudgetError(ExperimentError):
    """The arms' parameter counts differ by more than :data:`BUDGET_TOLERANCE`."""


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
        key = json.dumps(overrides(arm, width), sort_keys=True)
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
