"""The experiment pipeline end to end at ci and (tiny-scheduled) cpu-real scale: files, seeds, budgets, notes, resume.

Not the orderings: those are what the experiments measure.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from flowlib import data
from flowlib.devices import DeviceError
from flowlib.experiments import EXPERIMENTS, mixing, residual, run
from flowlib.experiments.__main__ import main
from flowlib.experiments.budget import BudgetError, check_budget, image_budget, match_budget
from flowlib.experiments.grid import Arm, ExperimentError
from flowlib.experiments.images import cpu_real_schedule, image_scale
from flowlib.experiments.provenance import protocol_text
from flowlib.experiments.report import diff_note, diverged_notes, ordering, paper_note
from flowlib.layers import available
from flowlib.models import build_model

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
    # at ci scale the notes report orderings without claiming agreement or disagreement
    assert "Ordering only, ci scale" in notes or "Not tested at this scale" in notes
    assert "Agrees with the paper" not in notes and "DISAGREES" not in notes
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
    with pytest.raises(ExperimentError, match="'stability' has no 'cpu-real' scale"):
        run("stability", "cpu-real", out=tmp_path, runs=tmp_path, device="cpu", quiet=True)
    with pytest.raises(DeviceError, match="device must be one of auto, cuda, cpu; got 'tpu'"):
        run("graph", "ci", device="tpu")
    usage_errors = [
        ["nope", "--scale", "ci"],
        ["graph", "--scale", "huge"],
        ["graph"],
        ["graph", "--scale", "ci", "--seeds", "1", "--out", str(tmp_path)],
        [
            "mixing",
            "--scale",
            "cpu-real",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path),
            "--runs",
            str(tmp_path),
        ],
    ]
    if not torch.cuda.is_available():
        usage_errors.append(["graph", "--scale", "ci", "--device", "cuda", "--out", str(tmp_path)])
    for argv in usage_errors:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "seeds must be an integer >= 3" in err
    assert f"CIFAR-10 subset: {tmp_path / 'none' / 'batches.meta'} is missing" in err  # a DataError, not a traceback
    assert torch.cuda.is_available() or "no CUDA device is available" in err


def _budget(module, scale):
    """The parameter budgets of an experiment's arms at ``scale``, as the experiment matches them."""
    s = module.SCALES[scale]
    if module is mixing:
        arms = mixing._arms(scale)
        return {
            "all": image_budget(
                arms, s["preset"], lambda a: {**s["model"], **a.settings}, lambda a: s["knob"], lambda a: s["base"]
            )
        }
    knob = lambda a: s["widths"].get(a.settings["model_type"])  # noqa: E731
    return {
        dq: image_budget(
            residual._arms(dq),
            s["preset"],
            lambda a: {**s["model"], **a.settings},
            knob,
            lambda a: s["base"][knob(a)] if knob(a) else 0,
        )
        for dq in s.get("dequants", residual.DEQUANTS)
    }


def test_cpu_real_arms_and_budgets():
    """The shipped cpu-real settings: every arm of the brief, 16x16 images, budgets within 5%."""
    ((budget, models),) = _budget(mixing, "cpu-real").values()
    assert mixing.MIXINGS == tuple(available("mixing")) and len(mixing.MIXINGS) == 8  # the registry's, sorted
    assert list(models) == [*mixing.MIXINGS, "convexp-official"]  # the arms, in the order of the result tables
    assert models["convexp-official"]["mixing_kwargs"] == {"train_terms": 6, "eval_terms": 13}
    official = build_model(mixing.SCALES["cpu-real"]["preset"], **models["convexp-official"])
    layers = [m for m in official.modules() if getattr(m, "name", None) == "convexp"]
    assert len(layers) == 8 and all((m.train_terms, m.eval_terms) == (6, 13) for m in layers)  # the kwargs arrive
    assert all(m["image_shape"] == (3, 16, 16) for m in models.values())
    assert budget["spread"] <= 0.05 and len(set(budget["widths"].values())) > 1  # widths really were matched
    res = _budget(residual, "cpu-real")
    assert list(res) == ["uniform"]  # one dequantization at cpu-real (the brief's time budget)
    budget, models = res["uniform"]
    assert set(models) == {"sylvester-uniform", "residual-uniform", "coupling-uniform"}
    assert budget["spread"] <= 0.05 and budget["widths"]["sylvester-uniform"] is None


def test_cpu_real_schedules_have_one_home():
    """mixing and residual train on the same cpu-real schedule but for steps and residual's clipping."""
    shared = dict(batch_size=32, lr=2e-3, warmup_epochs=0.5, lr_decay=0.99, log_every=50, eval_every=10**6)
    assert mixing.SCALES["cpu-real"]["train"] == cpu_real_schedule(500) == {"steps": 500, **shared, "save_every": 100}
    res = residual.SCALES["cpu-real"]["train"]
    assert res == cpu_real_schedule(400, grad_clip=1.0) == {"steps": 400, **shared, "grad_clip": 1.0, "save_every": 100}
    assert list(res) == [*list(res)[:5], "grad_clip", "log_every", "eval_every", "save_every"]  # protocol text order


