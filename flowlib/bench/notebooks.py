"""Wall time of every notebook and lesson at its shipped settings (papermill, one torch thread).

Usage::

    python -m flowlib.bench notebooks [--data-dir DIR] [--only 01 05_cifar10 ...] [--json FILE]

Each of ``notebooks/*.ipynb``, ``lessons/*.ipynb`` and ``lessons/solutions/*.ipynb`` runs exactly as
shipped: papermill with **no parameters**, in its own folder, on a ``python3`` kernel of this
interpreter with one intra-op thread (``OMP_NUM_THREADS=1``; the notebooks also pin
``torch.set_num_threads(threads)``). Notebook 05 runs twice: ``cifar10`` with ``FLOWLIB_DATA`` set to
``--data-dir`` (real CIFAR-10 found by the conventions of :func:`flowlib.data`), and ``no data`` with
``FLOWLIB_DATA`` unset and ``HOME`` an empty temporary folder, i.e. what a learner without CIFAR-10
gets (the embedded digits fallback). Without ``--data-dir`` only the ``no data`` case runs.

Output: an aligned table (notebook, case, seconds, limit, within), then one JSON object per run on its
own line; ``--json FILE`` also writes them with the device, torch version and date. Limits: 300 s for
notebooks 01-04 and every lesson, 600 s for notebook 05 with CIFAR-10, 300 s without. The test suite
(``tests/test_notebooks.py``) runs the same :func:`execute` on every notebook and lesson.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ROOT", "LIMIT_S", "add_arguments", "run", "kernel_path", "execute", "environ", "cases", "case_environment"]

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 300  # notebooks 01-04, lessons, notebook 05 without CIFAR-10
CIFAR_LIMIT_S = 600  # notebook 05 training on real CIFAR-10


def kernel_path(share: Path) -> str:
    """Write a ``python3`` kernelspec of this interpreter with one intra-op thread under ``share``.

    Returns the folder to put first on ``JUPYTER_PATH`` so that papermill's ``python3`` is this one.
    """
    spec_dir = Path(share) / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (flowlib, one thread)",
        "language": "python",
        "env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return str(share)


def _set_environ(changes: dict[str, str | None]) -> None:
    for k, v in changes.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def environ(**changes: str | None) -> Iterator[None]:
    """Set (a string) or unset (``None``) environment variables for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        _set_environ(changes)
        yield
    finally:
        _set_environ(saved)


def execute(path: Path, executed: Path, parameters: dict | None = None, cell_timeout: int = LIMIT_S) -> float:
    """Run notebook ``path`` with papermill into ``executed`` (cwd = its folder); return the wall seconds.

    The kernel is ``python3`` as found on ``JUPYTER_PATH`` (see :func:`kernel_path`) and inherits
    this process's environment. ``parameters`` are papermill's overrides (``None``: as shipped).
    Raises papermill's ``PapermillExecutionError`` (with the failing cell's traceback) on error.
    """
    import papermill

    executed.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(path),
        str(executed),
        parameters=parameters or {},
        kernel_name="python3",
        cwd=str(path.parent),
        execution_timeout=cell_timeout,
        progress_bar=False,
        log_output=False,
    )
    return time.perf_counter() - start


def cases(data_dir: str | None, only: list[str] | None = None) -> list[tuple[Path, str, int]]:
    """``(notebook, case, limit seconds)`` for every shipped notebook and lesson (``only``: name prefixes)."""
    paths = [
        *sorted((ROOT / "notebooks").glob("*.ipynb")),
        *sorted((ROOT / "lessons").glob("*.ipynb")),
        *sorted((ROOT / "lessons" / "solutions").glob("*.ipynb")),
    ]
    out = []
    for path in paths:
        if only and not any(path.stem.startswith(o) for o in only):
            continue
        if path.parent.name == "notebooks" and path.stem.startswith("05"):
            if data_dir is not None:
                out.append((path, "cifar10", CIFAR_LIMIT_S))
            out.append((path, "no data", LIMIT_S))
        else:
            out.append((path, "shipped", LIMIT_S))
    return out


def case_environment(case: str, data_dir: str | None, empty_home: Path) -> dict[str, str | None]:
    """The environment of a case: CIFAR-10 via ``FLOWLIB_DATA``, or none anywhere (empty ``HOME``)."""
    if case == "cifar10":
        return {"FLOWLIB_DATA": str(Path(data_dir).resolve())}
    if case == "no data":
        return {"FLOWLIB_DATA": None, "HOME": str(empty_home)}
    return {}


def add_arguments(parser, name: str) -> None:
    parser.add_argument("--data-dir", default=None, help="a cifar-10-batches-py directory for notebook 05")
    parser.add_argument("--only", nargs="+", default=None, help="notebook name prefixes, e.g. 01 05_cifar10")
    parser.add_argument("--json", default=None, help="also write the records to this JSON file")


def _device() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def run(args) -> int:
    import torch

    records = []
    with tempfile.TemporaryDirectory(prefix="flowlib-notebooks-") as tmp:
        tmp = Path(tmp)
        jupyter = kernel_path(tmp / "jupyter")
        for path, case, limit in cases(args.data_dir, args.only):
            home = tmp / f"home-{len(records)}"
            home.mkdir()
            env = case_environment(case, args.data_dir, home)
            executed = tmp / "executed" / path.parent.name / f"{path.stem}-{len(records)}.ipynb"
            error = None
            with environ(JUPYTER_PATH=jupyter, OMP_NUM_THREADS="1", **env):
                start = time.perf_counter()
                try:
                    execute(path, executed, cell_timeout=limit)
                except Exception as err:  # a failing notebook is a result of this benchmark, not a crash
                    error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
                seconds = time.perf_counter() - start
            rel = path.relative_to(ROOT).as_posix()
            records.append(
                dict(
                    notebook=rel,
                    case=case,
                    seconds=round(seconds, 1),
                    limit_s=limit,
                    ok=error is None and seconds <= limit,
                    error=error,
                )
            )
            print(
                f"{rel} [{case}]: {seconds:.0f} s" + (f"  FAILED {error}" if error else ""), file=sys.stderr, flush=True
            )

    width = max(len(r["notebook"]) for r in records) if records else 10
    print(f"# notebooks at shipped settings, papermill, 1 torch thread; {_device()}; torch {torch.__version__}")
    print(f"{'notebook':<{width}}  {'case':<8}  {'seconds':>7}  {'limit':>5}  within")
    for r in records:
        within = "yes" if r["ok"] else "NO"
        print(f"{r['notebook']:<{width}}  {r['case']:<8}  {r['seconds']:>7.0f}  {r['limit_s']:>5}  {within}")
    for r in records:
        print(json.dumps(r))
    if args.json:
        info = dict(
            command="python -m flowlib.bench notebooks" + (f" --data-dir {args.data_dir}" if args.data_dir else ""),
            device=_device(),
            torch=torch.__version__,
            date=datetime.date.today().isoformat(),
            records=records,
        )
        Path(args.json).write_text(json.dumps(info, indent=1, allow_nan=False) + "\n")
    return 0 if all(r["ok"] for r in records) else 1
