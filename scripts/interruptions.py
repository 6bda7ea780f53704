"""Randomised interruptions of the trainer, each resumed and compared bit for bit with an uninterrupted run.

Each trial starts ``python -m flowlib.train`` (tiny preset on digits, one thread, deterministic
algorithms), sends it SIGKILL, SIGTERM, one SIGINT or two SIGINTs 0-100 ms apart at a random
moment (a quarter in start-up, the rest uniform over training, checkpoint writes and the final
evaluation, as timed on an uninterrupted reference run), waits for it to end, then
continues with ``--resume`` (or starts afresh with ``--overwrite`` when no checkpoint was written)
until a run finishes. The finished run must equal the reference: every tensor of ``last.pt``
(model, optimizer state), every logged train/test bpd, the final test bpd. Also counted: a
traceback in an interrupted run's output, and a message about ``last.pt`` that disagrees with
the file ("holds step N")::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/interruptions.py --trials 50

prints one line per trial and the counts per kind; exit code 0 when every trial is exact.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("SIGKILL", "SIGTERM", "SIGINT", "SIGINT x2")


def command(out: Path, steps: int, *extra: str) -> list[str]:
    """The trainer's command line of every run (reference, interrupted, resumed)."""
    flags = (
        f"--preset tiny --dataset digits --steps {steps} --batch-size 32 --log-every 1 --eval-every 15 "
        "--save-every 7 --eval-images 64 --n-samples 4 --temperatures 1.0 --deterministic --progress false"
    )
    return [sys.executable, "-m", "flowlib.train", *flags.split(), "--out", str(out), *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout)


