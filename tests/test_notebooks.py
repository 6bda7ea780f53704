"""Every notebook and lesson runs top to bottom, and follows the conventions of ``notebooks/README.md``.

Conventions (checked here; notebooks 03-05 and their lessons are picked up by the globs):

* ``notebooks/NN_topic.ipynb`` numbered 01, 02, ... without gaps (at most 05); each lesson is
  ``lessons/NN_topic_exercises.ipynb`` for an existing notebook ``NN_topic``.
* Committed **without outputs** (no outputs, no execution counts, no papermill metadata).
* The first code cell is tagged ``parameters`` and assigns ``quick = False`` (plain literal
  assignments only). Size knobs are derived from ``quick`` in a *later* cell, because
  papermill injects its overrides in a new cell right after the parameters cell.
* The first cell is markdown and starts with a ``# `` title. Markdown has no pasted images
  (figures come from executed cells).
* With ``quick=True`` each notebook runs in under ``BUDGET_S`` seconds on 2 CPU cores
  (papermill, this file). Notebooks 01 and 02 and every lesson are then re-executed by
  ``pytest --nbval-lax`` against the papermill copy, which compares the cells marked
  ``# NBVAL_CHECK_OUTPUT`` (deterministic printouts) between the two runs.

Executed copies are kept under ``artifacts/notebooks`` and ``artifacts/lessons`` (git-ignored,
same depth as the originals so relative paths resolve the same way). The kernel is this
interpreter (a private ``python3`` kernelspec put first on ``JUPYTER_PATH``) with one
intra-op thread: the suite runs two pytest workers on two cores, and an oversubscribed
torch thread pool makes the notebooks' small tensor ops 10-20x slower.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))
ALL = NOTEBOOKS + LESSONS
NBVAL = [p for p in NOTEBOOKS if p.name[:2] in ("01", "02")] + LESSONS
BUDGET_S = 150
NAME = re.compile(r"^(\d\d)_([a-z0-9_]+)\.ipynb$")


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _read(path: Path):
    return nbformat.read(path, as_version=4)


# ---- structure of the committed files ------------------------------------------------------------
def test_notebooks_are_numbered_in_order_and_lessons_match():
    assert len(NOTEBOOKS) >= 2, "notebooks/01_* and 02_* are expected"
    numbers = [int(NAME.match(p.name).group(1)) if NAME.match(p.name) else None for p in NOTEBOOKS]
    assert None not in numbers, f"notebook names must look like NN_topic.ipynb: {[p.name for p in NOTEBOOKS]}"
    assert numbers == list(range(1, len(NOTEBOOKS) + 1)) and len(NOTEBOOKS) <= 5, numbers
    stems = {p.stem for p in NOTEBOOKS}
    for lesson in LESSONS:
        assert lesson.stem.endswith("_exercises") and lesson.stem[: -len("_exercises")] in stems, (
            f"{lesson.name}: a lesson is named <notebook stem>_exercises.ipynb"
        )


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_committed_clean_with_parameters_cell_and_title(path):
    nb = _read(path)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} has outputs: clear them"
        assert "papermill" not in cell.metadata, f"{path.name} cell {i} carries papermill metadata (an executed copy?)"
        if cell.cell_type == "markdown":
            assert "attachments" not in cell and not re.search(r"data:image|<img|!\[", cell.source), (
                f"{path.name} cell {i}: no pasted images; make figures in executed cells"
            )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"

    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{path.name}: first cell is a # title"

    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert len(tagged) == 1 and tagged[0] is code_cells[0], f"{path.name}: the first code cell is tagged 'parameters'"
    assigned = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, "parameters cell: plain assignments only"
        assigned[node.targets[0].id] = ast.literal_eval(node.value)
    assert assigned.get("quick") is False, f"{path.name}: the parameters cell sets quick = False"


# ---- execution -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory) -> str:
    """A ``python3`` kernelspec for this interpreter, in a directory meant to go first on JUPYTER_PATH."""
    share = tmp_path_factory.mktemp("jupyter")
    spec_dir = share / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (flowlib tests)",
        "language": "python",
        "env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return str(share)


@pytest.mark.timeout(3 * BUDGET_S + 120)
@pytest.mark.parametrize("path", ALL, ids=_id)
def test_runs_quick_under_papermill_and_nbval(path, jupyter_path, monkeypatch, record_property):
    import papermill

    monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
    out_dir = ROOT / "artifacts" / path.parent.name
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    start = time.perf_counter()
    papermill.execute_notebook(
        str(path),
        str(executed),
        parameters={"quick": True},
        kernel_name="python3",
        cwd=str(path.parent),
        execution_timeout=BUDGET_S,
        progress_bar=False,
        log_output=False,
    )
    elapsed = time.perf_counter() - start
    record_property("papermill_seconds", round(elapsed, 1))
    print(f"{_id(path)}: papermill quick run {elapsed:.1f} s")
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s with quick=True; the budget is {BUDGET_S} s"

    if path not in NBVAL:
        return
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            str(executed),
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-o",
            "addopts=",
            f"--rootdir={out_dir}",
            f"--nbval-cell-timeout={BUDGET_S}",
        ],
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=2 * BUDGET_S,
    )
    record_property("nbval_seconds", round(time.perf_counter() - start, 1))
    assert result.returncode == 0, f"nbval failed on {executed}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
