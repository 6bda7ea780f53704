"""Ctrl-C / SIGTERM at any moment (issue 11, item 3): the run either stops at a step boundary and saves
there, or (second Ctrl-C) aborts without writing; what it says about last.pt is what is on disk, and
every resumed run equals the uninterrupted one bit for bit. Signals are raised in-process at chosen
moments (inside a step, inside a checkpoint write, during start-up, after the last step);
scripts/interruptions.py does the same with real processes at random moments."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch
from train_support import tiny_config

import flowlib.train.loop as trainer_loop
from flowlib import data
from flowlib.train import main, train

STEPS = 6


def _cfg(out, **kw):
    return tiny_config(out, **{"steps": STEPS, "log_every": 1, "deterministic": True, **kw})


def _curve(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], k): r[k] for r in rows if not r.get("final") for k in ("train_bpd", "test_bpd") if k in r}


def _step(out):
    return torch.load(Path(out) / "last.pt", weights_only=True)["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    s = train(_cfg(out))
    return {"state": s["model"].state_dict(), "curve": _curve(out), "test_bpd": s["test_bpd"]}


def _assert_exact(out, summary, reference):
    assert summary["step"] == STEPS and not summary["interrupted"]
    for name, t in reference["state"].items():
        assert torch.equal(t, summary["model"].state_dict()[name]), name
    assert _curve(out) == reference["curve"] and summary["test_bpd"] == reference["test_bpd"]


def _signals_at_call(monkeypatch, owner, name, call, signals):
    """Make the ``call``-th call of ``owner.name`` raise ``signals`` first (as a user's keyboard would)."""
    original, calls = getattr(owner, name), {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            for s in signals:
                signal.raise_signal(s)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def test_one_ctrl_c_inside_a_step_stops_at_the_boundary(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    _signals_at_call(monkeypatch, torch.optim.Adamax, "step", 5, [signal.SIGINT])
    s = train(_cfg(out))
    assert s["interrupted"] and not s.get("aborted") and s["step"] == 5 and _step(out) == 5
    assert re.search(r"interrupted at step 5: .*last.pt holds step 5; continue with --resume", capsys.readouterr().err)
    monkeypatch.undo()
    _assert_exact(out, train(_cfg(out, resume=True)), reference)


def test_second_ctrl_c_inside_a_step_aborts_without_writing(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    _signals_at_call(monkeypatch, torch.optim.Adamax, "step", 5, [signal.SIGINT, signal.SIGINT])
    s = train(_cfg(out))
    assert s["interrupted"] and s["aborted"]
    err = capsys.readouterr().err
    assert re.search(r"aborted at step 4 by a second Ctrl-C: nothing more was written; .*last.pt holds step 3", err)
    assert _step(out) == 3 and not (out / "summary.json").exists()  # step 4's half-done state was not saved
    monkeypatch.undo()
    _assert_exact(out, train(_cfg(out, resume=True)), reference)


def test_second_ctrl_c_during_a_checkpoint_write_waits_for_it(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    # call 1 writes best.pt at step 3, call 2 last.pt at step 3: both presses arrive inside that write
    _signals_at_call(monkeypatch, torch, "save", 2, [signal.SIGINT, signal.SIGINT])
    s = train(_cfg(out))
    assert s["aborted"]
    assert re.search(r"aborted at step 3 .*last.pt holds step 3", capsys.readouterr().err)
    assert _step(out) == 3 and not list(out.glob(".*.tmp"))  # the write completed, nothing half-written
    monkeypatch.undo()
    _assert_exact(out, train(_cfg(out, resume=True)), reference)


def test_signal_during_start_up_stops_cleanly_at_step_0(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    _signals_at_call(monkeypatch, data, "load_dataset", 1, [signal.SIGTERM])
    s = train(_cfg(out))
    assert s["interrupted"] and s["step"] == 0 and _step(out) == 0
    assert "last.pt holds step 0" in capsys.readouterr().err
    monkeypatch.undo()
    _assert_exact(out, train(_cfg(out, resume=True)), reference)


def test_second_ctrl_c_during_start_up_aborts_with_a_message(tmp_path, monkeypatch, capsys):
    _signals_at_call(monkeypatch, data, "load_dataset", 1, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt, match="aborted during start-up: nothing was trained; no checkpoint"):
        train(_cfg(tmp_path / "py"))
    _signals_at_call(monkeypatch, data, "load_dataset", 1, [signal.SIGINT, signal.SIGINT])
    code = main(["--out", str(tmp_path / "cli"), "--steps", "2", "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 130 and "aborted during start-up" in err and "Traceback" not in err
    assert not (tmp_path / "cli" / "last.pt").exists() and not (tmp_path / "cli" / "train.lock").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_signal_after_the_last_step_leaves_a_complete_last_pt(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    # calls 1, 2 are the evaluations at steps 3 and 6, call 3 the final one on the full test set
    _signals_at_call(monkeypatch, trainer_loop, "evaluate", 3, [signal.SIGTERM])
    s = train(_cfg(out))
    assert s["interrupted"] and s["step"] == STEPS and _step(out) == STEPS
    err = capsys.readouterr().err
    assert re.search(r"interrupted after the training steps \(step 6\): .*last.pt holds step 6; .*--resume", err)
    assert not (out / "summary.json").exists()
    monkeypatch.undo()
    _assert_exact(out, train(_cfg(out, resume=True)), reference)  # --resume writes the final outputs
    assert json.loads((out / "summary.json").read_text())["test_bpd"] == reference["test_bpd"]


def test_second_signal_while_a_stopped_run_writes_its_summary(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    _signals_at_call(monkeypatch, torch.optim.Adamax, "step", 5, [signal.SIGINT])
    _signals_at_call(monkeypatch, trainer_loop, "plot_curves", 1, [signal.SIGINT])
    s = train(_cfg(out))
    assert s["interrupted"] and _step(out) == 5
    err = capsys.readouterr().err
    assert re.search(
        r"interrupted at step 5: .*last.pt holds step 5; summary.json or bpd_curve.png may be missing", err
    )
    monkeypatch.undo()
    _assert_exact(out, train(_cfg(out, resume=True)), reference)
