"""The GPU check's summary table: the human-readable end of its output, from the records of ``gpu_check.jsonl``.

:func:`summary_table` gives, in order: the environment line; the correctness table (one row per
layer, the ``y``, ``logdet`` and ``inverse`` relative errors per precision mode, ``!`` above
:data:`~flowlib.bench.gpu_correctness.FLAG`, ``*`` where the log-det is compared with float32);
the throughput table (images/s, ms per batch, the ratio to the official H100 figure, peak memory,
parameters) and the fast/baseline ratios; the CIFAR line; the skipped and failed steps; the time used.

>>> records = [{"step": "env", "name": "cpu", "torch": "2.x"}, {"step": "summary", "elapsed_s": 1.0, "budget_s": 9}]
>>> print(summary_table(records).splitlines()[-1])
total 1.0 s of a 9 s budget
"""

from __future__ import annotations

from flowlib.bench.gpu_correctness import FLAG
from flowlib.bench.gpu_plan import CONFIGS, OFFICIAL, TARGET_RATIO, fmt

__all__ = ["summary_table"]


def _correctness_lines(records: list[dict]) -> list[str]:
    """The correctness table: one row per layer, three relative errors per precision mode, then what is flagged."""
    corr = [r for r in records if r["step"] == "correctness" and "layer" in r]
    if not corr:
        return []
    modes = list(dict.fromkeys(r["precision"] for r in corr))
    columns = [(m, key) for m in modes for key in ("y_rel", "logdet_rel", "inverse_rel")]
    lines = [
        f"\ncorrectness: float32 on the device vs float64 on the CPU, relative errors ('!' above {FLAG:g})",
        f"{'layer':22s}" + "".join(f"{m + ' ' + key[:-4]:>15s}" for m, key in columns),
    ]
    for layer in dict.fromkeys(r["layer"] for r in corr):
        by_mode = {r["precision"]: r for r in corr if r["layer"] == layer}
        cells = []
        for m, key in columns:
            r = by_mode.get(m, {})
            shown = "expm_rel" if key == "y_rel" and "expm_rel" in r else key  # expm has one error, in the y column
            value, flagged = r.get(shown), r.get("flagged", ())
            mark = "!" if shown in flagged else "*" if shown == "logdet_rel" and "logdet_reference" in r else " "
            cells.append(f"{value:14.2e}{mark}" if isinstance(value, float) else f"{'-':>14s} ")
        r = next(iter(by_mode.values()))
        note = r.get("skipped") or r.get("error") or ""
        lines.append(f"{layer:22s}" + "".join(cells) + (f"  {note[:70]}" if note else ""))
    if any("logdet_reference" in r for r in corr):
        lines.append("* log-det compared with float32 on the CPU: a stochastic estimate (logdet_reference in the JSON)")
    flagged = sorted({r["layer"] for r in corr if r.get("flagged")})
    lines.append(f"flagged: {', '.join(flagged)}" if flagged else "nothing flagged")
    return lines


def _throughput_lines(records: list[dict]) -> list[str]:
    """The throughput table: train, eval and sample rows of each configuration, then the ratio records."""
    rows = []  # (what, record, images/s key, ms key, official key)
    for r in records:
        if r["step"] == "train" and r.get("config") in CONFIGS:
            rows.append(("train", r, "images_per_s", "ms_per_step", "train"))
        if r["step"] == "sample" and r.get("config") in CONFIGS:
            rows.append(("eval", r, "eval_images_per_s", "ms_per_eval_batch", "eval"))
            rows.append(("sample", r, "sample_images_per_s", "ms_per_sample_batch", "sample"))
    if not rows:
        return []
    lines = [
        f"\nthroughput (official H100 figures of issue 7: train {OFFICIAL['train']:.0f}, eval {OFFICIAL['eval']:.0f}, "
        f"sample {OFFICIAL['sample']:.0f} img/s; target x{TARGET_RATIO:g})",
        f"{'':7s}{'configuration':34s}{'img/s':>9s}{'ms/batch':>10s}{'vs official':>13s}"
        f"{'peak GiB':>10s}{'params':>13s}",
    ]
    for what, r, rate, ms, official in sorted(rows, key=lambda row: ["train", "eval", "sample"].index(row[0])):
        label = f"{r['config']} ({'fp32' if r['conditioner_dtype'] == 'float32' else 'bf16'}, "
        label += f"{'compile' if r['compile'] else 'eager'}, "
        label += f"{'NHWC' if r['channels_last'] else 'NCHW'})"
        peak = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.2f}"
        lines.append(
            f"{what:7s}{label:34s}{r[rate]:9.1f}{r[ms]:10.2f}{r[rate] / OFFICIAL[official]:12.2f}x{peak:>10s}"
            f"{r['n_params']:13,d}"
        )
    for r in records:
        if r.get("config") == "ratio":
            ratios = {k: v for k, v in r.items() if k not in ("step", "t_s", "config", "target", "preset")}
            lines.append(f"{r['step']} ratios: " + ", ".join(f"{k} {fmt(v)}" for k, v in ratios.items()))
    return lines


def summary_table(records: list[dict]) -> str:
    """The human-readable summary of all records (printed last, so it ends the device's output)."""
    env = next((r for r in records if r["step"] == "env" and "name" in r), {})
    lines = [
        f"== GPU check on {env.get('name', '?')} (capability {env.get('capability', '-')}, "
        f"{env.get('memory_gib', '-')} GiB), torch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}; "
        f"TF32 as found: matmul {env.get('tf32_matmul')}, cuDNN {env.get('tf32_cudnn')}"
    ]
    lines += _correctness_lines(records)
    lines += _throughput_lines(records)
    for r in records:
        if r["step"] == "cifar" and "steps" in r:
            test = "-" if r["test_bpd"] is None else f"{r['test_bpd']:.4f}"
            lines.append(
                f"\ncifar: {r['config']} configuration, {r['steps']} steps in {r['wall_s']:.1f} s "
                f"({r['images_per_s']:.0f} img/s, {r['n_train']} train images): train bpd {r['train_bpd']:.4f}, "
                f"test bpd {test} ({r['n_test']} test images). A shortened run: issue 7's goal is test bpd "
                "<= 3.50 after 10 minutes of training."
            )
        if r["step"] == "cifar" and r.get("partial") and r["curve"]:
            step, seconds, bpd = r["curve"][-1]
            lines.append(
                f"\ncifar (cut): {r['config']} configuration, train bpd {bpd:.4f} at step {step} ({seconds:.0f} s)"
            )
    lines.append("")
    for r in records:
        if "layer" not in r and ("skipped" in r or "error" in r):
            lines.append(f"{r['step']}: {'skipped' if 'skipped' in r else 'error'}: {r.get('skipped') or r['error']}")
    done = next((r for r in records if r["step"] == "summary"), {})
    lines.append(f"total {done.get('elapsed_s', '?')} s of a {done.get('budget_s', '?')} s budget")
    return "\n".join(lines)
