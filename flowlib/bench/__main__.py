"""``python -m flowlib.bench {layers,train,sample} ...``: benchmarks that print numbers.

Each sub-command lives in its own module of this package and exposes
``add_arguments(parser)`` and ``run(args)``.
"""

import argparse
import importlib
import sys

COMMANDS = {
    "layers": "flowlib.bench.layers",  # per-layer forward/inverse/logdet time (issue: foundation)
    "train": "flowlib.bench.train",  # training step throughput of a model preset
    "sample": "flowlib.bench.train",  # sampling throughput of a model preset
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowlib.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        mod.add_arguments(sub.add_parser(name, help=mod.__doc__.splitlines()[0]), name)
    args = parser.parse_args(argv)
    return importlib.import_module(COMMANDS[args.command]).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
