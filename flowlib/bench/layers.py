"""Time forward, inverse and log-determinant of every registered image layer, against conv1x1.

Usage::

    python -m flowlib.bench layers [--shape 12 16 16] [--batch 32] [--repeats 5]
                                   [--device auto|cuda|cpu] [--dtype float32|float64]
                                   [--names conv1x1 periodic ...] [--threads N] [--json]

For each layer (built with ``make(name, shape=...)`` and default arguments; a
layer that does not build or run on images is skipped with a note) it reports
the median over ``--repeats`` timed calls, after one warm-up call, in ms, of

* ``forward``: ``y, logdet = layer(x)``;
* ``inverse``: ``layer.inverse(y)``;
* ``logdet``: ``layer.logdet(x)`` where the layer can compute its
  log-determinant without transforming ``x`` (else ``-``),

plus the parameter count, the round-trip error ``max |inverse(forward(x)) - x|``
and each time divided by the ``conv1x1`` time of the same run (``conv1x1`` is
always measured, as the baseline). Layers run in ``eval()`` mode under
``torch.no_grad()`` after one training-mode forward (data-dependent init), with
input validation off; each time is :func:`flowlib.bench.timing.median_ms` (CUDA
synchronised).

Output: an aligned table, then one JSON object per layer on its own line (the
same numbers, ``null`` for ``-``). ``--json`` prints the JSON lines only.
"""

from __future__ import annotations

import argparse
import json

import torch

from ..core import validation
from ..devices import DEVICES, DeviceError, resolve_device
from ..layers import available, make
from .timing import median_ms

__all__ = ["add_arguments", "run", "measure"]

BASELINE = "conv1x1"


def add_arguments(parser: argparse.ArgumentParser, name: str = "layers") -> None:
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=[12, 16, 16],
        metavar=("C", "H", "W"),
        help="shape of one image (default: 12 16 16)",
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement; the median is reported")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default auto: cuda if available")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--names", nargs="+", default=None, help="layers to time (default: all registered)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 gives steadier numbers on a busy machine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON lines, no table")


def measure(name: str, shape, batch: int, repeats: int, device, dtype=torch.float32, seed: int = 0) -> dict:
    """Timings (ms), parameter count and round-trip error of one layer; ``{"skipped": reason}`` if it fails."""
    device = torch.device(device)
    torch.manual_seed(seed)
    try:
        layer = make(name, shape=shape).to(device=device, dtype=dtype)
        x = torch.randn(batch, *shape, device=device, dtype=dtype)
        layer(x)  # training-mode call: data-dependent initialisation (actnorm and friends)
    except Exception as err:  # noqa: BLE001 - any failure means "not an image layer with defaults"
        return {"layer": name, "skipped": f"{type(err).__name__}: {err}".splitlines()[0][:200]}
    layer.eval()
    with torch.no_grad(), validation("off"):
        y, _ = layer(x)
        result = {
            "layer": name,
            "params": sum(p.numel() for p in layer.parameters()),
            "forward_ms": median_ms(lambda: layer(x), repeats, 1, device),
            "inverse_ms": median_ms(lambda: layer.inverse(y), repeats, 1, device),
            "logdet_ms": None,
            "inverse_error": float((layer.inverse(y) - x).abs().max()),
        }
        if callable(getattr(layer, "logdet", None)):
            result["logdet_ms"] = median_ms(lambda: layer.logdet(x), repeats, 1, device)
    return result


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if value < 1e-2 or value >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def _table(results: list[dict]) -> list[str]:
    """Aligned text rows of the measured layers, then one ``# skipped`` note per skipped layer."""
    header = ["layer", "params", "fwd ms", "inv ms", "logdet ms", "fwd/base", "inv/base", "logdet/base", "inv err"]
    rows = [
        [
            r["layer"],
            _fmt(r["params"]),
            _fmt(r["forward_ms"]),
            _fmt(r["inverse_ms"]),
            _fmt(r["logdet_ms"]),
            _fmt(r["forward_ratio"], 2),
            _fmt(r["inverse_ratio"], 2),
            _fmt(r["logdet_ratio"], 2),
            f"{r['inverse_error']:.1e}",
        ]
        for r in results
        if "skipped" not in r
    ]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = [
        row[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
        for row in [header] + rows
    ]
    return lines + [f"# skipped {r['layer']}: {r['skipped']}" for r in results if "skipped" in r]


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    try:
        device = resolve_device(args.device)
    except DeviceError as err:
        raise SystemExit(f"error: {err}") from None
    dtype = getattr(torch, args.dtype)
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        raise SystemExit(f"unknown layer(s) {unknown}; available: {', '.join(available())}")
    order = [BASELINE] + [n for n in names if n != BASELINE]
    results = [measure(n, shape, args.batch, args.repeats, device, dtype, args.seed) for n in order]
    base = results[0]
    for r in results:
        r.update(shape=list(shape), batch=args.batch, device=str(device), dtype=args.dtype)
        for key in ("forward", "inverse", "logdet"):
            t, t0 = r.get(f"{key}_ms"), base.get(f"{key}_ms")
            if "skipped" not in r:
                r[f"{key}_ratio"] = t / t0 if t is not None and t0 else None
    if not args.json:
        print(
            f"# layers on {device} ({args.dtype}), x: [{args.batch}, {', '.join(map(str, shape))}], "
            f"median of {args.repeats}; base = {BASELINE}"
        )
        print("\n".join(_table(results)))
    for r in results:
        print(json.dumps(r))
    return 0
