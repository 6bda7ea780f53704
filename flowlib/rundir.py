"""The trainer's output directory: which files it owns, the run lock, safe writes, tolerant reads.

What the trainer writes into ``out`` (and nothing else is ever removed)::

    config.json  metrics.jsonl  metrics.damaged.jsonl  summary.json  bpd_curve.png
    last.pt  best.pt  tb/events.out.tfevents.*  samples/step*_T*.png  train.lock  .<name>.tmp

* :func:`check_out` refuses an ``out`` that is empty text, the current or home directory, or a
  file; :func:`prepare_out` refuses a non-empty ``out`` for a fresh run unless ``overwrite``,
  and then removes only the files above (unknown files stay and are listed).
* :class:`RunLock` is an exclusive lock: ``train.lock`` created with ``O_CREAT | O_EXCL``
  (atomic on a local file system) holding the owner's pid, host and start time. A lock whose
  pid is dead on this host is stale (left by SIGKILL or a crash): it is removed with a note.
  Two trainers that find the same stale lock at the same moment may both remove it; then one
  of them wins the ``O_EXCL`` creation and the other stops with the usual message.
* :func:`atomic_write` writes to ``.<name>.tmp``, fsyncs and ``os.replace``-s it; on an
  ``OSError`` (full disk, permissions) it removes the temporary file and raises
  :class:`WriteError` naming the path and the free space (``shutil.disk_usage``).
* :func:`strict_json` never writes ``NaN``/``Infinity``: a non-finite float becomes ``null``
  and its name and value go into an explicit ``"nonfinite"`` field; ``allow_nan=False`` checks it.
* :func:`read_metrics` reads ``metrics.jsonl`` line by line; a damaged line (truncated, blank,
  garbled) is reported with its line number and moved to ``metrics.damaged.jsonl``.
* :func:`load_checkpoint` turns any unreadable ``last.pt`` into one message that names the file,
  the problem and the way out (``best.pt`` or a fresh start).

Example::

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with RunLock(d):
    ...     atomic_write(d / "summary.json", strict_json({"bpd": float("nan")}).encode())
    >>> (d / "summary.json").read_text()
    '{"bpd": null, "nonfinite": {"bpd": "nan"}}'
"""

from __future__ import annotations

import errno
import fnmatch
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flowlib.validate import ConfigError

__all__ = [
    "LOCK_NAME",
    "LockError",
    "WriteError",
    "RunLock",
    "check_out",
    "prepare_out",
    "atomic_write",
    "write_guard",
    "strict_json",
    "read_metrics",
    "load_checkpoint",
]

LOCK_NAME = "train.lock"
# (top-level name patterns, patterns inside the two sub-directories)
TRAINER_FILES = (
    "config.json",
    "metrics.jsonl",
    "metrics.damaged.jsonl",
    "summary.json",
    "bpd_curve.png",
    "last.pt",
    "best.pt",
    ".*.tmp",
)
TRAINER_SUBDIRS = {"tb": "events.out.tfevents.*", "samples": "step*_T*.png"}
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "step", "best_test_bpd", "config", "model_config", "rng")


class LockError(ConfigError):
    """Another trainer holds the run directory's lock."""


class WriteError(OSError):
    """Writing an output failed (full disk, permissions); the message names the path and the free space."""


# --------------------------------------------------------------------------------------------
# The directory itself
# --------------------------------------------------------------------------------------------


def check_out(out) -> Path:
    """``out`` as a ``Path``; refuses ``""``, the current directory, the home directory and a file."""
    if str(out).strip() == "":
        raise ConfigError('out (--out) is empty; give the run its own directory, e.g. --out runs/flow (not "")')
    path = Path(out).expanduser()
    resolved = path.resolve()
    for what, where in (("the current directory", Path.cwd()), ("your home directory", Path.home())):
        if resolved == where.resolve():
            raise ConfigError(
                f"out (--out) {str(out)!r} is {what}; the trainer writes and replaces files in --out, "
                "so give the run its own directory, e.g. --out runs/flow"
            )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out (--out) {path} is a file, not a directory; choose another --out")
    return path


