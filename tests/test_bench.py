"""flowlib.bench: the one timing loop, the device flag of every command, ``bench train|sample`` output."""

import contextlib
import io
import json

import pytest
import torch

from flowlib.bench import timing
from flowlib.bench.__main__ import main
from flowlib.bench.gpu_plan import FULL, QUICK


class _Clock:
    """A fake ``time.perf_counter``: each call of :meth:`work` takes the next duration (seconds)."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, list(durations)

    def __call__(self):
        return self.now

    def work(self):
        self.now += self.durations.pop(0)


def test_median_ms_times_only_the_calls_after_the_warmup(monkeypatch):
    clock = _Clock([100.0, 100.0, 0.001, 0.009, 0.003])  # two slow warm-up calls, then 1, 9 and 3 ms
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    assert timing.median_ms(clock.work, repeats=3, warmup=2, device=torch.device("cpu")) == pytest.approx(3.0)
    assert clock.durations == []


def test_median_ms_synchronises_after_the_warmup_and_after_each_timed_call(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append("sync"))
    timing.median_ms(lambda: events.append("call"), repeats=2, warmup=1, device=torch.device("cuda"))
    assert events == ["call", "sync", "call", "sync", "call", "sync"]


def test_median_ms_rejects_no_timed_call():
    with pytest.raises(ValueError, match="repeats >= 1"):
        timing.median_ms(lambda: None, repeats=0, warmup=1, device=torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["layers", "train", "gpu"])
def test_device_cuda_without_a_gpu_is_a_clear_error(command, tmp_path):
    argv = [command, "--device", "cuda"] + (["--out", str(tmp_path)] if command == "gpu" else [])
    with pytest.raises(SystemExit, match="error: --device cuda: no CUDA device is available"):
        main(argv)


def test_gpu_check_rejects_a_budget_that_is_not_positive(tmp_path):
    with pytest.raises(SystemExit, match="--budget-s must be positive"):
        main(["gpu", "--device", "cpu", "--out", str(tmp_path), "--budget-s", "0"])


@pytest.mark.parametrize("sizes", [FULL, QUICK], ids=["full", "quick"])
def test_gpu_check_minimum_times_fit_the_default_budget(sizes):
    assert set(sizes.min_s) == {"env", "correctness", "train", "sample", "cifar"}
    assert sum(sizes.min_s.values()) + sizes.final_margin_s <= 540.0


@pytest.mark.parametrize("kind", ["train", "sample"])
def test_bench_train_and_sample_print_one_json_line_with_the_baseline(kind):
    argv = [kind, "--preset", "tiny", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--device", "cpu"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv + ["--baseline"]) == 0
    result = json.loads(out.getvalue())
    assert result["bench"] == kind and result["device"] == "cpu" and result["n_params"] > 0
    assert result["baseline"]["conditioner_dtype"] == "float32" and result["baseline"]["compile"] is False
    key = "ms_per_step" if kind == "train" else "ms_per_eval_batch"
    assert result[key] > 0 and result["speedup"] == pytest.approx(result["baseline"][key] / result[key])
