"""flowlib.train on CPU: outputs, exact resume, the NaN/Inf guard, Ctrl-C, DDP with gloo, CLI errors."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_support import tiny_config

from flowlib.train import ConfigError, NonFiniteError, TrainConfig, lr_factor, main, train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cfg(out, **kw):
    return tiny_config(out, **{"temperatures": (0.5, 1.0), **kw})


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    s = train(_cfg(out, steps=12))
    assert s["step"] == 12 and math.isfinite(s["test_bpd"]) and not s["interrupted"]
    info = json.loads((out / "config.json").read_text())
    assert info["train"]["steps"] == 12 and info["model"]["image_shape"] == [1, 8, 8] and info["n_params"] > 0
    rows = [r for r in _metrics(out) if "final" not in r]
    train_rows = [r for r in rows if "train_bpd" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    for key in ("epoch", "train_bpd", "images_per_s", "lr", "grad_norm", "time"):
        assert all(key in r for r in train_rows), key
    assert [r["step"] for r in rows if "test_bpd" in r] == [3, 6, 9, 12]
    assert train_rows[-1]["train_bpd"] < train_rows[0]["train_bpd"]  # it learns
    assert _metrics(out)[-1]["final"] and json.loads((out / "summary.json").read_text())["test_bpd"] == s["test_bpd"]
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "bpd_curve.png").read_bytes().startswith(b"\x89PNG")
    for name in ("last.pt", "best.pt"):
        ck = torch.load(out / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "step", "rng", "config", "best_test_bpd"} <= set(ck)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 12
    pngs = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in pngs] == ["step0000012_T0.50.png", "step0000012_T1.00.png"]
    assert Image.open(pngs[0]).size[0] >= 32
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        train(_cfg(out))


def test_resume_is_exact(tmp_path):
    kw = dict(steps=8, deterministic=True, sample_every=3, eval_every=3, save_every=5, log_every=1)
    a = train(_cfg(tmp_path / "a", **kw))
    train(_cfg(tmp_path / "b", **{**kw, "steps": 4}))
    b = train(_cfg(tmp_path / "b", **kw, resume=True))
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    oa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["optimizer"]["state"]
    ob = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(oa[k]["exp_avg"], ob[k]["exp_avg"]) for k in oa)
    ma = {r["step"]: r["train_bpd"] for r in _metrics(tmp_path / "a") if "train_bpd" in r and "final" not in r}
    mb = {r["step"]: r["train_bpd"] for r in _metrics(tmp_path / "b") if "train_bpd" in r and "final" not in r}
    assert ma == mb and sorted(mb) == list(range(1, 9))


def test_nan_parameter_stops_naming_step_and_layer(tmp_path, monkeypatch):
    from flowlib.models import build_model

    name = [n for n, _ in build_model("tiny", image_shape=(1, 8, 8)).named_parameters()][5]
    original, calls = torch.optim.Adamax.step, {"n": 0}

    def poisoned_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the update of step 3 puts a NaN into one parameter
            with torch.no_grad():
                self.param_groups[0]["params"][5].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.Adamax, "step", poisoned_step)
    out = tmp_path / "run"
    with pytest.raises(
        NonFiniteError,
        match=rf"non-finite loss at step 4.*first non-finite parameter: {name}"
        rf".*last good checkpoint: .*last.pt \(step 2\)",
    ):
        train(_cfg(out, save_every=2, eval_every=100))
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert any(r.get("event") == "nonfinite" and r["step"] == 4 for r in _metrics(out))
    s = train(_cfg(out, steps=5, resume=True))  # the last good checkpoint still trains
    assert s["step"] == 5 and math.isfinite(s["test_bpd"])
    # a checkpoint is never written with non-finite parameters
    calls["n"] = 0
    with pytest.raises(NonFiniteError, match=rf"step 3: parameter {name} is not finite; not writing"):
        train(_cfg(tmp_path / "run2", save_every=3, eval_every=100))


def test_nonfinite_gradient_stop_and_skip(tmp_path, monkeypatch):
    original, calls = torch.nn.utils.clip_grad_norm_, {"n": 0}

    def norm(params, max_norm, *args, **kwargs):
        calls["n"] += 1
        value = original(params, max_norm, *args, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", norm)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 3 \(loss [0-9.]+, grad norm nan\)"):
        train(_cfg(tmp_path / "stop"))
    calls["n"] = 0
    s = train(_cfg(tmp_path / "skip", on_nonfinite="skip"))
    assert s["step"] == 6 and math.isfinite(s["test_bpd"])
    assert [r["step"] for r in _metrics(tmp_path / "skip") if r.get("event") == "nonfinite"] == [3]


def test_lr_schedules():
    cfg = TrainConfig(optimizer="adamax", warmup_epochs=2, lr_decay=0.5)
    assert lr_factor(cfg, 0, 10) == pytest.approx(1 / 20)
    assert lr_factor(cfg, 19, 10) == pytest.approx(0.5**1.9)
    assert lr_factor(cfg, 39, 10) == pytest.approx(0.5**3.9)
    cos = TrainConfig(optimizer="adamw", warmup_epochs=1, steps=110)
    assert lr_factor(cos, 9, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 60, 10) == pytest.approx(0.5)
    assert lr_factor(cos, 110, 10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus"], r"unrecognized arguments: --bogus"),
        (["--mixing", "bogus"], r"argument --mixing: invalid choice: 'bogus' \(choose from .*convexp"),
        (["--model-type", "flowy"], r"invalid choice: 'flowy' \(choose from .*sylvester"),
        (["--preset", "huge"], r"invalid choice: 'huge' \(choose from .*paper-mixing"),
        (["--steps", "ten"], r"argument --steps: invalid int value: 'ten'"),
        (["--on-nonfinite", "ignore"], r"invalid choice: 'ignore' \(choose from .*skip"),
        (["--dataset", "cifar10"], r"default location\) does not exist.*--data-dir.*FLOWLIB_DATA"),
        (["--dataset", "cifar10", "--data-dir", "{tmp}/nowhere"], r"nowhere.*does not exist.*--download"),
        (["--dataset", "digits", "--n-levels", "4"], r"bad model configuration.*divisible by 2\*\*n_levels"),
    ],
)
def test_cli_errors_exit_2_with_a_helpful_message(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLOWLIB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/flowlib: CIFAR-10 is nowhere by convention
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "o"), "--progress", "false"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err, re.S), err
    assert "Traceback" not in err


def test_cli_subprocess_ctrl_c_saves_and_resumes(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "flowlib.train", "--mixing", "nope"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=120,
    )
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    out = tmp_path / "run"
    flags = "--preset tiny --dataset digits --steps 100000 --log-every 1 --eval-every 100000 --save-every 100000"
    cmd = [sys.executable, "-m", "flowlib.train", *flags.split(), "--progress=false", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (
            (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3
        ):
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert step >= 3
    s = train(_cfg(out, steps=step + 2, batch_size=64, resume=True))  # the saved run's batch size (tiny preset)
    assert s["step"] == step + 2


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from flowlib import data
    from flowlib.models import build_model
    from flowlib.train import TrainConfig, train

    def gathered(vec):
        out = [torch.zeros_like(vec) for _ in range(dist.get_world_size())]
        dist.all_gather(out, vec)
        return out

    # actnorm's data-dependent init uses the statistics of all ranks' batches
    x, _ = data.load_digits()
    m = build_model("tiny", image_shape=(1, 8, 8))
    with torch.no_grad():
        m.train()(x[rank * 64 : (rank + 1) * 64])  # different images on each rank
    an = torch.cat([p.detach().flatten() for n, p in m.named_parameters() if "actnorm" in n])
    init = gathered(an)
    s = train(TrainConfig.for_preset("tiny", dataset="digits", steps=4, batch_size=32, log_every=2, eval_every=2,
                                     save_every=2, n_samples=4, temperatures=(1.0,), progress=False, out=sys.argv[1]))
    vec = torch.cat([v.detach().double().flatten() for v in s["model"].state_dict().values()])
    after = gathered(vec)
    json.dump({"init_equal": bool(torch.equal(init[0], init[1])), "init_nontrivial": bool(an.abs().sum() > 0),
               "params_equal": bool(torch.equal(after[0], after[1])), "test_bpd": s.get("test_bpd")},
              open(f"{sys.argv[1]}/rank{rank}.json", "w"))
    dist.destroy_process_group()
    """
)


def test_ddp_gloo_two_processes(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[:6000]
    results = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    for res in results:
        assert res["init_equal"] and res["init_nontrivial"] and res["params_equal"], res
    assert results[0]["test_bpd"] == results[1]["test_bpd"] and math.isfinite(results[0]["test_bpd"])
    rows = [r for r in _metrics(out) if "train_bpd" in r and "final" not in r]
    assert [r["step"] for r in rows] == [2, 4]  # only rank 0 logs
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4
    assert len(torch.load(out / "last.pt", weights_only=True)["rng"]["ranks"]) == 2
