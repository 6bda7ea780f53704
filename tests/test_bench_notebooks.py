"""``python -m flowlib.bench notebooks``: which runs it makes, their environments, and the printed table."""

import json
import os

import nbformat

from flowlib.bench import notebooks as nbbench
from flowlib.bench.__main__ import main


def _tiny_tree(root):
    for folder, name, source in [
        ("notebooks", "01_tiny.ipynb", "print('one')"),
        ("notebooks", "05_cifar10.ipynb", "import os; print(os.environ.get('FLOWLIB_DATA'))"),
        ("lessons", "01_tiny_exercises.ipynb", "raise RuntimeError('a failing lesson')"),
    ]:
        (root / folder).mkdir(exist_ok=True)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, root / folder / name)


def test_cases_run_05_twice_only_with_a_data_dir(tmp_path, monkeypatch):
    _tiny_tree(tmp_path)
    monkeypatch.setattr(nbbench, "ROOT", tmp_path)
    without = [(p.name, case) for p, case, _ in nbbench.cases(None)]
    assert without == [
        ("01_tiny.ipynb", "shipped"),
        ("05_cifar10.ipynb", "no data"),
        ("01_tiny_exercises.ipynb", "shipped"),
    ]
    with_data = [(p.name, case, limit) for p, case, limit in nbbench.cases("d", only=["05"])]
    assert with_data == [
        ("05_cifar10.ipynb", "cifar10", nbbench.CIFAR_LIMIT_S),
        ("05_cifar10.ipynb", "no data", nbbench.LIMIT_S),
    ]
    assert nbbench.case_environment("no data", None, tmp_path) == {"FLOWLIB_DATA": None, "HOME": str(tmp_path)}
    assert nbbench.case_environment("cifar10", str(tmp_path), tmp_path) == {"FLOWLIB_DATA": str(tmp_path.resolve())}


def test_environ_sets_unsets_and_restores(monkeypatch):
    monkeypatch.setenv("FLOWLIB_T1", "kept")
    monkeypatch.delenv("FLOWLIB_T2", raising=False)
    with nbbench.environ(FLOWLIB_T1=None, FLOWLIB_T2="set"):
        assert "FLOWLIB_T1" not in os.environ and os.environ["FLOWLIB_T2"] == "set"
    assert os.environ["FLOWLIB_T1"] == "kept" and "FLOWLIB_T2" not in os.environ


def test_the_table_reports_times_failures_and_the_05_environment(tmp_path, monkeypatch, capsys):
    tree = tmp_path / "tree"
    tree.mkdir()
    _tiny_tree(tree)
    monkeypatch.setattr(nbbench, "ROOT", tree)
    out = tmp_path / "times.json"
    code = main(["notebooks", "--data-dir", str(tmp_path), "--json", str(out)])
    assert code == 1  # the failing lesson
    printed = capsys.readouterr().out
    assert "notebooks/01_tiny.ipynb" in printed and "NO" in printed
    info = json.loads(out.read_text())
    by = {(r["notebook"], r["case"]): r for r in info["records"]}
    assert by[("notebooks/01_tiny.ipynb", "shipped")]["ok"] is True
    assert "a failing lesson" in by[("lessons/01_tiny_exercises.ipynb", "shipped")]["error"]
    assert {("notebooks/05_cifar10.ipynb", "cifar10"), ("notebooks/05_cifar10.ipynb", "no data")} <= set(by)
    assert info["command"].startswith("python -m flowlib.bench notebooks --data-dir") and info["date"]