def _is_trainer_file(name: str) -> bool:
    return name == LOCK_NAME or any(fnmatch.fnmatchcase(name, p) for p in TRAINER_FILES)


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def prepare_out(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """Make ``out`` ready (it exists and the lock is held); return the names of unknown files kept.

    Fresh run (``resume=False``): a directory holding anything but the lock is refused unless
    ``overwrite``; then only the trainer's own files are removed. Resume: leftover temporary
    files of an interrupted write are removed.
    """
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.name != LOCK_NAME)
    if resume:
        for tmp in out.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return []
    if entries and not overwrite:
        if (out / "last.pt").exists():
            raise ConfigError(
                f"{out} already holds a run ({out / 'last.pt'}); pass --resume to continue it, "
                "--overwrite to start afresh, or choose another --out"
            )
        raise ConfigError(
            f"{out} is not empty (it holds {_listing(entries)}); a fresh run only writes into an empty or new "
            "directory: pass --overwrite to replace the trainer's files there (other files are kept), "
            "--resume to continue a run, or choose another --out"
        )
    unknown = []
    for p in sorted(out.iterdir()):
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and p.name in TRAINER_SUBDIRS:
            for f in p.iterdir():
                if f.is_file() and fnmatch.fnmatchcase(f.name, TRAINER_SUBDIRS[p.name]):
                    f.unlink()
                else:
                    unknown.append(f"{p.name}/{f.name}")
            if not any(p.iterdir()):
                p.rmdir()
        elif p.is_file() and _is_trainer_file(p.name):
            p.unlink()
        else:
            unknown.append(p.name + ("/" if p.is_dir() else ""))
    if unknown:
        print(f"note: --overwrite kept files the trainer did not write in {out}: {_listing(unknown)}", file=sys.stderr)
    return unknown


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive lock on a run directory: ``out/train.lock`` with the owner's pid, host and start time.

    ``acquire`` creates ``out`` if needed and the lock file atomically (``O_CREAT | O_EXCL``);
    if it exists and its owner lives (or is on another host) it raises :class:`LockError`
    naming the owner; a lock of a dead process on this host is removed with a note.
    ``release`` removes the file only if it is still ours. Also a context manager.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.held = False
        self.stale_note = ""

    def _owner(self) -> dict:
        try:
            info = json.loads(self.path.read_text())
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid, host = owner.get("pid"), owner.get("host")
                if attempt == 0 and isinstance(pid, int) and host == me["host"] and not _alive(pid):
                    self.stale_note = (
                        f"note: removed a stale lock {self.path} of process {pid} on {host} (started "
                        f"{owner.get('started', '?')}), which no longer runs (killed or crashed)"
                    )
                    print(self.stale_note, file=sys.stderr)
                    self.path.unlink(missing_ok=True)
                    continue
                if not owner:
                    raise LockError(
                        f"{self.path.parent} is locked by {self.path}, which is unreadable (a trainer may be "
                        f"starting right now); if no trainer uses this directory, delete {self.path}"
                    ) from None
                where = "this host" if host == me["host"] else f"host {host}"
                raise LockError(
                    f"another trainer is using {self.path.parent}: process {pid} on {where}, started "
                    f"{owner.get('started', '?')} (lock {self.path}); wait for it to finish or stop it, or choose "
                    f"another --out. If you are sure that process is gone, delete {self.path}"
                ) from None
            except PermissionError as e:
                raise ConfigError(f"out (--out) {self.path.parent} is not writable: {e.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held, self.owner = True, me
            return self
        raise LockError(f"could not take the lock {self.path}: another trainer took it first")  # pragma: no cover

    def release(self) -> None:
        if self.held and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _free(path: Path) -> str:
    for p in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(p).free / 2**20:.1f} MiB free on {p}"
        except OSError:
            continue
    return "free space unknown"  # pragma: no cover


