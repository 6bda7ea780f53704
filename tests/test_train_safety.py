"""The trainer never loses a user's files (issue 11): output directory, lock, damaged files, resume flags,
divergence, strict JSON, value validation, disk errors. Each test is a case that lost data or gave a
traceback before; tiny preset on digits for a few steps."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_support import tiny_config

from flowlib import rundir
from flowlib.train import ConfigError, DivergedError, NonFiniteError, TrainConfig, main, train

ROOT = Path(__file__).resolve().parents[1]


def _cfg(out, **kw):
    return tiny_config(out, **{"steps": 4, "eval_every": 2, "save_every": 2, **kw})


def _strict(text: str):
    """Standard JSON only: NaN/Infinity are refused (what other JSON parsers do)."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _cli(argv, capsys):
    """Run the command line in-process; return (exit code, stderr)."""
    try:
        code = main([*argv, "--progress", "false"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# --------------------------------------------------------------------------------------------
# 1. the output directory
# --------------------------------------------------------------------------------------------


def _user_files(out: Path) -> dict:
    """A directory as a user may have it: a run whose last.pt was deleted, plus files of their own."""
    (out / "samples").mkdir(parents=True)
    (out / "tb").mkdir()
    files = {
        "notes.txt": "my notes",
        "best.pt": "the best model of a long run",
        "config.json": "{}",
        "samples/mine.png": "a picture of mine",
        "samples/step0000004_T1.00.png": "trainer sample",
        "tb/events.out.tfevents.1.host": "events",
    }
    for name, text in files.items():
        (out / name).write_text(text)
    return files


def test_fresh_run_refuses_a_non_empty_out_and_names_what_is_there(tmp_path):
    out = tmp_path / "run"
    files = _user_files(out)
    with pytest.raises(ConfigError, match=r"run is not empty \(it holds best.pt, config.json, notes.txt.*--overwrite"):
        train(_cfg(out))
    assert {n: (out / n).read_text() for n in files} == files  # nothing was touched
    assert not (out / rundir.LOCK_NAME).exists()  # and the lock is released


def test_overwrite_removes_only_the_trainers_files(tmp_path):
    out = tmp_path / "run"
    _user_files(out)
    s = train(_cfg(out, overwrite=True))
    assert s["step"] == 4
    assert (out / "notes.txt").read_text() == "my notes" and (out / "samples" / "mine.png").exists()
    assert not (out / "tb" / "events.out.tfevents.1.host").exists()
    assert torch.load(out / "best.pt", weights_only=True)["step"] in (2, 4)  # the trainer's own best.pt now
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["mine.png", "step0000004_T1.00.png"]


def test_out_may_not_be_empty_text_the_current_or_home_directory_or_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ConfigError, match=r"out \(--out\) must name a directory"):
        train(_cfg(""))
    for out, what in ((".", "the current directory"), (str(tmp_path), "the current directory"), ("~", "your home")):
        with pytest.raises(ConfigError, match=rf"is {what}.*give the run its own directory"):
            train(_cfg(out, overwrite=True))
    (tmp_path / "afile").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"afile is a file, not a directory"):
        train(_cfg(tmp_path / "afile"))
    code, err = _cli(["--out", "", "--steps", "2"], capsys)
    assert code == 2 and "--out" in err
    assert (tmp_path / "keep.txt").read_text() == "x" and sorted(os.listdir(tmp_path)) == ["afile", "home", "keep.txt"]


# --------------------------------------------------------------------------------------------
# 2. the lock
# --------------------------------------------------------------------------------------------


def _lock(out: Path, pid: int, host: str | None = None):
    out.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-01 10:00:00"}
    (out / rundir.LOCK_NAME).write_text(json.dumps(info))


def test_a_second_trainer_stops_at_once_fresh_and_resume(tmp_path):
    out = tmp_path / "run"
    train(_cfg(out, steps=2))
    before = (out / "metrics.jsonl").read_text()
    _lock(out, os.getpid())  # a live process on this host holds it
    for kw in (dict(resume=True, steps=4), dict(overwrite=True)):
        with pytest.raises(rundir.LockError, match=rf"another trainer is using {re.escape(str(out))}: process "):
            train(_cfg(out, **kw))
    _lock(out, 1, host="elsewhere")  # another host: cannot tell, refuse and explain
    with pytest.raises(rundir.LockError, match=r"on host elsewhere.*If you are sure that process is gone, delete"):
        train(_cfg(out, resume=True, steps=4))
    assert (out / "metrics.jsonl").read_text() == before  # nothing was written or removed


def test_stale_lock_of_a_dead_process_is_removed_with_a_note(tmp_path, capsys):
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(out, dead.pid)
    s = train(_cfg(out))
    assert s["step"] == 4
    assert re.search(rf"removed a stale lock .*process {dead.pid} on .* no longer runs", capsys.readouterr().err)
    assert not (out / rundir.LOCK_NAME).exists()  # released at the end


