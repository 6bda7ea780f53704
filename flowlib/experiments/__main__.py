"""Command line: ``python -m flowlib.experiments NAME --scale ci|cpu-real|gpu-small|paper [...]``."""

from __future__ import annotations

import argparse
import sys

from flowlib.data import DataError
from flowlib.devices import DEVICES, DeviceError

from . import EXPERIMENTS, run
from .grid import MIN_SEEDS, ExperimentError
from .provenance import SCALES, command_line


def main(argv=None) -> int:
    """Run one experiment (or ``all``); exit code 0 done, 2 usage error, 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(
        prog="python -m flowlib.experiments",
        description="Reduced-scale reproductions of the papers' comparisons "
        "(see flowlib/experiments/<name>.py for each protocol).",
    )
    p.add_argument("name", choices=[*EXPERIMENTS, "all"], help="experiment to run")
    p.add_argument(
        "--scale",
        required=True,
        choices=SCALES,
        help="ci: CPU minutes, pipeline check only; cpu-real: real CIFAR-10 at 16x16 on one CPU thread "
        "(mixing + residual ~1 h); gpu-small: ~10 min on one GPU; paper: official",
    )
    p.add_argument("--seeds", type=int, default=MIN_SEEDS, help=f"seeds per arm (>= {MIN_SEEDS})")
    p.add_argument("--out", default="results", help="directory of the result files (default: results)")
    p.add_argument("--runs", default="runs/experiments", help="directory of per-run outputs (resumable)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--data-dir", default=None, help="cifar-10-batches-py directory (gpu-small/paper image experiments)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    try:
        for name in names:
            extra = {
                k: v
                for k, v in (
                    ("out", args.out),
                    ("runs", args.runs),
                    ("device", args.device),
                    ("data_dir", args.data_dir),
                )
                if v != p.get_default(k)
            }
            command = command_line(name, args.scale, args.seeds, extra)
            paths = run(
                name,
                args.scale,
                args.seeds,
                args.out,
                args.runs,
                args.device,
                args.data_dir,
                args.quiet,
                command=command,
            )
            print(f"{name}: wrote " + ", ".join(str(p) for p in paths.values()))
    except (ExperimentError, DeviceError, DataError) as e:
        p.error(str(e))
    except KeyboardInterrupt as e:
        print(f"interrupted: {e or 'finished runs are kept'}; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
