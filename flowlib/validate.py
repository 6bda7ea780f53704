"""Checks of plain setting values, shared by the trainer's command line and ``TrainConfig``.

Each check raises :class:`ConfigError` with one message that names the setting both ways
(``lr (--lr)``), the allowed range and the value it got, so the command line can print it as
a usage error and Python callers get a ``ValueError`` naming the field::

    >>> from flowlib.validate import ConfigError, check_number
    >>> check_number("lr", 1e-3, low=0, low_open=True)
    >>> try:
    ...     check_number("lr", float("nan"), low=0, low_open=True)
    ... except ConfigError as e:
    ...     print(e)
    lr (--lr) must be a finite number > 0, got nan
"""

from __future__ import annotations

import math
import numbers

__all__ = ["ConfigError", "flag", "check_number", "check_int", "check_numbers"]


class ConfigError(ValueError):
    """A bad setting, found before training starts; the command line turns it into a usage error."""


def flag(name: str) -> str:
    """How messages name a setting: the field and its command-line flag, ``lr (--lr)``."""
    return f"{name} (--{name.replace('_', '-')})"


def _range(low, high, low_open: bool, high_open: bool) -> str:
    def show(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {show(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {show(high)}")
    return " and ".join(parts)


def check_number(name: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False) -> None:
    """``value`` must be a finite real number in the given range (bounds ``None``: unbounded)."""
    allowed = "a finite number" + (f" {_range(low, high, low_open, high_open)}" if (low, high) != (None, None) else "")
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"{flag(name)} must be {allowed}, got {value!r}")


def check_int(name: str, value, low=None, high=None) -> None:
    """``value`` must be an integer (not a bool or a float) with ``low <= value <= high``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        allowed = "an integer" + (f" {_range(low, high, False, False)}" if (low, high) != (None, None) else "")
        raise ConfigError(f"{flag(name)} must be {allowed}, got {value!r}")


def check_numbers(name: str, values, low=None, high=None) -> None:
    """``values`` must be a non-empty sequence of finite numbers in ``[low, high]``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
        raise ConfigError(f"{flag(name)} must be a non-empty list of numbers, got {values!r}")
    for v in values:
        try:
            check_number(name, v, low, high)
        except ConfigError:
            allowed = f"finite numbers {_range(low, high, False, False)}".rstrip()
            raise ConfigError(f"{flag(name)} must hold {allowed}, got {tuple(values)!r}") from None
