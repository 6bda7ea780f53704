"""The conda/Binder environments list the same packages as pyproject.toml, with CPU-only torch.

Names are compared after normalisation (lower case, ``_``/``.`` -> ``-``, conda's ``pytorch``
-> ``torch``); version specifiers must agree too, and the pinned torch must satisfy
pyproject's range. Binder's ``postBuild`` must install flowlib and open notebook 01.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = [ROOT / "environment.yml", ROOT / "binder" / "environment.yml"]
CONDA_ALIASES = {"pytorch": "torch"}
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _norm(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name.strip().lower())
    return CONDA_ALIASES.get(name, name)


def _pyproject() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["notebooks"]]
    return {_norm(r.name): r.specifier for r in reqs}


def _environment(path: Path) -> tuple[dict[str, SpecifierSet], list[str], list[str]]:
    """``(packages, conda_entries, pip_entries)`` of a conda environment file (python and pip excluded)."""
    spec = yaml.safe_load(path.read_text())
    conda, pip = [], []
    for entry in spec["dependencies"]:
        if isinstance(entry, dict):
            pip.extend(entry.get("pip", []))
        else:
            conda.append(str(entry))
    packages = {}
    for entry in conda + [p for p in pip if not p.startswith("-")]:
        match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", entry)
        name, version = _norm(match.group(1)), match.group(2).replace(" ", "")
        if name in ("python", "pip"):
            continue
        if version.startswith("=") and not version.startswith("=="):
            version = "=" + version  # conda's single '=' pin
        packages[name] = SpecifierSet(version)
    return packages, conda, pip


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_environment_matches_pyproject(path):
    wanted = _pyproject()
    listed, _, _ = _environment(path)
    assert sorted(listed) == sorted(wanted), (
        f"{path.name} and pyproject.toml (dependencies + notebooks extra) list different packages: "
        f"only in {path.name}: {sorted(set(listed) - set(wanted))}, "
        f"only in pyproject: {sorted(set(wanted) - set(listed))}"
    )
    for name, spec in wanted.items():
        if name == "torch":
            continue
        assert listed[name] == spec, f"{path.name}: {name} is '{listed[name]}' but pyproject.toml says '{spec}'"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_torch_is_cpu_only(path):
    listed, conda, pip = _environment(path)
    torch_range = _pyproject()["torch"]
    conda_torch = [e for e in conda if _norm(re.split(r"[<>=!\s]", e)[0]) == "torch"]
    if conda_torch:  # conda route: pytorch with the cpuonly metapackage, no CUDA packages
        assert any(e.split()[0] == "cpuonly" for e in conda), f"{path.name}: conda pytorch needs 'cpuonly'"
    else:  # pip route: an exact pin from PyTorch's CPU wheel index
        pins = [p for p in pip if p.startswith("torch==")]
        assert pins, f"{path.name}: torch must be pinned (torch==X) in the pip section"
        version = pins[0].split("==")[1]
        assert version in torch_range, f"{path.name}: torch {version} is outside pyproject's range {torch_range}"
        assert any(p.split()[0] in ("--index-url", "--extra-index-url") and CPU_INDEX in p for p in pip), (
            f"{path.name}: the pip section must use the CPU wheel index {CPU_INDEX}"
        )
        if any(p.startswith("--extra-index-url") for p in pip):
            assert "+cpu" in version, f"{path.name}: with --extra-index-url pin the CPU build explicitly (torch==X+cpu)"
    assert not any(re.search(r"cuda|nvidia", e, re.I) for e in conda + pip), f"{path.name} pulls CUDA packages"


def test_binder_postbuild_installs_flowlib_and_opens_notebook_01():
    post = ROOT / "binder" / "postBuild"
    text = post.read_text()
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    assert text.startswith("#!"), "binder/postBuild needs a shebang line"
    assert re.search(r"pip install\b.*-e \.", text), "binder/postBuild must install flowlib (pip install -e .)"
    match = re.search(r"default_url\s*=\s*['\"]/lab/tree/(\S+?)['\"]", text)
    assert match, "binder/postBuild must make JupyterLab open notebook 01 (ServerApp.default_url)"
    assert match.group(1) == "notebooks/01_matrix_exponential.ipynb" and (ROOT / match.group(1)).exists()
