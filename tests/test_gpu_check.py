"""``python -m flowlib.bench gpu``: the CPU rehearsal of the check a lent GPU runs, and its time budget."""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from flowlib import data
from flowlib.bench import gpu, gpu_correctness
from flowlib.bench.__main__ import main
from flowlib.bench.gpu_plan import QUICK, Run
from flowlib.core import Flow
from flowlib.layers import available

ROOT = Path(__file__).resolve().parents[1]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--device cpu --quick`` run as a subprocess, on a small CIFAR-format directory."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    images, labels = data.load_synthetic(6 * 48, shape=(3, 32, 32), seed=0)
    data.write_cifar_batches(tmp / "cifar", images, labels)  # 240 train, 48 test images
    out = tmp / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "flowlib.bench",
        "gpu",
        "--device",
        "cpu",
        "--quick",
        "--out",
        str(out),
        "--data-dir",
        str(tmp / "cifar"),
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, _records(out), out


def test_quick_run_records_every_step_within_the_budget(quick_run):
    stdout, records, out = quick_run
    steps = [r["step"] for r in records]
    for step in ("env", "correctness", "train", "sample", "cifar", "summary"):
        assert step in steps, f"no {step} record in {steps}"
    assert steps[-1] == "summary"
    summary = records[-1]
    assert summary["failed_steps"] == [] and summary["skipped_steps"] == [] and summary["flagged"] == []
    assert summary["elapsed_s"] <= summary["budget_s"]
    assert all(r["t_s"] <= summary["elapsed_s"] for r in records)
    assert "correctness: float32 on the device" in stdout and "throughput" in stdout and "cifar:" in stdout
    assert {"cifar_metrics.jsonl", "cifar_bpd_curve.png", "cifar_samples_T0.70.png"} <= {p.name for p in out.iterdir()}


def test_quick_run_correctness_errors_are_small(quick_run):
    _, records, _ = quick_run
    corr = {r["layer"]: r for r in records if r["step"] == "correctness"}
    assert set(available()) <= set(corr), f"layers without a record: {set(available()) - set(corr)}"
    for name, r in corr.items():
        assert "error" not in r and "skipped" not in r, (name, r)
        assert r["precision"] == "fp32" and r["flagged"] == []
        keys = [k for k in ("y_rel", "logdet_rel", "inverse_rel", "expm_rel") if k in r]
        assert keys, (name, r)
        for key in keys:  # float32 on the CPU vs float64: rounding only
            assert 0 <= r[key] < 1e-4, (name, key, r[key])
    assert corr["residual"]["logdet_reference"].startswith("float32 cpu")
    assert corr["functional.conv_exp"]["terms"] >= 1


def test_quick_run_throughput_and_cifar_numbers(quick_run):
    _, records, _ = quick_run
    train = {r["config"]: r for r in records if r["step"] == "train"}
    sample = {r["config"]: r for r in records if r["step"] == "sample"}
    assert set(train) == set(sample) == {"baseline", "fast", "ratio"}
    assert train["baseline"]["conditioner_dtype"] == "float32" and train["fast"]["conditioner_dtype"] == "bfloat16"
    for r in (train["baseline"], train["fast"]):
        assert r["images_per_s"] > 0 and r["ms_per_step"] > 0 and r["n_params"] > 0
        assert math.isclose(r["vs_official"], r["images_per_s"] / 493.0)
    ratio = train["ratio"]["fast_over_baseline"]
    assert math.isclose(ratio, train["fast"]["images_per_s"] / train["baseline"]["images_per_s"])
    for r in (sample["baseline"], sample["fast"]):
        assert r["eval_images_per_s"] > 0 and r["sample_images_per_s"] > 0
    cifar = next(r for r in records if r["step"] == "cifar")
    assert cifar["steps"] == cifar["planned_steps"] == 20 and cifar["n_train"] == 240 and cifar["n_test"] == 48
    assert 0 < cifar["train_bpd"] < 9 and 0 < cifar["test_bpd"] < 9  # 8-bit data: ~8 bpd untrained
    assert [c[0] for c in cifar["curve"]] == [5, 10, 15, 20]


def test_a_step_past_its_deadline_is_cut_and_later_steps_still_run(tmp_path, monkeypatch):
    def stuck(run, seconds):  # swallows every Exception, as a per-layer loop does: the cut must still land
        for _ in range(60):
            try:
                time.sleep(1)
            except Exception:
                pass

    monkeypatch.setitem(gpu.STEPS, "correctness", stuck)
    budget = 8.0  # gc.collect() after env takes 0.3-1 s on a busy machine: leave correctness its 1 s minimum
    t0 = time.perf_counter()
    assert main(["gpu", "--device", "cpu", "--quick", "--out", str(tmp_path), "--budget-s", str(budget)]) == 0
    assert time.perf_counter() - t0 < budget + 2  # + the summary table
    records = _records(tmp_path)
    by_step = {r["step"]: r for r in records}
    assert by_step["correctness"]["timed_out"] is True and "cut at its deadline" in by_step["correctness"]["error"]
    # correctness may use the budget minus the minimum of train and sample (1 + 1 s) minus the final margin (0.5 s)
    assert by_step["correctness"]["t_s"] < budget - 2.5 + 1
    assert by_step["cifar"]["skipped"] == "no --data-dir given"
    assert {"train", "sample"} <= set(by_step)  # ran or were skipped with a reason, never missing
    assert by_step["summary"]["elapsed_s"] <= budget
    assert "correctness" in by_step["summary"]["failed_steps"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gpu.add_arguments(parser)
    return parser.parse_args(argv)


def test_a_bad_data_dir_skips_the_cifar_step_with_the_reason(tmp_path):
    run = Run(_args("--out", str(tmp_path), "--data-dir", str(tmp_path / "missing")), QUICK, device=None)
    reason = gpu._cannot_run(run, "cifar")
    assert reason.startswith("--data-dir: CIFAR-10 directory") and "does not exist" in reason
    run.file.close()


class _Float32Drift(Flow):
    """``y = w x``, but 1% off in float32: what a layer that loses precision on the device looks like."""

    def __init__(self, shape):
        super().__init__(shape)
        self.w = nn.Parameter(torch.ones(()))

    def _forward(self, x):
        scale = 1.01 if x.dtype == torch.float32 else 1.0
        return scale * self.w * x, x.new_zeros(len(x))

    def _inverse(self, y):
        return y / self.w


def test_layer_errors_flag_a_layer_that_drifts_in_float32(monkeypatch):
    monkeypatch.setattr(gpu_correctness, "build_layer", lambda name, shape, **kw: _Float32Drift(shape).double().eval())
    result = gpu_correctness.layer_errors("drift", (2, 4, 4), batch=3, device=torch.device("cpu"), seed=0)
    assert result["y_rel"] == pytest.approx(0.01, rel=1e-3) and result["inverse_rel"] == pytest.approx(0.01, rel=1e-3)
    assert result["logdet_rel"] == 0
    assert result["flagged"] == ["inverse_rel", "y_rel"]
