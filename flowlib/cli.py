"""Command-line flags generated from dataclasses: one flag per field, shared by every entry point.

``python -m flowlib.train`` (every :class:`flowlib.train.TrainConfig` and
:class:`flowlib.models.ModelConfig` field), ``python -m flowlib.bench train|sample`` (every
``ModelConfig`` field) use the same rules: ``--field-name`` and ``--field_name`` both work;
``bool`` fields take ``true/false/1/0/yes/no`` (a bare ``--flag`` is true); ``tuple`` fields take
comma-separated numbers; ``dict`` fields take a JSON object.

>>> import argparse, dataclasses
>>> @dataclasses.dataclass
... class Settings:
...     steps: int = 10
...     flip: bool = True
...     temperatures: tuple = (1.0,)
>>> parser = argparse.ArgumentParser()
>>> add_dataclass_arguments(parser, Settings)
>>> vars(parser.parse_args(["--steps", "3", "--flip", "no", "--temperatures", "0.5,1"]))
{'steps': 3, 'flip': False, 'temperatures': (0.5, 1.0)}
"""

from __future__ import annotations

import argparse
import dataclasses
import json

__all__ = ["add_field", "add_dataclass_arguments", "add_model_arguments"]


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _tuple_of(kind):
    def parse(s: str) -> tuple:
        try:
            return tuple(kind(v) for v in s.strip("()[] ").split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {s!r}") from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


def _json_dict(s: str) -> dict:
    try:
        v = json.loads(s)
    except json.JSONDecodeError:
        v = None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"kernel_size\": 5}}', got {s!r}")
    return v


def add_field(group, f: dataclasses.Field, default, choices=None) -> None:
    dashed = f"--{f.name.replace('_', '-')}"
    names = [dashed] if "_" not in f.name else [dashed, f"--{f.name}"]  # --data-dir and --data_dir
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    kw = {"dest": f.name, "default": default, "choices": choices}
    if kind == "bool":
        kw.update(type=_bool, nargs="?", const=True, metavar="BOOL")
    elif kind in ("int", "float"):
        kw["type"] = int if kind == "int" else float
    elif kind == "tuple" or kind.startswith("tuple"):
        kw["type"] = _tuple_of(int if "int" in kind else float)
    elif kind == "dict":
        kw["type"] = _json_dict
    group.add_argument(*names, **kw, help=argparse.SUPPRESS if f.name == "model" else None)


def add_dataclass_arguments(group, cls, skip=(), choices=None, default=None) -> None:
    """One flag per field of the dataclass ``cls`` (except ``skip``); ``choices``: field -> allowed values.

    ``default=None`` (the default) marks a flag as not given, so callers can tell a
    value set on the command line from the dataclass's own default.
    """
    choices = choices or {}
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            add_field(group, f, default, choices=choices.get(f.name))


def add_model_arguments(group, skip=()) -> None:
    """One flag per ModelConfig field (default None: keep the preset's value)."""
    from flowlib.models.config import CHOICES, ModelConfig

    add_dataclass_arguments(group, ModelConfig, skip=skip, choices=CHOICES)
