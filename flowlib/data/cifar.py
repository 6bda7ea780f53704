"""CIFAR-10 from its original python batches: reading, validation, finding by convention, download.

* :func:`load_cifar10` reads the original CIFAR-10 "python version" (``data_batch_1`` ..
  ``data_batch_5``, ``test_batch``, ``batches.meta``), checks every file's structure
  (keys, dtype, shape, label range, counts) and names the file when something is wrong.
  With ``download=True`` it fetches the official archive, verifies its MD5 and extracts it.
  Individual files are *not* checksummed, so a re-ordered or re-written copy in the same
  format loads as well as the official files do.
* :func:`find_cifar10` says where CIFAR-10 is: an explicit directory, else ``$FLOWLIB_DATA``,
  else ``~/.cache/flowlib/cifar-10-batches-py`` (downloading there only when asked).
* :func:`read_cifar_meta` and :func:`read_cifar_batch` read and check single files (a
  subset needs only ``batches.meta``, ``data_batch_1`` and ``test_batch``: :mod:`.writing`).

Example (a CIFAR-format directory written by :func:`flowlib.data.write_cifar_batches`)::

    images, labels = load_cifar10(find_cifar10("cifar-10-batches-py"), "test")  # uint8 [N, 3, 32, 32], int64 [N]
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import tarfile
import tempfile
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DataError",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "load_cifar10",
    "download_cifar10",
    "find_cifar10",
    "read_cifar_meta",
    "read_cifar_batch",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_HOW_TO_GET = (
    "pass download=True (command line: --download) to fetch the official archive "
    f"({CIFAR10_URL}), or point root (--data-dir) to an extracted '{CIFAR10_DIRNAME}' directory"
)


class DataError(ValueError):
    """A data set is missing, malformed or cannot be downloaded; the message says what to do."""


# --------------------------------------------------------------------------------------------
# CIFAR-10 reading and validation
# --------------------------------------------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays: a CIFAR batch needs nothing else.

    Refusing every other global means a tampered file cannot run code when it is loaded.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} (a CIFAR batch holds only arrays)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 file {path} is missing; {_HOW_TO_GET}") from None
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise DataError(f"CIFAR-10 file {path} is not a readable python pickle: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 file {path} holds a {type(obj).__name__}, expected a dict")
    # Original files give bytes keys with encoding="bytes"; files re-pickled by Python 3 give str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_meta(path: Path) -> tuple[int, int]:
    """``(rows, side)``: rows per batch file and image side from ``batches.meta``.

    The official files have 10,000 rows of ``num_vis = 3072 = 3 x 32 x 32`` values; a
    downsampled copy written by :func:`flowlib.data.write_cifar_batches` records ``num_vis = 3 side^2``
    (768 for 16x16). A missing ``num_vis`` means 32x32.
    """
    meta = _unpickle(path)
    n = meta.get("num_cases_per_batch")
    if not isinstance(n, int) or n <= 0:
        raise DataError(f"CIFAR-10 file {path}: 'num_cases_per_batch' must be a positive int, got {n!r}")
    vis = meta.get("num_vis", 3072)
    side = math.isqrt(vis // 3) if isinstance(vis, int) and vis > 0 else 0
    if side == 0 or 3 * side * side != vis:
        raise DataError(
            f"CIFAR-10 file {path}: 'num_vis' is {vis!r}, expected 3 x side^2 values per image (3072 for 3x32x32)"
        )
    return n, side


def read_cifar_batch(path: Path, rows: int, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file of ``rows`` images ``3 x side x side`` and check keys, dtype, shape and labels.

    The error names the file.
    """
    d = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise DataError(
            f"CIFAR-10 file {path} lacks key(s) {[k.encode() for k in missing]}; "
            f"found {sorted(str(k) for k in d)}, expected b'data' and b'labels'"
        )
    data = d["data"]
    if not isinstance(data, np.ndarray):
        raise DataError(f"CIFAR-10 file {path}: b'data' is a {type(data).__name__}, expected a numpy array")
    if data.dtype != np.uint8:
        raise DataError(f"CIFAR-10 file {path}: b'data' has dtype {data.dtype}, expected uint8")
    vis = 3 * side * side
    if data.shape != (rows, vis):
        raise DataError(
            f"CIFAR-10 file {path}: b'data' has shape {tuple(data.shape)}, expected ({rows}, {vis}) "
            f"({rows} rows per file as batches.meta says, {vis} = 3x{side}x{side} values per image)"
        )
    try:
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"CIFAR-10 file {path}: b'labels' is not a list of integers") from None
    if labels.shape != (rows,):
        raise DataError(f"CIFAR-10 file {path}: b'labels' has {labels.size} entries, expected {rows}")
    bad = (labels < 0) | (labels > 9)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"CIFAR-10 file {path}: label {labels[i]} at row {i} is outside 0..9")
    return data, labels


def _find_cifar_dir(root: Path) -> Path | None:
    """``root`` itself when it holds the batches, else ``root/cifar-10-batches-py`` if that does."""
    for d in (root, root / CIFAR10_DIRNAME):
        if (d / META_FILE).exists() or (d / TEST_FILE).exists() or (d / TRAIN_FILES[0]).exists():
            return d
    return None


