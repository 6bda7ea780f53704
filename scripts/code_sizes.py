"""The sizes issue 12 bounds: the longest functions and modules of flowlib/, against the limits.

    python scripts/code_sizes.py           # the table: 10 longest modules and functions
    python scripts/code_sizes.py --check   # exit 1 naming each function > 120 lines or module > 500

A function's length is its ``def`` to its last line (docstring included), a module's its line
count. tests/test_style.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION, MAX_MODULE = 120, 500


def measure(package: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """``(modules, functions)``: ``(lines, name)`` pairs, longest first."""
    modules, functions = [], []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(ROOT))
        modules.append((len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{name}:{node.lineno} {node.name}"))
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a limit is exceeded")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    modules, functions = measure(ROOT / "flowlib")
    if args.check:
        over = [f"module {n} has {k} lines (limit {MAX_MODULE})" for k, n in modules if k > MAX_MODULE]
        over += [f"function {n} has {k} lines (limit {MAX_FUNCTION})" for k, n in functions if k > MAX_FUNCTION]
        print("\n".join(over) or f"ok: every module <= {MAX_MODULE} lines, every function <= {MAX_FUNCTION}")
        return 1 if over else 0
    print(f"{len(modules)} modules, {sum(k for k, _ in modules)} lines; longest modules:")
    print("\n".join(f"  {k:5d}  {n}" for k, n in modules[: args.top]))
    print(f"{len(functions)} functions; longest:")
    print("\n".join(f"  {k:5d}  {n}" for k, n in functions[: args.top]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
