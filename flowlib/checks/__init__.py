"""Checkers for the exercises in ``lessons/``: run the learner's function and name the mistake.

Each topic module (``flowlib.checks.matrix_exponential``, ...) has one
``check_<exercise>(fn)`` per implementation exercise. A checker calls ``fn`` on
a few fixed inputs (float64, seeded), compares with flowlib's own answer and, when
they differ, compares with what each *typical mistake* would have returned, so the
feedback can say "you stopped one term early" instead of "incorrect". It returns
a :class:`Feedback`, which renders as a coloured box in a notebook.

A skeleton that still raises ``NotImplementedError`` gives the status
``"not attempted"`` (with a hint) instead of an error, so a lesson committed with
empty skeletons runs top to bottom.

The shared machinery here:

* :class:`Feedback` - ``.ok``, ``.status``, ``.message``; ``bool(feedback) == feedback.ok``.
* :class:`Case` - one input, the expected output and the outputs of typical mistakes.
* :func:`run_cases` - call the learner's function on every case and build the feedback.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Feedback", "Case", "run_cases", "relative_error", "CORRECT", "INCORRECT", "NOT_ATTEMPTED", "ERROR"]

CORRECT, INCORRECT, NOT_ATTEMPTED, ERROR = "correct", "incorrect", "not attempted", "error"
_COLOURS = {CORRECT: "#e6f4ea", INCORRECT: "#fdecea", NOT_ATTEMPTED: "#f1f3f4", ERROR: "#fdecea"}
_ICONS = {CORRECT: "✔", INCORRECT: "✘", NOT_ATTEMPTED: "…", ERROR: "✘"}


@dataclass(frozen=True)
class Feedback:
    """The verdict of a checker: ``status`` is ``correct``, ``incorrect``, ``not attempted`` or ``error``."""

    exercise: str
    status: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == CORRECT

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return f"[{self.exercise}] {self.status}: {self.message}"

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return (
            f'<div class="flowlib-feedback flowlib-feedback-{self.status.replace(" ", "-")}" '
            f'style="background:{_COLOURS[self.status]};padding:6px 10px;border-radius:4px">'
            f"<b>{_ICONS[self.status]} {html.escape(self.exercise)}: {self.status}.</b> "
            f"{html.escape(self.message)}</div>"
        )


@dataclass
class Case:
    """One input for the learner's function.

    Arguments:
        label: how the feedback names this input, e.g. ``"a random 3x3 A with terms=4"``.
        args: positional arguments for the learner's function.
        expected: the correct output.
        mistakes: ``(message, output)`` for each typical mistake on this input; when the
            learner's output matches one of them, the feedback is that message.
    """

    label: str
    args: tuple
    expected: Tensor
    mistakes: list[tuple[str, Tensor]] = field(default_factory=list)


def relative_error(got: Tensor, want: Tensor) -> float:
    """``max |got - want| / max(1, max |want|)`` (absolute for small values, relative for large)."""
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    return float((got - want).abs().max()) / scale if want.numel() else 0.0


def _to_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64) if not value.is_complex() else value.detach()
    if isinstance(value, (float, int, np.floating, np.integer, np.ndarray)):
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    return None


def run_cases(
    exercise: str,
    fn: Callable,
    cases: list[Case],
    hint: str,
    success: str,
    tol: float = 1e-6,
) -> Feedback:
    """Call ``fn(*case.args)`` for every case and return the first failure, or success.

    Arguments:
        exercise: the exercise's name, shown in the feedback.
        fn: the learner's function.
        cases: the inputs with their expected outputs and typical mistakes.
        hint: what to do when ``fn`` still raises ``NotImplementedError``.
        success: the message when every case passes.
        tol: tolerance of :func:`relative_error` for a match (expected or mistake).
    """
    if not callable(fn):
        return Feedback(exercise, ERROR, f"expected a function, got {type(fn).__name__}: pass the function itself")
    for case in cases:
        args = tuple(a.clone() if isinstance(a, Tensor) else a for a in case.args)  # fn may modify its inputs
        try:
            result = fn(*args)
        except NotImplementedError:
            return Feedback(exercise, NOT_ATTEMPTED, f"the function still raises NotImplementedError. {hint}")
        except Exception as err:  # the learner's bug: report it instead of crashing the notebook
            return Feedback(exercise, ERROR, f"your function raised {type(err).__name__} on {case.label}: {err}")
        got = _to_tensor(result)
        if got is None:
            return Feedback(
                exercise,
                INCORRECT,
                f"on {case.label} your function returned a {type(result).__name__}; return a torch.Tensor "
                f"(or a number) of shape {list(case.expected.shape)}",
            )
        want = case.expected.to(torch.float64)
        if got.shape != want.shape:
            if got.numel() == want.numel() and got.numel() > 1:
                got = got.reshape(want.shape)
                note = f" (it returned shape {list(result.shape)}, reshaped to {list(want.shape)})"
            else:
                return Feedback(
                    exercise,
                    INCORRECT,
                    f"on {case.label} the result has shape {list(got.shape)}, expected {list(want.shape)}",
                )
        else:
            note = ""
        if got.is_complex():
            return Feedback(exercise, INCORRECT, f"on {case.label} the result is complex; the answer is real")
        if not torch.isfinite(got).all():
            return Feedback(exercise, INCORRECT, f"on {case.label} the result contains NaN or Inf")
        error = relative_error(got, want)
        if error <= tol:
            continue
        for message, wrong in case.mistakes:
            if wrong.shape == want.shape and relative_error(got, wrong.to(torch.float64)) <= tol:
                return Feedback(exercise, INCORRECT, f"on {case.label}: {message}{note}")
        return Feedback(
            exercise,
            INCORRECT,
            f"on {case.label} the result is off by {error:.3g} (relative; tolerance {tol:g}){note}. "
            f"Expected {_preview(want)}, got {_preview(got)}.",
        )
    return Feedback(exercise, CORRECT, success)


def _preview(t: Tensor, n: int = 4) -> str:
    flat = t.reshape(-1)
    items = ", ".join(f"{float(v):.4g}" for v in flat[:n])
    return f"[{items}{', ...' if flat.numel() > n else ''}]" if t.dim() else f"{float(t):.6g}"
