"""What a run sets outside itself comes back (issue 12, items 1 and 3): the process-wide torch switches are
restored by flowlib.train.runtime, also when set-up fails; the conditioner precision is the model's own
setting, reaches every conditioner and leaks into nothing else."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_support import tiny_config

import flowlib
from flowlib.models import build_model
from flowlib.precision import conditioned_modules, set_conditioner_dtype
from flowlib.train import ConfigError, TrainConfig, main, train
from flowlib.train.runtime import runtime


@pytest.fixture
def switches():
    """The process-wide switches a run may touch, put back after the test whatever it did."""
    names = ("matmul_tf32", "cudnn_tf32", "benchmark", "deterministic")

    def read():
        return dict(
            zip(
                names,
                (
                    torch.backends.cuda.matmul.allow_tf32,
                    torch.backends.cudnn.allow_tf32,
                    torch.backends.cudnn.benchmark,
                    torch.are_deterministic_algorithms_enabled(),
                ),
                strict=True,
            )
        )

    before = read()
    yield read
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before["matmul_tf32"], before["cudnn_tf32"]
    torch.backends.cudnn.benchmark = before["benchmark"]
    torch.use_deterministic_algorithms(before["deterministic"])


def test_runtime_sets_determinism_and_validation_inside_and_restores_them_after_an_error(switches):
    torch.use_deterministic_algorithms(False)
    before, mode = switches(), flowlib.get_validation()
    with pytest.raises(RuntimeError, match="inside"):
        with runtime(TrainConfig(device="cpu", deterministic=True)) as rt:
            assert torch.are_deterministic_algorithms_enabled()
            assert flowlib.get_validation() == "shape"  # no device syncs in the forward pass
            assert rt.device.type == "cpu" and rt.world == 1 and rt.master and not rt.ddp
            raise RuntimeError("inside")
    assert switches() == before and flowlib.get_validation() == mode


def test_a_set_up_error_after_the_runtime_leaves_no_switch_behind(tmp_path, switches):
    # digits has 1,500 training images: the batch check fails after the runtime set determinism on
    # (before the split the trainer left it on when set-up failed there)
    torch.use_deterministic_algorithms(False)
    before = switches()
    with pytest.raises(ConfigError, match="larger than the 1500 digits training images"):
        train(tiny_config(tmp_path / "run", batch_size=4096, deterministic=True))
    assert switches() == before


def test_cuda_without_a_gpu_is_a_config_error_naming_the_fix(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ConfigError, match=r"--device cuda: no CUDA device is available \(use --device cpu or auto\)"):
        train(tiny_config(tmp_path / "run", device="cuda"))


def test_bf16_conditioners_reach_every_conditioner_of_the_trained_model_and_nothing_else(tmp_path):
    # flow dequantization too: its encoder and conditional couplings own conditioners as well
    settings = dict(model={"dequant": "flow"}, deterministic=True)
    s = train(tiny_config(tmp_path / "bf16", conditioner_dtype="bfloat16", **settings))
    full = train(tiny_config(tmp_path / "fp32", **settings))
    owners = list(conditioned_modules(s["model"]))
    kinds = {type(m).__name__ for m in owners}
    assert {"AffineCoupling", "SplitPrior", "FlowDequantizer", "ConditionalAffineCoupling"} <= kinds, kinds
    assert all(m.conditioner_dtype is torch.bfloat16 for m in owners)
    # bf16 rounding in the conditioners only: the same run to within a few hundredths of a bit, not equal
    assert 0 < abs(s["test_bpd"] - full["test_bpd"]) < 0.05, (s["test_bpd"], full["test_bpd"])
    fresh = build_model("tiny", dequant="flow")  # not a global: a new model runs in full precision
    assert all(m.conditioner_dtype is None for m in conditioned_modules(fresh))


def test_float32_conditioners_are_the_default_and_the_setting_counts_the_modules_it_sets():
    model = build_model("tiny")
    n = len(list(conditioned_modules(model)))
    assert n == 2 * 2 + 1  # 2 levels x 2 affine couplings, one split prior
    assert set_conditioner_dtype(model, "bfloat16") == n
    assert set_conditioner_dtype(model, torch.float32) == n
    assert all(m.conditioner_dtype is None for m in conditioned_modules(model))


@pytest.mark.parametrize("bad", ["float16", "bf16", torch.float16])
def test_unknown_conditioner_dtypes_are_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match="float32.*bfloat16"):
        set_conditioner_dtype(build_model("tiny"), bad)


def test_the_cli_offers_the_same_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--conditioner-dtype", "float16", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    assert re.search(r"invalid choice: 'float16' \(choose from '?float32'?, '?bfloat16'?\)", capsys.readouterr().err)


@pytest.mark.parametrize("change", ["renamed", "reshaped"])
def test_a_checkpoint_of_another_flowlib_version_is_refused_naming_the_parameters(tmp_path, change, capsys):
    out = tmp_path / "run"
    train(tiny_config(out, steps=3))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    name = next(k for k in ckpt["model"] if k.endswith("weight"))
    if change == "renamed":  # what an older flowlib's parameter names look like to this one
        ckpt["model"]["old." + name] = ckpt["model"].pop(name)
        expected = rf"missing {re.escape(name)}; unexpected old\.{re.escape(name)}"
    else:
        ckpt["model"][name] = torch.zeros(1)
        expected = "size mismatch"
    torch.save(ckpt, out / "last.pt")
    with pytest.raises(ConfigError, match=rf"cannot resume: the parameters in .*last\.pt do not fit .*{expected}"):
        train(tiny_config(out, steps=6, resume=True))
    with pytest.raises(SystemExit) as e:  # the command line: a usage error, no traceback
        main(["--out", str(out), "--resume", "--steps", "6", "--progress", "false"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "another version of flowlib" in err and "Traceback" not in err


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_importing_flowlib_and_its_trainer_does_not_import_torch():
    code = (
        "import sys, flowlib, flowlib.train; assert 'torch' not in sys.modules, 'torch imported'; print(flowlib.Flow)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "flowlib.core.Flow" in r.stdout  # and the names still load on first use


def test_ctrl_c_while_the_trainer_imports_torch_exits_130_with_one_line(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flowlib.train", "--dataset", "digits", "--progress", "false", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        maps, deadline = Path(f"/proc/{p.pid}/maps"), time.time() + 60
        while time.time() < deadline and p.poll() is None and "libtorch" not in maps.read_text():
            time.sleep(0.005)  # torch's libraries appear while torch imports: after __main__'s handlers
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "nothing was written" in err, err
    assert not (out / "last.pt").exists()
