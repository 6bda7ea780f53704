"""``python -m flowlib.bench {layers,train,sample,notebooks,gpu} ...``: benchmarks that print numbers.

Each sub-command lives in its own module of this package and exposes
``add_arguments(parser, name)`` and ``run(args)``; a module is imported only when its
command runs, so ``layers`` works without the trainer.
"""

import argparse
import importlib
import sys

COMMANDS = {  # name -> (module, help); a module is imported only when its command runs
    "layers": ("flowlib.bench.layers", "forward/inverse/log-det time of every layer"),
    "train": ("flowlib.bench.train", "training-step throughput of a model preset"),
    "sample": ("flowlib.bench.train", "sampling and density-evaluation throughput of a model preset"),
    "notebooks": ("flowlib.bench.notebooks", "wall time of every notebook and lesson at its shipped settings"),
    "gpu": ("flowlib.bench.gpu", "the one budgeted check a lent GPU runs: correctness, throughput, a CIFAR-10 run"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowlib.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    known, _ = parser.parse_known_args(argv)
    module = importlib.import_module(COMMANDS[known.command][0])
    command_parser = argparse.ArgumentParser(
        prog=f"python -m flowlib.bench {known.command}", description=COMMANDS[known.command][1]
    )
    module.add_arguments(command_parser, known.command)
    args = command_parser.parse_args(list(argv if argv is not None else sys.argv[1:])[1:])
    args.command = known.command
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