def _reference(out: Path, steps: int) -> tuple[float, float]:
    """Run the reference; return (seconds until its first metrics line, seconds in all)."""
    log = out.with_name(out.name + ".stderr")
    t0 = time.perf_counter()
    with open(log, "w") as f:  # a file, not a pipe: nothing blocks while we poll
        p = subprocess.Popen(command(out, steps, "--overwrite"), stdout=subprocess.DEVNULL, stderr=f, env=ENV, cwd=ROOT)
        first = None
        while p.poll() is None:
            if first is None and (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size:
                first = time.perf_counter() - t0
            time.sleep(0.02)
    if p.returncode != 0:
        raise RuntimeError(f"the reference run failed (exit {p.returncode}):\n{log.read_text()}")
    total = time.perf_counter() - t0
    return (first or total), total


def outcome(out: Path) -> dict:
    """What a finished run left: ``last.pt`` tensors, logged bpd per step, the final test bpd."""
    ckpt = torch.load(out / "last.pt", weights_only=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = {(r["step"], k): r[k] for r in records if not r.get("final") for k in ("train_bpd", "test_bpd") if k in r}
    return {
        "step": ckpt["step"],
        "model": ckpt["model"],
        "optimizer": ckpt["optimizer"]["state"],
        "curve": curve,
        "test_bpd": json.loads((out / "summary.json").read_text())["test_bpd"],
    }


def same(a: dict, b: dict) -> str:
    """``""`` if the two outcomes are bit-identical, else what differs first."""
    if a["step"] != b["step"]:
        return f"step {a['step']} != {b['step']}"
    for name, t in a["model"].items():
        if not torch.equal(t, b["model"][name]):
            return f"parameter {name}"
    for key, state in a["optimizer"].items():
        for name, t in state.items():
            if torch.is_tensor(t) and not torch.equal(t, b["optimizer"][key][name]):
                return f"optimizer state {key}.{name}"
    if a["curve"] != b["curve"]:
        diff = sorted(k for k in set(a["curve"]) | set(b["curve"]) if a["curve"].get(k) != b["curve"].get(k))
        return f"metrics differ at {diff[:3]}"
    if a["test_bpd"] != b["test_bpd"]:
        return f"final test bpd {a['test_bpd']} != {b['test_bpd']}"
    return ""


def _interrupt(cmd: list[str], kind: str, delay: float, gap: float) -> tuple[int, str, float | None]:
    """Start ``cmd``, send ``kind`` after ``delay`` s; return (exit code, stderr, wall time if it ended first)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        p.wait(timeout=delay)
        _, err = p.communicate()
        return p.returncode, err, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        if kind == "SIGKILL":
            p.kill()
        elif kind == "SIGTERM":
            p.send_signal(signal.SIGTERM)
        else:
            p.send_signal(signal.SIGINT)
            if kind == "SIGINT x2":
                time.sleep(gap)
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=600)
    return p.returncode, err, None


def phase(code: int, err: str) -> str:
    """Where the signal landed, from the interrupted run's exit code and its last message."""
    if code == -signal.SIGKILL:
        return "killed"
    for text, where in (
        ("aborted during start-up", "start-up"),
        ("aborted before training started", "start-up"),
        ("interrupted after the training steps", "after the last step"),
        ("aborted at step", "training"),
        ("interrupted at step", "training"),
    ):
        if text in err:
            return where
    return "before the trainer's handlers" if code < 0 else f"exit {code} (no message)"


def trial(work: Path, steps: int, kind: str, delay: float, gap: float, reference: dict) -> dict:
    """One interruption and the resumes after it; returns what happened (stderr kept in ``work``)."""
    trial.count += 1
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    code, err, finished = _interrupt(command(out, steps), kind, delay, gap)
    if finished is not None:  # the run ended before the signal: no interruption, only a shorter span next time
        return {"kind": kind, "delay": round(delay, 3), "finished": finished}
    (work / f"trial{trial.count:02d}.stderr").write_text(err)
    # Python's own KeyboardInterrupt traceback while ``python -m`` still imports the flowlib package
    # and torch (runpy's _get_module_details; no trainer code has run, nothing is written) is
    # counted apart from a traceback of the trainer.
    importing = "Traceback" in err and "in _get_module_details" in err
    result = {"kind": kind, "delay": round(delay, 3), "code": code, "importing": importing, "phase": phase(code, err)}
    result.update(traceback="Traceback" in err and not importing, false="")
    claim = re.search(r"last\.pt holds step (\d+)", err)
    if claim and kind != "SIGKILL":
        on_disk = torch.load(out / "last.pt", weights_only=True)["step"] if (out / "last.pt").exists() else None
        if on_disk != int(claim.group(1)):
            result["false"] = f"message says step {claim.group(1)}, last.pt holds {on_disk}"
    for _ in range(3):  # a resumed run is not interrupted, so one normally suffices
        if code == 0:
            break
        extra = "--resume" if (out / "last.pt").exists() else "--overwrite"
        r = _run(command(out, steps, extra))
        code, err = r.returncode, r.stderr
        result["traceback"] |= "Traceback" in err
    if code != 0:
        result["diff"] = f"resume failed (exit {code}): {err.strip().splitlines()[-1] if err.strip() else ''}"
        return result
    result["diff"] = same(outcome(out), reference)
    return result


trial.count = 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="interruptions (signals delivered to a running trainer)")
    parser.add_argument("--steps", type=int, default=150, help="training steps of every run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kinds and moments")
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    # A shell starts background jobs with SIGINT ignored, and children inherit that; a handled
    # SIGINT here is reset to the default in each trainer, as a terminal's Ctrl-C finds it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="interruptions-"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    start, span = _reference(work / "reference", args.steps)  # start-up, then training and final evaluation
    reference = outcome(work / "reference")
    print(
        f"reference: first step logged at {start:.1f} s, {args.steps} steps done at {span:.1f} s; a quarter of "
        f"the signals come at random in the start-up [0, {start:.1f}] s, the others in [{start:.1f}, {span:.1f}] s"
    )

    counts, results, i = Counter(), [], 0
    while i < args.trials:
        kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
        delay = rng.uniform(0.0, start) if rng.random() < 0.25 else rng.uniform(start, span)
        r = trial(work, args.steps, kind, delay, rng.uniform(0.0, 0.1), reference)
        if "finished" in r:  # the machine got faster: shrink both windows by the same factor
            start, span = start * r["finished"] / span, r["finished"]
            ended = f"came after the run ended ({r['finished']:.1f} s)"
            print(f"    {kind:9s} at {r['delay']:6.3f} s {ended}; windows now [0, {start:.1f}], [.., {span:.1f}] s")
            continue
        i += 1
        results.append(r)
        exact = not r["diff"] and not r["traceback"] and not r["false"]
        counts[(kind, "exact" if exact else "FAILED")] += 1
        status = "exact" if exact else f"FAILED: {r['diff'] or ''} {r['false']} {'traceback' if r['traceback'] else ''}"
        note = " (signal came while Python imported torch)" if r["importing"] else ""
        where = f"exit {r['code']:4d}, {r['phase']}"
        print(f"{i:3d} {kind:9s} at {r['delay']:6.3f} s ({where}): {status}{note}", flush=True)
    print()
    for kind in KINDS:
        n = counts[(kind, "exact")] + counts[(kind, "FAILED")]
        print(f"{kind:9s}: {counts[(kind, 'exact')]}/{n} resumed bit-exactly")
    phases = Counter(r["phase"] for r in results)
    print("signals landed: " + ", ".join(f"{n} {where}" for where, n in phases.most_common()))
    exact = sum(v for (_, s), v in counts.items() if s == "exact")
    importing = sum(r["importing"] for r in results)
    print(f"total: {exact}/{args.trials} bit-exact ({time.perf_counter() - t0:.0f} s, one thread, {work})")
    print(
        f"{importing} signal(s) came while Python imported torch (its own KeyboardInterrupt traceback, nothing written)"
    )
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if exact == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
