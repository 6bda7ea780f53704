"""The lecturer's solutions notebooks stay in sync with the lessons, and every checker passes in them.

``lessons/make_solutions.py`` writes ``lessons/solutions/NN_topic_solutions.ipynb`` from the exercise
notebook ``lessons/NN_topic_exercises.ipynb`` and the reference answers ``lessons/solutions/answers.py``
(the one place where the answers live; ``tests/test_checks*.py`` use the same functions). Here:

* each committed solutions notebook equals what the script writes now (so an edited lesson or answer
  without a rerun of the script fails), and is committed clean;
* cell by cell, it is the exercise notebook except for the filled implement cells (same function, same
  signature, no ``NotImplementedError``) and the added answer cells; every *think* question and
  experiment has an answer;
* run top to bottom with papermill (as shipped, one torch thread), every checker cell reports
  ``correct``, every answer cell's asserts hold, and the run stays within ``LIMIT_S``.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from pathlib import Path

import nbformat
import pytest

from flowlib.bench.notebooks import execute, kernel_path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_solutions", ROOT / "lessons" / "make_solutions.py")
make_solutions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_solutions)
answers = make_solutions.load_answers()

EXERCISES = make_solutions.exercise_paths()
LIMIT_S = 90  # per solutions notebook; about 20-30 s measured on the 2-core CI machine
ASKS = re.compile(r"\((think|experiment|think, then experiment)\)|\*\*Think|\*think\*", re.IGNORECASE)


def _id(path: Path) -> str:
    return make_solutions.lesson_name(path)


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def _signature(source: str, name: str) -> str:
    """``name(a, b, c)``: the arguments of the function ``name`` defined in ``source``."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return f"{name}({ast.unparse(node.args)})"
    raise AssertionError(f"no function {name} is defined in:\n{source}")


def test_one_solutions_notebook_per_lesson():
    assert len(EXERCISES) == 5
    expected = sorted(make_solutions.solution_path(p).name for p in EXERCISES)
    assert sorted(p.name for p in make_solutions.SOLUTIONS.glob("*.ipynb")) == expected


@pytest.mark.parametrize("exercise", EXERCISES, ids=_id)
def test_committed_solutions_are_what_the_script_writes(exercise):
    path = make_solutions.solution_path(exercise)
    built = nbformat.writes(make_solutions.build(exercise, answers)) + "\n"
    assert path.read_text() == built, f"{path.name} is out of date: run python lessons/make_solutions.py"
    nb = nbformat.read(path, as_version=4)
    assert "papermill" not in nb.metadata
    for cell in nb.cells:
        assert "papermill" not in cell.metadata
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: committed with outputs"


@pytest.mark.parametrize("exercise", EXERCISES, ids=_id)
def test_solutions_differ_only_in_filled_and_added_cells(exercise):
    lesson = nbformat.read(exercise, as_version=4)
    solutions = nbformat.read(make_solutions.solution_path(exercise), as_version=4)
    kept = [c for c in solutions.cells if make_solutions.ANSWER_TAG not in _tags(c)]
    assert len(kept) == len(lesson.cells), "every cell of the lesson is in the solutions, in order"
    filled = 0
    for original, cell in zip(lesson.cells, kept, strict=True):
        assert (cell.cell_type, cell.get("id")) == (original.cell_type, original.get("id"))
        name = make_solutions.implemented_function(original)
        if name is None:
            assert cell.source == original.source and make_solutions.SOLUTION_TAG not in _tags(cell)
            continue
        filled += 1
        assert make_solutions.SOLUTION_TAG in _tags(cell)
        assert "NotImplementedError" not in cell.source
        assert _signature(cell.source, name) == _signature(original.source, name)
        assert inspect.getsource(getattr(answers, name)).strip() in cell.source
    assert filled >= 3, f"{exercise.name}: expected the implement exercises to be filled"

    asked = {
        make_solutions.exercise_number(c)
        for c in lesson.cells
        if make_solutions.exercise_number(c) is not None and ASKS.search(c.source)
    }
    answered = set(answers.ANSWERS[make_solutions.lesson_name(exercise)])
    assert asked <= answered, f"{exercise.name}: no answer for the questions of exercises {sorted(asked - answered)}"


def test_every_solution_function_is_used_by_a_lesson():
    used = set()
    for exercise in EXERCISES:
        for cell in nbformat.read(exercise, as_version=4).cells:
            name = make_solutions.implemented_function(cell)
            if name is not None:
                used |= {name, *answers.HELPERS.get(name, [])}
    defined = {
        name
        for name, obj in vars(answers).items()
        if inspect.isfunction(obj) and obj.__module__ == answers.__name__ and name not in {"md", "code"}
    }
    assert defined == used, f"answers.py defines {sorted(defined - used)} that no lesson asks for"


def test_build_names_a_missing_answer(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Lesson 99"),
        nbformat.v4.new_code_cell("def no_such_exercise(x):\n    raise NotImplementedError  # replace with your code"),
    ]
    path = tmp_path / "99_nothing_exercises.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(KeyError, match="no_such_exercise"):
        make_solutions.build(path, answers)


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> str:
    return kernel_path(tmp_path_factory.mktemp("jupyter"))


@pytest.mark.timeout(LIMIT_S + 120)
@pytest.mark.parametrize("exercise", EXERCISES, ids=_id)
def test_solutions_run_and_every_checker_passes(exercise, jupyter_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = make_solutions.solution_path(exercise)
    executed = ROOT / "artifacts" / "lessons" / "solutions" / path.name
    elapsed = execute(path, executed)  # raises on a failing cell, i.e. on an answer cell's assert
    print(f"{path.name}: papermill {elapsed:.1f} s")
    cells = nbformat.read(executed, as_version=4).cells
    verdicts = []
    for cell in cells:
        if cell.cell_type == "code" and re.search(r"^checks\.check_\w+\(", cell.source, re.MULTILINE):
            texts = [out.get("data", {}).get("text/plain", "") for out in cell.outputs]
            verdicts.append((cell.source, "".join(texts)))
    implement = sum(make_solutions.SOLUTION_TAG in _tags(c) for c in cells)
    assert len(verdicts) == implement, "one checker cell per filled implement cell"
    for source, text in verdicts:
        assert re.match(r"\[\w+\] correct: ", text), f"{path.name}: {source} gave {text!r}"
    assert elapsed < LIMIT_S, f"{path.name} took {elapsed:.0f} s; keep each solutions notebook under {LIMIT_S} s"