def _write_error(path: Path, e: OSError) -> WriteError:
    hint = " (the disk is full: free some space, then --resume)" if e.errno == errno.ENOSPC else ""
    error = WriteError(f"could not write {path}: {e.strerror or e}{hint}; {_free(path.parent)}")
    error.errno = e.errno
    return error


class write_guard:
    """``with write_guard(path): ...``: an ``OSError`` inside becomes :class:`WriteError` naming ``path``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is not None and isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(self.path, e) from e
        return False


def atomic_write(path: Path, payload: bytes | Callable) -> None:
    """Write ``payload`` (bytes, or a function of the open binary file) to ``path`` atomically.

    Writes ``.<name>.tmp`` next to ``path``, fsyncs, then ``os.replace``: a crash leaves either
    the old or the new file. On ``OSError`` the temporary file is removed and :class:`WriteError`
    names the path and the free space.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(payload):
                payload(f)
            else:
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(path, e) from e
        raise


def _finite_or_none(obj, nonfinite: dict, key: str = ""):
    if isinstance(obj, float) and not math.isfinite(obj):
        nonfinite[key] = str(obj)
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v, nonfinite, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v, nonfinite, f"{key}[{i}]") for i, v in enumerate(obj)]
    return obj


def strict_json(obj, indent=None) -> str:
    """Standard JSON: non-finite floats become ``null``, listed in ``"nonfinite"`` (dicts) by name.

    >>> strict_json({"a": 1.0, "b": float("inf")})
    '{"a": 1.0, "b": null, "nonfinite": {"b": "inf"}}'
    """
    nonfinite: dict = {}
    clean = _finite_or_none(obj, nonfinite)
    if nonfinite and isinstance(clean, dict):
        clean["nonfinite"] = nonfinite
    return json.dumps(clean, indent=indent, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _strict_loads(line: str):
    def refuse(name):
        raise ValueError(f"{name} is not standard JSON")

    return json.loads(line, parse_constant=refuse)


def read_metrics(path: Path, set_aside: bool = False) -> list[dict]:
    """The records of ``metrics.jsonl``; damaged lines are reported by line number and skipped.

    With ``set_aside`` the file is rewritten without them and they are appended (with their line
    number and the problem) to ``metrics.damaged.jsonl`` next to it.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, damaged = [], []
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            record = _strict_loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
            records.append(record)
        except ValueError as e:
            damaged.append({"line": number, "problem": str(e), "text": line})
    if damaged and set_aside:
        aside = path.with_name("metrics.damaged.jsonl")
        with write_guard(aside), open(aside, "a") as f:
            f.writelines(strict_json(d) + "\n" for d in damaged)
        atomic_write(path, "".join(strict_json(r) + "\n" for r in records).encode())
        where = ", ".join(str(d["line"]) for d in damaged)
        print(
            f"warning: {path} had {len(damaged)} damaged line(s) (line {where}: {damaged[0]['problem']}); "
            f"moved to {aside}, kept the other {len(records)} line(s)",
            file=sys.stderr,
        )
    return records


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` a trainer checkpoint (``weights_only``); any problem names the file and the way out."""
    import torch

    path = Path(path)
    problem = None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, empty, garbage, a pickle that is not plain data
        problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
    else:
        if not isinstance(ckpt, dict):
            problem = f"it holds a {type(ckpt).__name__}, not a trainer checkpoint"
        elif missing := [k for k in CHECKPOINT_KEYS if k not in ckpt]:
            problem = f"it is not a trainer checkpoint (missing {', '.join(missing)})"
        elif not isinstance(ckpt["step"], int) or not isinstance(ckpt["config"], dict):
            problem = "its step or config has the wrong type"
    if problem is None:
        return ckpt
    way_out = "start afresh with --overwrite"
    if path.name == "last.pt" and (path.parent / "best.pt").exists():
        way_out = (
            f"continue from the best checkpoint instead (cp {path.parent / 'best.pt'} {path}, then --resume; "
            f"it is a complete checkpoint of an earlier step), or {way_out}"
        )
    raise ConfigError(f"cannot resume: {path} is damaged or not a checkpoint ({problem}); {way_out}")
