"""Checkers for the exercises in ``lessons/``: run the learner's function and name the mistake.

Each topic module (``flowlib.checks.matrix_exponential``, ...) has one
``check_<exercise>(fn)`` per implementation exercise. A checker calls ``fn`` on
a few fixed inputs (float64, seeded), compares with flowlib's own answer and, when
they differ, compares with what each *typical mistake* would have returned, so the
feedback can say "you stopped one term early" instead of "incorrect". It returns
a :class:`Feedback`, which renders as a coloured box in a notebook.

A skeleton that still raises ``NotImplementedError`` gives the status
``"not attempted"`` (with a hint that points to the idea, not to the formula)
instead of an error, so a lesson committed with empty skeletons runs top to bottom.

Besides each exercise's own typical mistakes, :func:`run_cases` names three that
every exercise can make:

* a **sign error** (the result is the negative of the answer),
* the **integer-factorial trap**: ``tensor / math.factorial(k)`` raises
  ``OverflowError`` once ``k! > 2**63`` (``k >= 21``), so a series that passes
  with few terms breaks with many (the series checkers use more than 20 terms),
* an **integer or low-precision result** (``int``/``bool`` tensors, or float32
  where float64 inputs were given).

A :class:`Case` can also say what a NaN or Inf means on its input (e.g.
``torch.logdet`` of a matrix with negative determinant).

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

__all__ = [
    "Feedback",
    "Case",
    "run_cases",
    "relative_error",
    "FACTORIAL_TRAP",
    "CORRECT",
    "INCORRECT",
    "NOT_ATTEMPTED",
    "ERROR",
]

CORRECT, INCORRECT, NOT_ATTEMPTED, ERROR = "correct", "incorrect", "not attempted", "error"
_COLOURS = {CORRECT: "#e6f4ea", INCORRECT: "#fdecea", NOT_ATTEMPTED: "#f1f3f4", ERROR: "#fdecea"}
_ICONS = {CORRECT: "✔", INCORRECT: "✘", NOT_ATTEMPTED: "…", ERROR: "✘"}

FACTORIAL_TRAP = (
    "This is the integer-factorial trap: math.factorial(k) is an exact Python int, and from k = 21 on it no "
    "longer fits into the 64-bit integer a tensor operation converts it to. Divide by a float instead, or "
    "better, get each term from the previous one (term / k) so that no factorial is formed at all"
)


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
        nonfinite: what a NaN or Inf in the learner's output means on this input (e.g. "det W < 0
            here: torch.logdet is NaN, use slogdet"); ``None`` gives a generic message.
        errors: ``(exception type, message)`` for exceptions that a typical mistake raises on this
            input; the message is added to the report of the exception.
    """

    label: str
    args: tuple
    expected: Tensor
    mistakes: list[tuple[str, Tensor]] = field(default_factory=list)
    nonfinite: str | None = None
    errors: list[tuple[type[Exception], str]] = field(default_factory=list)


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
        hint: where to look when ``fn`` still raises ``NotImplementedError``: the idea, not the formula.
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
            message = f"your function raised {type(err).__name__} on {case.label}: {err}"
            if _is_integer_overflow(err):
                message += f". {FACTORIAL_TRAP}"
            message += "".join(f". {text}" for kind, text in case.errors if isinstance(err, kind))
            return Feedback(exercise, ERROR, message)
        verdict = _compare(result, case, tol)
        if verdict is not None:
            return Feedback(exercise, INCORRECT, verdict)
    return Feedback(exercise, CORRECT, success)


def _is_integer_overflow(err: Exception) -> bool:
    """A Python int too big for a tensor or a float: ``tensor / math.factorial(21)`` raises ``OverflowError``
    ("int too big to convert"), ``float(math.factorial(171))`` "int too large to convert to float", and
    ``torch.tensor(math.factorial(21))`` ``ValueError`` ("Overflow when unpacking long long")."""
    text = str(err).lower()
    return (isinstance(err, OverflowError) and "int too" in text) or "overflow when unpacking" in text


def _compare(result: Any, case: Case, tol: float) -> str | None:
    """``None`` when ``result`` matches ``case.expected``; otherwise what is wrong, in words."""
    if isinstance(result, Tensor) and not (result.is_floating_point() or result.is_complex()):
        return (
            f"on {case.label} your function returned an integer tensor (dtype {result.dtype}); the answer is a "
            "real number: compute in floating point (the inputs are float64)"
        )
    got = _to_tensor(result)
    if got is None:
        return (
            f"on {case.label} your function returned a {type(result).__name__}; return a torch.Tensor "
            f"(or a number) of shape {list(case.expected.shape)}"
        )
    want = case.expected.to(torch.float64)
    note = ""
    if got.shape != want.shape:
        if got.numel() != want.numel() or got.numel() <= 1:
            return f"on {case.label} the result has shape {list(got.shape)}, expected {list(want.shape)}"
        got = got.reshape(want.shape)
        note = f" (it returned shape {list(result.shape)}, reshaped to {list(want.shape)})"
    if got.is_complex():
        return f"on {case.label} the result is complex; the answer is real"
    if not torch.isfinite(got).all():
        return (
            f"on {case.label}: {case.nonfinite}"
            if case.nonfinite
            else f"on {case.label} the result contains NaN or Inf"
        )
    error = relative_error(got, want)
    if error <= tol:
        return None
    for message, wrong in case.mistakes:
        if wrong.shape == want.shape and relative_error(got, wrong.to(torch.float64)) <= tol:
            return f"on {case.label}: {message}{note}"
    if relative_error(got, -want) <= tol:
        return f"on {case.label}: sign error, your result is the negative of the right answer{note}"
    if isinstance(result, Tensor) and result.dtype in (torch.float32, torch.float16, torch.bfloat16) and error < 1e-3:
        return (
            f"on {case.label} the result is {result.dtype} and off by {error:.1g}: that is rounding, not a "
            "wrong formula. Keep float64 (e.g. dtype=A.dtype when you create a tensor)"
        )
    return (
        f"on {case.label} the result is off by {error:.3g} (relative; tolerance {tol:g}){note}. "
        f"Expected {_preview(want)}, got {_preview(got)}."
    )


def _preview(t: Tensor, n: int = 4) -> str:
    flat = t.reshape(-1)
    items = ", ".join(f"{float(v):.4g}" for v in flat[:n])
    return f"[{items}{', ...' if flat.numel() > n else ''}]" if t.dim() else f"{float(t):.6g}"
