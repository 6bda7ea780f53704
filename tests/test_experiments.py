"""The experiment pipeline end to end at ci scale (files, seeds, budgets, notes, resume), not the orderings."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from flowlib import data
from flowlib.experiments import EXPERIMENTS, run
from flowlib.experiments.__main__ import main
from flowlib.experiments.common import (
    Arm,
    BudgetError,
    ExperimentError,
    check_budget,
    cifar_subset,
    diverged_notes,
    image_scale,
    match_budget,
    protocol_text,
)

SEEDS = 3


@pytest.fixture(scope="module")
def ci_results(tmp_path_factory):
    """All four experiments at ci scale, once, into a temporary directory."""
    root = tmp_path_factory.mktemp("experiments")
    paths = {
        name: run(name, "ci", seeds=SEEDS, out=root / "results", runs=root / "runs", device="cpu", quiet=True)
        for name in EXPERIMENTS
    }
    return root, paths


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_ci_pipeline_writes_every_file(ci_results, name):
    root, paths = ci_results
    for ext in ("json", "csv", "md", "png"):
        assert paths[name][ext] == root / "results" / f"{name}-ci.{ext}"
        assert paths[name][ext].stat().st_size > 0
    assert paths[name]["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads(paths[name]["json"].read_text())
    for key in ("command", "scale", "device", "torch", "date", "protocol"):
        assert result[key], key
    assert result["scale"] == "ci" and result["device"] == "cpu" and result["torch"] == torch.__version__
    assert result["command"].startswith(f"python -m flowlib.experiments {name} --scale ci")

    # at least 3 seeds for every arm, each run recorded with its provenance
    arms = [row["arm"] for row in result["arms"]]
    assert len(arms) >= 2 and all(row["n"] == SEEDS for row in result["arms"])
    assert len(result["runs"]) == SEEDS * len(arms)
    for arm in arms:
        assert sorted(r["seed"] for r in result["runs"] if r["arm"] == arm) == list(range(SEEDS))
    assert all(r["device"] == "cpu" and r["date"] for r in result["runs"])

    # the parameter budget was checked: within 5%, and the reported counts are the runs' counts
    budgets = [result["budget"]] if "counts" in result["budget"] else list(result["budget"].values())
    for budget in budgets:
        assert budget["within"] and budget["spread"] <= budget["tolerance"] == 0.05
        for arm, count in budget["counts"].items():
            assert {r["params"] for r in result["runs"] if r["arm"] == arm} <= {count}

    md = paths[name]["md"].read_text()
    for section in ("## Protocol", "## Parameter budget", "## Notes"):
        assert section in md
    assert result["command"] in md and "too small for conclusions" in md
    notes = md.split("## Notes", 1)[1]
    assert "Agrees with the paper" in notes or "DISAGREES" in notes or "Not tested at this scale" in notes
    assert result["notes"][0].startswith("**ci scale is far too small")

    with open(paths[name]["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == arms
    assert all(r["command"] == result["command"] and r["device"] == "cpu" for r in rows)


def test_finished_runs_are_not_rerun(ci_results, capsys):
    root, paths = ci_results
    results = sorted((root / "runs" / "graph-ci").glob("*/seed*/result.json"))
    assert len(results) == 2 * SEEDS
    before = {p: p.stat().st_mtime_ns for p in results}
    run("graph", "ci", seeds=SEEDS, out=root / "results", runs=root / "runs", device="cpu")
    assert {p: p.stat().st_mtime_ns for p in results} == before
    assert capsys.readouterr().err.count("done before") == 2 * SEEDS


def test_changed_settings_are_refused(ci_results):
    root, _ = ci_results
    spec = root / "runs" / "graph-ci" / "convexp" / "seed0" / "spec.json"
    original = spec.read_text()
    spec.write_text(json.dumps({**json.loads(original), "steps": 1}))
    try:
        with pytest.raises(ExperimentError, match="other settings"):
            run("graph", "ci", seeds=SEEDS, out=root / "results", runs=root / "runs", device="cpu", quiet=True)
    finally:
        spec.write_text(original)


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    with pytest.raises(ExperimentError, match="unknown experiment 'nope'"):
        run("nope", "ci")
    with pytest.raises(ExperimentError, match="unknown scale 'huge'"):
        run("graph", "huge")
    with pytest.raises(ExperimentError, match="seeds must be an integer >= 3"):
        run("graph", "ci", seeds=2)
    with pytest.raises(ExperimentError, match="--data-dir"):
        run("mixing", "gpu-small", out=tmp_path, runs=tmp_path, device="cpu", quiet=True)
    for argv in (
        ["nope", "--scale", "ci"],
        ["graph", "--scale", "huge"],
        ["graph"],
        ["graph", "--scale", "ci", "--seeds", "1", "--out", str(tmp_path)],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "seeds must be an integer >= 3" in capsys.readouterr().err


def test_cifar_subset_reads_only_the_first_batch_and_the_test_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(60) % 10
    source = data.write_cifar_batches(tmp_path / "full", images, labels)  # 10 images per file
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (source / name).unlink()  # only data_batch_1, test_batch and batches.meta travel
    subset = cifar_subset(source, tmp_path / "subset", n_test=2)
    train_x, _ = data.load_cifar10(subset, "train")
    test_x, test_y = data.load_cifar10(subset, "test")
    assert torch.equal(train_x, images[:10]) and torch.equal(test_x, images[50:52])
    assert test_y.tolist() == labels[50:52].tolist()
    with pytest.raises(ExperimentError, match="subset needs 15 train"):
        cifar_subset(source, tmp_path / "too-big", n_test=3)
    (source / "test_batch").unlink()
    with pytest.raises(ExperimentError, match="test_batch is missing"):
        cifar_subset(source, tmp_path / "other", n_test=2)


def test_budget_matching_and_check():
    arms = [Arm("fixed", "fixed"), Arm("wide", "wide"), Arm("narrow", "narrow")]
    extra = {"fixed": 5000, "wide": 0, "narrow": 1000}

    def count(arm, width):
        return extra[arm.name] + (0 if width is None else 100 * width)

    matched = match_budget(arms, count, lambda a: None if a.name == "fixed" else "hidden", lambda a: 8)
    assert matched["target"] == 5800  # the fixed arm at its base width
    assert matched["widths"] == {"fixed": None, "wide": 58, "narrow": 48}
    assert set(matched["counts"].values()) == {5800}
    assert check_budget({"a": 100, "b": 104})["within"]
    with pytest.raises(BudgetError, match="differ by 6.0%"):
        check_budget({"a": 100, "b": 106})


def test_shared_settings_and_notes():
    ci = image_scale("ci", "tiny", model=dict(dequant="uniform"), knob="hidden_channels")
    assert ci["preset"] == "tiny" and ci["knob"] == "hidden_channels" and ci["n_test"] == 0
    assert list(ci["model"]) == ["image_shape", "n_subflows", "dequant"]  # shared overrides first (protocol text)
    assert ci["train"]["steps"] == 20 and ci["train"] is not image_scale("ci", "tiny")["train"]
    assert image_scale("gpu-small", "p", train=dict(steps=7))["train"] == {"steps": 7}
    with pytest.raises(ValueError, match="pass train="):
        image_scale("gpu-small", "p")

    rows = [{"label": "a", "diverged_frac": 0.0}, {"label": "b", "diverged_frac": 1 / 3}, {"label": "c"}]
    assert diverged_notes(rows) == ["Runs that diverged (left out of the means): b 33%."]
    assert diverged_notes(rows[:1]) == []
    assert protocol_text("Title.\n\nBody\n\nmore.\n", "x.") == "Body\n\nmore.\n\nThis run: x."