def load_cifar10(root=None, split: str = "train", download: bool = False) -> tuple[Tensor, Tensor]:
    """CIFAR-10 from the python batches in ``root`` (or ``root/cifar-10-batches-py``).

    Arguments:
        root: the extracted ``cifar-10-batches-py`` directory, or its parent; ``None``: the
            conventions of :func:`find_cifar10` (``$FLOWLIB_DATA``, ``~/.cache/flowlib``).
        split: ``"train"`` (``data_batch_1..5``, 50,000 images) or ``"test"`` (``test_batch``, 10,000).
        download: fetch and extract the official archive there when no batches are found.

    Returns:
        ``images`` uint8 ``[N, 3, S, S]`` (``S = 32`` for the official files; ``batches.meta``
        of a downsampled copy says ``S``) and ``labels`` int64 ``[N]``.

    Each file is checked for the keys ``b'data'`` and ``b'labels'``, uint8 data of shape
    ``(rows, 3 S^2)``, labels in 0..9, and the row count ``num_cases_per_batch`` of
    ``batches.meta`` (10,000 in the official files, so 50,000 train and 10,000 test images).
    A :class:`DataError` names the first bad file and what is wrong with it.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    found = find_cifar10(root, download=download)
    rows, side = read_cifar_meta(found / META_FILE)
    files = TRAIN_FILES if split == "train" else (TEST_FILE,)
    parts = [read_cifar_batch(found / name, rows, side) for name in files]
    data = np.concatenate([p[0] for p in parts])  # [N, 3 S^2], R plane then G then B, rows of S
    labels = np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(data).view(-1, 3, side, side)  # [N, 3, S, S]
    return images, torch.from_numpy(labels)


def find_cifar10(data_dir=None, download: bool = False) -> Path:
    """The ``cifar-10-batches-py`` directory to use, by convention; download only when asked.

    The place looked at is the first of: ``data_dir`` (when not ``None``), the environment
    variable ``FLOWLIB_DATA`` (when set), ``~/.cache/flowlib/cifar-10-batches-py``. Each may
    be the ``cifar-10-batches-py`` directory itself or its parent. Only that one place is
    used, so a wrong explicit path is an error rather than a silent switch to another copy.

    Arguments:
        data_dir: an explicit directory, or ``None`` for the conventions.
        download: when the place holds no batches, fetch the official archive there
            (MD5-checked, :func:`download_cifar10`); otherwise raise.

    Returns:
        the directory holding ``batches.meta``, the batch files and ``test_batch``.

    Raises:
        DataError: no batches at that place (and ``download=False``), naming the place and
        where the name came from.

    Example::

        root = find_cifar10()          # $FLOWLIB_DATA or ~/.cache/flowlib/cifar-10-batches-py
        images, labels = load_cifar10(root, "test")
    """
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser(), "the data_dir argument"
    elif os.environ.get("FLOWLIB_DATA"):
        root, origin = Path(os.environ["FLOWLIB_DATA"]).expanduser(), "$FLOWLIB_DATA"
    else:
        root, origin = Path.home() / ".cache" / "flowlib" / CIFAR10_DIRNAME, "the default location"
    found = _find_cifar_dir(root)
    if found is not None:
        return found
    if download:
        return download_cifar10(root.parent if root.name == CIFAR10_DIRNAME else root)
    what = "does not exist" if not root.exists() else "holds no CIFAR-10 batches"
    raise DataError(
        f"CIFAR-10 directory {root} ({origin}) {what}; pass download=True (command line: --download) "
        f"to fetch {CIFAR10_URL} there, or point data_dir (--data-dir) or $FLOWLIB_DATA to an extracted "
        f"'{CIFAR10_DIRNAME}' directory or its parent"
    )


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract only regular files and directories below ``cifar-10-batches-py/``."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith("/") or ".." in parts or not parts or parts[0] != CIFAR10_DIRNAME:
                raise DataError(f"refusing to extract {archive}: unexpected path {m.name!r} in the archive")
            if not (m.isfile() or m.isdir()):
                raise DataError(f"refusing to extract {archive}: {m.name!r} is not a regular file")
        tar.extractall(dest, members=members, filter="data")


def download_cifar10(root, url: str | None = None, md5: str | None = None) -> Path:
    """Download the official CIFAR-10 python archive into ``root``, verify its MD5, extract it.

    ``url`` and ``md5`` default to :data:`CIFAR10_URL` and :data:`CIFAR10_MD5`.
    Returns the path of the extracted ``cifar-10-batches-py`` directory. Without internet
    (or on any network error) raises a :class:`DataError` that says what to do instead.
    """
    from tqdm.auto import tqdm

    url, md5 = url or CIFAR10_URL, md5 or CIFAR10_MD5
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".cifar10-", suffix=".tar.gz")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urlopen(url, timeout=60) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10") as bar:
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except (URLError, OSError) as e:
                raise DataError(
                    f"could not download CIFAR-10 from {url} ({e}); check the internet connection, or "
                    f"download and extract the archive yourself and point --data-dir to its '{CIFAR10_DIRNAME}'"
                ) from None
        if digest.hexdigest() != md5:
            raise DataError(
                f"the downloaded CIFAR-10 archive has MD5 {digest.hexdigest()}, expected {md5}: "
                "the download is corrupt or incomplete; run again, or download it yourself"
            )
        _safe_extract(Path(tmp), root)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return root / CIFAR10_DIRNAME
