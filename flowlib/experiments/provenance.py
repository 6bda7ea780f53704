"""Provenance of an experiment's results: scales, their caveats, command, environment, protocol.

Every result file names the command, scale, device, torch version and date that produced it:
:func:`result_info` assembles that provenance (:func:`environment`, :func:`command_line`) with
the protocol (:func:`protocol_text`: the experiment module's docstring and this run's
settings). :data:`SCALES` are the experiment scales, :data:`SCALE_CAVEAT` the note each
result file opens with.

>>> command_line("graph", "ci", 3, {"out": "/tmp/r", "data_dir": None})
'python -m flowlib.experiments graph --scale ci --seeds 3 --out /tmp/r'
>>> print(protocol_text("Title.\\n\\nBody.", "one seed."))
Body.
<BLANKLINE>
This run: one seed.
"""

from __future__ import annotations

import datetime as _dt
import shlex

import torch

from flowlib.devices import device_name

__all__ = ["SCALES", "CPU_SCALES", "SCALE_CAVEAT", "environment", "command_line", "protocol_text", "result_info"]

SCALES = ("ci", "cpu-real", "gpu-small", "paper")
CPU_SCALES = ("ci", "cpu-real")  # run on one torch thread on a CPU (small models gain nothing from more)
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