@pytest.fixture
def tiny_cpu_real(monkeypatch):
    """cpu-real with a two-step schedule, two test images and a small model: the pipeline, not the numbers."""
    for module in (mixing, residual):
        s = module.SCALES["cpu-real"]
        tiny = {
            **s,
            "n_test": 2,
            "sample_n": 2,
            "model": {**s["model"], "n_subflows": 1},
            "train": {"steps": 2, "batch_size": 4, "log_every": 1, "eval_every": 10**6, "save_every": 10**6},
        }
        tiny["base"] = {"hidden_channels": 4} if module is residual else 4
        if module is residual:
            tiny["model"]["hidden_channels"] = 4
        monkeypatch.setitem(module.SCALES, "cpu-real", tiny)
    monkeypatch.setattr(mixing, "MIXINGS", ("conv1x1", "convexp", "emerging", "woodbury"))  # the paper's + official: 5


def test_cpu_real_pipeline_on_a_cifar_format_directory(tmp_path, tiny_cpu_real):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 32, 32), generator=g, dtype=torch.uint8)
    source = data.write_cifar_batches(tmp_path / "cifar-10-batches-py", images, torch.arange(60) % 10)
    out, runs = tmp_path / "results", tmp_path / "runs"
    paths = {
        name: run(name, "cpu-real", out=out, runs=runs, device="cpu", data_dir=source, quiet=True)
        for name in ("mixing", "residual")
    }
    subset = runs / "cifar10-subset-2-pool2"
    assert torch.equal(data.load_cifar10(subset, "test")[0], data.average_pool(images[50:52], 2))
    for name, arms in (("mixing", 5), ("residual", 3)):
        result = json.loads(paths[name]["json"].read_text())
        assert result["scale"] == "cpu-real" and len(result["arms"]) == arms
        assert len(result["runs"]) == SEEDS * arms and all(r["n"] == SEEDS for r in result["arms"])
        assert result["command"].startswith(f"python -m flowlib.experiments {name} --scale cpu-real")
        assert "16x16" in result["data"] and "2x2 average pooling" in result["data"]
        spec = json.loads(next((runs / f"{name}-cpu-real").glob("*/seed0/spec.json")).read_text())
        assert spec["model"]["image_shape"] == [3, 16, 16]
        notes = result["notes"]
        assert notes[0].startswith("cpu-real scale") and "must not be compared" in notes[0]
        assert any(n.startswith(("Agrees with", "DISAGREES with", "Not resolved by these seeds")) for n in notes)
        assert all(paths[name][ext].exists() for ext in ("md", "csv", "png"))
    notes = json.loads(paths["mixing"]["json"].read_text())["notes"]
    assert any(n.startswith("Official fixed terms (6 train / 13 eval)") for n in notes)


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


def test_paper_note_wording_by_scale():
    assert (
        paper_note("ci", True, "a beats b", "x")
        == "Ordering only, ci scale (no evidence either way): 'a beats b' holds in these numbers: x."
    )
    assert "does not hold" in paper_note("ci", False, "a beats b", "x")
    assert paper_note("cpu-real", True, "a beats b", "x") == "Agrees with the paper (a beats b): x."
    assert paper_note("paper", False, "a beats b", "x") == "DISAGREES with the paper (a beats b): x."
    within = paper_note("cpu-real", True, "a beats b", "x", resolved=False)
    assert within.startswith("Not resolved by these seeds (a beats b): the means follow") and "Agrees" not in within
    assert "do not follow" in paper_note("cpu-real", False, "a beats b", "x", resolved=False)


def test_ordering_claims_agreement_only_beyond_the_seed_noise():
    def rows(**means_stds):
        return {k: {"label": k, "test_bpd_mean": m, "test_bpd_std": sd} for k, (m, sd) in means_stds.items()}

    clear = rows(a=(5.0, 0.01), b=(5.2, 0.01), c=(5.3, 0.02))
    assert ordering([diff_note(clear, "test_bpd", "a", x) for x in "bc"])[:2] == (True, True)
    close = rows(a=(5.0, 0.05), b=(5.02, 0.05), c=(5.3, 0.02))
    assert ordering([diff_note(close, "test_bpd", "a", x) for x in "bc"])[:2] == (True, False)
    against = rows(a=(5.3, 0.01), b=(5.0, 0.01), c=(5.31, 0.05))
    assert ordering([diff_note(against, "test_bpd", "a", x) for x in "bc"])[:2] == (False, True)
    mixed = rows(a=(5.1, 0.05), b=(5.09, 0.05), c=(5.3, 0.02))
    assert ordering([diff_note(mixed, "test_bpd", "a", x) for x in "bc"])[:2] == (False, False)


def test_shared_settings_and_notes():
    ci = image_scale("ci", "tiny", model=dict(dequant="uniform"), knob="hidden_channels")
    assert ci["preset"] == "tiny" and ci["knob"] == "hidden_channels" and ci["n_test"] == 0
    assert list(ci["model"]) == ["image_shape", "n_subflows", "dequant"]  # shared overrides first (protocol text)
    real = image_scale("cpu-real", "tiny", train=dict(steps=7), n_test=500)
    assert real["n_test"] == 500 and real["pool"] == 2 and real["model"]["image_shape"] == (3, 16, 16)
    assert ci["train"]["steps"] == 20 and ci["train"] is not image_scale("ci", "tiny")["train"]
    assert image_scale("gpu-small", "p", train=dict(steps=7))["train"] == {"steps": 7}
    with pytest.raises(ValueError, match="pass train="):
        image_scale("gpu-small", "p")

    rows = [{"label": "a", "diverged_frac": 0.0}, {"label": "b", "diverged_frac": 1 / 3}, {"label": "c"}]
    assert diverged_notes(rows) == ["Runs that diverged (left out of the means): b 33%."]
    assert diverged_notes(rows[:1]) == []
    assert protocol_text("Title.\n\nBody\n\nmore.\n", "x.") == "Body\n\nmore.\n\nThis run: x."