def test_lock_is_exclusive_and_released():
    import tempfile

    d = Path(tempfile.mkdtemp())
    with rundir.RunLock(d) as lock:
        assert json.loads((d / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(rundir.LockError, match="another trainer"):
            rundir.RunLock(d).acquire()
        assert lock.held
    assert not (d / rundir.LOCK_NAME).exists()


# --------------------------------------------------------------------------------------------
# 4. damaged files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "wrong dict", "a tensor"])
def test_damaged_last_pt_names_the_file_and_the_way_out(tmp_path, capsys, damage):
    out = tmp_path / "run"
    train(_cfg(out, steps=2))
    last = out / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "garbage":
        last.write_bytes(os.urandom(3000))
    elif damage == "wrong dict":
        torch.save({"model": {}, "step": 3}, last)
    else:
        torch.save(torch.zeros(3), last)
    message = rf"cannot resume: {re.escape(str(last))} is damaged or not a checkpoint \(.+\); continue from the best"
    with pytest.raises(ConfigError, match=message + r".*cp .*best.pt .*last.pt.*or start afresh with --overwrite"):
        train(_cfg(out, resume=True, steps=4))
    code, err = _cli(["--out", str(out), "--resume", "--steps", "4"], capsys)
    assert code == 2 and re.search(message, err), err


def test_damaged_metrics_lines_are_set_aside_and_the_rest_kept(tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(out, steps=4, log_every=1))
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines()
    kept = [json.loads(line) for line in lines if '"final"' not in line]
    damaged = lines[:2] + ["", '{"step": 3, "train_bp'] + lines[2:4] + ["garbage ]]"] + lines[4:]
    path.write_text("\n".join(damaged) + "\n")
    capsys.readouterr()
    s = train(_cfg(out, steps=6, log_every=1, resume=True))
    assert s["step"] == 6
    err = capsys.readouterr().err
    assert re.search(r"metrics.jsonl had 3 damaged line\(s\) \(line 3, 4, 7: .*moved to .*metrics.damaged.jsonl", err)
    aside = [json.loads(line) for line in (out / "metrics.damaged.jsonl").read_text().splitlines()]
    assert [d["line"] for d in aside] == [3, 4, 7] and aside[1]["text"] == '{"step": 3, "train_bp'
    records = [_strict(line) for line in path.read_text().splitlines()]
    steps = [r["step"] for r in records if "train_bpd" in r and "final" not in r]
    assert steps == [1, 2, 3, 4, 5, 6] and records[: len(kept) - 0][:4] == kept[:4]


# --------------------------------------------------------------------------------------------
# 5. resume with different settings
# --------------------------------------------------------------------------------------------


def test_resume_refuses_changed_model_or_data_flags_and_allows_the_listed_ones(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--out", str(out), "--dataset", "digits", "--batch-size", "32", "--eval-images", "64"]
    code, _ = _cli([*base, "--steps", "2", "--n-samples", "4", "--temperatures", "1.0"], capsys)
    assert code == 0
    for extra, diff in (
        (["--preset", "small-mixing"], r"preset \(saved 'tiny', now 'small-mixing'\)"),
        (["--mixing", "emerging"], r"model \(saved \{\}, now \{'mixing': 'emerging'\}\)"),
        (["--lr", "0.5", "--seed", "3"], r"lr \(saved 0.01, now 0.5\); seed \(saved 0, now 3\)"),
        (["--dataset", "synthetic"], r"dataset \(saved 'digits', now 'synthetic'\)"),
    ):
        code, err = _cli(["--out", str(out), "--resume", "--steps", "4", *extra], capsys)
        assert code == 2 and re.search(r"--resume: these settings differ from the run saved in .*" + diff, err), err
        assert "steps, log_every, eval_every" in err  # what may change
    code, err = _cli(
        ["--out", str(out), "--resume", "--steps", "4", "--eval-every", "3", "--mixing", "conv1x1"], capsys
    )
    assert code == 0, err  # allowed changes, and a model flag equal to the saved value
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4


def test_resume_refuses_an_edited_config_json_and_steps_below_the_saved_step(tmp_path):
    out = tmp_path / "run"
    train(_cfg(out, steps=4))
    with pytest.raises(
        ConfigError, match=r"steps \(--steps\) 3 is below the step 4 saved in .*last.pt; pass --steps 4"
    ):
        train(_cfg(out, steps=3, resume=True))
    info = json.loads((out / "config.json").read_text())
    info["train"]["lr"] = 0.123
    (out / "config.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=r"config.json was edited \(lr \(saved 0.01, now 0.123\).*Undo the edit"):
        train(_cfg(out, steps=6, resume=True))


# --------------------------------------------------------------------------------------------
# 6. divergence, optimizer state, bad data
# --------------------------------------------------------------------------------------------


def test_divergence_guard_stops_before_writing_useless_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"diverged: train bpd .* at step 4 is above 16 .*for 3 logs in a row"):
        train(_cfg(out, lr=10.0, steps=40, log_every=1, eval_every=100, save_every=100))
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    code, err = _cli(["--out", str(tmp_path / "cli"), "--lr", "10", "--steps", "40", "--log-every", "1"], capsys)
    assert code == 1 and "diverged" in err
    # the bound is configurable and can be turned off
    s = train(_cfg(tmp_path / "off", lr=10.0, steps=6, log_every=1, diverge_factor=0, eval_every=100))
    assert s["step"] == 6 and s["train_bpd"] > 16


def test_checkpoint_refuses_non_finite_optimizer_state(tmp_path, monkeypatch):
    original, calls = torch.optim.Adamax.step, {"n": 0}

    def poisoned(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            p = self.param_groups[0]["params"][3]
            self.state[p]["exp_avg"].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.Adamax, "step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"step 2: optimizer state 'exp_avg' of .* is not finite; not writing"):
        train(_cfg(out, eval_every=100))
    assert not (out / "last.pt").exists()


def test_non_finite_input_batch_is_reported_as_bad_data(tmp_path, monkeypatch):
    from flowlib import data

    original, calls = data.GPUBatches.__next__, {"n": 0}

    def poisoned(self):
        x = original(self)
        calls["n"] += 1
        if calls["n"] == 4:  # one init batch, then steps 1, 2, 3
            x = x.float()
            x[0, 0, 0, 0] = float("nan")
        return x

    monkeypatch.setattr(data.GPUBatches, "__next__", poisoned)
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 3 .*bad data: the input batch holds 1 NaN"):
        train(_cfg(tmp_path / "run", eval_every=100))


# --------------------------------------------------------------------------------------------
# 7. strict JSON
# --------------------------------------------------------------------------------------------


def test_every_json_file_is_standard_json(tmp_path):
    out = tmp_path / "run"
    s = train(_cfg(out, steps=0, eval_every=100))  # no step: no train bpd, no best test bpd
    summary = _strict((out / "summary.json").read_text())
    assert summary["train_bpd"] is None and summary["best_test_bpd"] is None
    assert summary["nonfinite"] == {"train_bpd": "nan", "best_test_bpd": "inf"} and s["step"] == 0
    _strict((out / "config.json").read_text())
    for line in (out / "metrics.jsonl").read_text().splitlines():
        _strict(line)
    train(_cfg(out, steps=0, eval_every=100, resume=True))  # resuming a finished run
    assert _strict((out / "summary.json").read_text())["step"] == 0
    out2 = tmp_path / "finished"
    first = train(_cfg(out2, steps=2))
    again = train(_cfg(out2, steps=2, resume=True))
    assert again["train_bpd"] == first["train_bpd"] and again["test_bpd"] == first["test_bpd"]
    assert _strict((out2 / "summary.json").read_text())["train_bpd"] == first["train_bpd"]


def test_strict_json_writer():
    assert rundir.strict_json([1.0, float("nan")]) == "[1.0, null]"
    text = rundir.strict_json({"a": {"b": float("-inf")}, "c": 2})
    assert _strict(text) == {"a": {"b": None}, "c": 2, "nonfinite": {"a.b": "-inf"}}


# --------------------------------------------------------------------------------------------
# 8. every value validated before training starts
# --------------------------------------------------------------------------------------------

BAD_VALUES = [
    (["--lr", "nan"], r"lr \(--lr\) must be a finite number > 0, got nan"),
    (["--lr", "0"], r"lr \(--lr\) must be a finite number > 0, got 0"),
    (["--adam-eps", "-1"], r"adam_eps \(--adam-eps\) must be a finite number > 0, got -1"),
    (["--weight-decay", "-1"], r"weight_decay \(--weight-decay\) must be a finite number >= 0, got -1"),
    (["--seed", "1e20"], r"argument --seed: invalid int value: '1e20'"),
    (["--seed", "-1"], r"seed \(--seed\) must be an integer >= 0 and <= 4294967295, got -1"),
    (["--batch-size", "100000"], r"batch_size \(--batch-size\) 100000 is larger than the 1500 digits training images"),
    (["--temperatures", "nan"], r"temperatures \(--temperatures\) must hold finite numbers >= 0, got \(nan,\)"),
    (["--temperatures", ""], r"temperatures \(--temperatures\) must be a non-empty list"),
    (["--warmup-epochs", "nan"], r"warmup_epochs \(--warmup-epochs\) must be a finite number >= 0, got nan"),
    (["--lr-decay", "1.5"], r"lr_decay \(--lr-decay\) must be a finite number > 0 and <= 1, got 1.5"),
    (["--grad-clip", "-1"], r"grad_clip \(--grad-clip\) must be a finite number >= 0, got -1"),
    (["--eval-images", "-5"], r"eval_images \(--eval-images\) must be an integer >= 0, got -5"),
    (["--iw-samples", "-1"], r"iw_samples \(--iw-samples\) must be an integer >= 0, got -1"),
    (["--steps", "-3"], r"steps \(--steps\) must be an integer >= 0, got -3"),
    (["--log-every", "0"], r"log_every \(--log-every\) must be an integer >= 1, got 0"),
    (["--diverge-factor", "inf"], r"diverge_factor \(--diverge-factor\) must be a finite number >= 0, got inf"),
]


@pytest.mark.parametrize("argv, message", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_cli_values_are_validated_with_a_usage_error(tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    code, err = _cli(["--out", str(out), "--steps", "2", *argv], capsys)
    assert code == 2 and re.search(message, err), err
    assert not (out / "metrics.jsonl").exists()  # refused before training started


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", float("nan")),
        ("adam_eps", -1.0),
        ("weight_decay", -1.0),
        ("seed", 10**20),
        ("seed", 1.5),
        ("temperatures", (float("nan"),)),
        ("warmup_epochs", float("nan")),
        ("grad_clip", -1.0),
        ("eval_images", -5),
        ("steps", True),
    ],
)
def test_python_config_values_are_validated_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"^{field} \(--{field.replace('_', '-')}\) must (be|hold)"):
        train(_cfg(tmp_path / "o", **{field: value}))
    assert not (tmp_path / "o").exists()


def test_resume_steps_below_saved_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(out, steps=4))
    code, err = _cli(["--out", str(out), "--resume", "--steps", "2"], capsys)
    assert code == 2 and "steps (--steps) 2 is below the step 4 saved in" in err


# --------------------------------------------------------------------------------------------
# 10. disk errors
# --------------------------------------------------------------------------------------------


def test_full_disk_names_the_path_and_free_space_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    original = torch.save

    def full(obj, f, *args, **kwargs):
        original(obj, f, *args, **kwargs)  # a partial file is on disk when the error comes
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(
        rundir.WriteError, match=r"could not write .*best.pt: No space left on device \(the disk is full"
    ) as e:
        train(_cfg(out))
    assert re.search(r"; [0-9.]+ MiB free on /", str(e.value)), e.value
    assert not list(out.glob(".*.tmp")) and not (out / "best.pt").exists()
    assert not (out / rundir.LOCK_NAME).exists()
    code, err = _cli(["--out", str(tmp_path / "cli"), "--steps", "2", "--eval-every", "1"], capsys)
    assert code == 1 and re.search(r"error: could not write .*\.pt: No space left on device.* MiB free on /", err)
    assert not list((tmp_path / "cli").glob(".*.tmp"))


def test_unwritable_out_is_refused_before_training(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith(rundir.LOCK_NAME):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ConfigError, match=r"out \(--out\) .*run is not writable: Permission denied"):
        train(_cfg(tmp_path / "run"))


def test_two_trainers_on_one_out_the_second_stops_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flowlib.train", "--steps", "100000", "--save-every", "100000", "--eval-every"]
    first = subprocess.Popen(
        [*cmd, "100000", "--progress", "false", "--out", str(out)], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "metrics.jsonl").exists():
            time.sleep(0.2)
        owner = json.loads((out / rundir.LOCK_NAME).read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()
        for extra in ([], ["--overwrite"], ["--resume"]):
            t0 = time.time()
            code, err = _cli(["--out", str(out), "--steps", "5", *extra], capsys)
            assert code == 2 and f"another trainer is using {out}: process {first.pid} on this host" in err, err
            assert time.time() - t0 < 10  # at once, not after loading data or building a model
        assert first.poll() is None  # the first one is untouched and still training
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130 and "interrupted at step" in err
    assert not (out / rundir.LOCK_NAME).exists()
    code, _ = _cli(["--out", str(out), "--resume", "--steps", str(_step_of(out) + 1)], capsys)
    assert code == 0


def _step_of(out: Path) -> int:
    return torch.load(out / "last.pt", weights_only=True)["step"]


def test_paper_presets_evaluate_with_1000_importance_samples_and_small_ones_stay_cheap():
    for preset in ("paper-mixing", "paper-sylvester", "paper-residual"):
        assert TrainConfig.for_preset(preset).iw_samples == 1000, preset
    for preset in ("tiny", "small-mixing", "small-sylvester"):
        assert TrainConfig.for_preset(preset).iw_samples == 16, preset
