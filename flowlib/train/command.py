"""``python -m flowlib.train``: every :class:`TrainConfig` and :class:`flowlib.models.ModelConfig` field is a flag.

>>> args = build_parser().parse_args(["--preset", "tiny", "--steps", "5", "--mixing", "convexp"])
>>> args.steps, args.mixing, args.lr  # a flag not given is None: the preset's value is kept
(5, 'convexp', None)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from flowlib import cli, data, presets, rundir

from .config import CHOICES, ConfigError, NonFiniteError, TrainConfig
from .loop import train

__all__ = ["build_parser", "main"]


_DESCRIPTION = "Train a flow on images (flowlib.train; see its module docstring for the outputs and choices)."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flowlib.train",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every TrainConfig and ModelConfig field is a flag; see the module docstring.",
    )
    g = p.add_argument_group("training (TrainConfig; preset defaults from flowlib.presets)")
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model":
            cli.add_field(g, f, None, choices=sorted(presets.PRESETS) if f.name == "preset" else CHOICES.get(f.name))
    cli.add_model_arguments(p.add_argument_group("model (ModelConfig overrides of the preset)"))
    return p


def main(argv=None) -> int:
    """Command-line entry point; exit code 0 done, 1 diverged or a write failed, 2 usage error, 130 interrupted.

    ``--resume`` continues with the settings saved in ``last.pt``; flags given now replace them,
    and :func:`train` refuses those outside :data:`RESUME_MAY_CHANGE` that differ.
    """
    from flowlib.models import ModelConfig

    parser = build_parser()
    args = vars(parser.parse_args(argv))
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    overrides = {k: v for k, v in args.items() if v is not None and k not in model_fields and k != "preset"}
    model = {k: v for k, v in args.items() if v is not None and k in model_fields}
    last = Path(args["out"] if args["out"] is not None else TrainConfig.out) / "last.pt"
    try:
        if args["resume"] and str(args["out"]).strip() and last.exists():
            ckpt = rundir.load_checkpoint(last)
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            cfg = TrainConfig(**{**{k: v for k, v in ckpt["config"].items() if k in known}, **overrides})
            if args["preset"] is not None:
                cfg.preset = args["preset"]
            saved_model = json.loads(rundir.strict_json(ckpt["model_config"]))
            changed = {k: v for k, v in model.items() if json.loads(rundir.strict_json(v)) != saved_model.get(k)}
            if changed:
                cfg.model = {**cfg.model, **changed}
        else:
            cfg = TrainConfig.for_preset(args["preset"] or "tiny", **overrides, model=model)
        summary = train(cfg)
    except (ConfigError, data.DataError) as e:
        parser.error(str(e))
    except (NonFiniteError, rundir.WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # before train() installed its handlers, or a second Ctrl-C during start-up
        if "aborted during start-up" not in str(e):
            print("aborted before training started: nothing was written", file=sys.stderr)
        return 130
    return 130 if summary["interrupted"] else 0
