"""Making CIFAR-format directories: the on-disk pickle format, downsampling, subsets.

* :func:`write_cifar_batches` writes images in the exact on-disk CIFAR-10 format
  (tests and notebook 05's test mode use it to make small CIFAR-format directories).
* :func:`average_pool` downsamples uint8 images by averaging ``f x f`` blocks (the CPU-sized
  16x16 CIFAR-10 of ``python -m flowlib.experiments ... --scale cpu-real``).
* :func:`cifar_subset` writes a subset of a CIFAR-10 directory (optionally downsampled) that
  is read from ``batches.meta``, ``data_batch_1`` and ``test_batch`` alone.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cifar import (
    CIFAR10_CLASSES,
    CIFAR10_DIRNAME,
    META_FILE,
    TEST_FILE,
    TRAIN_FILES,
    DataError,
    _find_cifar_dir,
    read_cifar_batch,
    read_cifar_meta,
)

__all__ = ["write_cifar_batches", "average_pool", "cifar_subset"]


def average_pool(images, factor: int = 2) -> Tensor:
    """uint8 images downsampled by averaging ``factor x factor`` blocks, rounded to the nearest level.

    ``y[n, c, i, j] = round(mean_{a,b < f} x[n, c, f i + a, f j + b])`` (halves round up),
    ``[N, C, H, W] -> [N, C, H/f, W/f]``; cost ``O(N C H W)``. The result is again 8-bit
    data, so bits/dim on it are bits per dimension of the *smaller* image: not comparable
    with numbers on the original size.

    Example::

        small = average_pool(torch.full((1, 3, 32, 32), 7, dtype=torch.uint8))  # [1, 3, 16, 16], all 7
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {x.dtype} {list(x.shape)}")
    N, C, H, W = x.shape
    if factor < 1 or H % factor or W % factor:
        raise ValueError(f"factor must be a positive divisor of H = {H} and W = {W}, got {factor}")
    blocks = x.reshape(N, C, H // factor, factor, W // factor, factor).to(torch.int32).sum((3, 5))
    area = factor * factor
    return ((2 * blocks + area) // (2 * area)).to(torch.uint8)  # round(sum / area), halves up


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` (as the original files do).

    Loading with ``encoding="bytes"`` then gives bytes keys (``b'data'``) and with
    ``encoding="latin1"`` str keys, exactly like the official CIFAR-10 batches.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(obj, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def write_cifar_batches(directory, images, labels) -> Path:
    """Write images in the on-disk CIFAR-10 python format: 5 train batches, a test batch, meta.

    Arguments:
        directory: created if needed; receives ``data_batch_1..5``, ``test_batch`` and ``batches.meta``.
        images: uint8 ``[6 * n, 3, S, S]`` (tensor or array; ``S = 32`` is CIFAR-10's size, a
            downsampled copy records its ``S`` in ``batches.meta``); rows ``k*n .. (k+1)*n`` go
            to ``data_batch_{k+1}`` for k = 0..4 and the last ``n`` rows to ``test_batch``.
        labels: integers in 0..9, ``[6 * n]``.

    Returns the directory; :func:`load_cifar10` reads it back (``n`` rows per file).
    """
    images = np.asarray(images.cpu() if isinstance(images, Tensor) else images)
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be uint8 [6*n, 3, S, S], got {images.dtype} {list(images.shape)}")
    if images.shape[0] == 0 or images.shape[0] % 6 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"need 6*n images (5 train batches + 1 test batch of n each) and as many labels, "
            f"got {images.shape[0]} images and labels of shape {list(labels.shape)}"
        )
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError("labels must lie in 0..9")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n, vis = images.shape[0] // 6, 3 * images.shape[2] ** 2
    flat = np.ascontiguousarray(images.reshape(images.shape[0], vis))  # [6n, 3 S^2]
    for k, name in enumerate((*TRAIN_FILES, TEST_FILE)):
        rows = slice(k * n, (k + 1) * n)
        batch_label = f"{'testing' if name == TEST_FILE else 'training'} batch {min(k + 1, 5)} of 5"
        _dump_py2(
            {
                b"batch_label": batch_label.encode(),
                b"labels": [int(v) for v in labels[rows]],
                b"data": flat[rows],
                b"filenames": [f"image_{i:06d}.png".encode() for i in range(rows.start, rows.stop)],
            },
            directory / name,
        )
    meta = {b"num_cases_per_batch": n, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": vis}
    _dump_py2(meta, directory / META_FILE)
    return directory


def cifar_subset(source, dest, n_test: int, pool: int = 1) -> Path:
    """A CIFAR-format subset: train = ``data_batch_1[:5 n_test]``, test = ``test_batch[:n_test]``.

    Only ``data_batch_1``, ``test_batch`` and ``batches.meta`` of ``source`` (the
    ``cifar-10-batches-py`` directory or its parent) are read, so the subset can be made where
    only those files travel. The format's six files have equal sizes, so the subset holds
    ``5 n_test`` train images (``n_test = 2000``: all of ``data_batch_1``) and ``n_test`` test
    images. With ``pool > 1`` the images are downsampled by :func:`average_pool` (``pool = 2``:
    3x16x16). Written once: a ``dest`` that already holds a ``test_batch`` is returned as it is.

    Raises :class:`DataError` when one of the three files is missing or holds too few images.

    Example::

        subset = cifar_subset("cifar-10-batches-py", Path("runs/cifar10-subset-2000-pool2"), 2000, pool=2)
        train_x, _ = load_cifar10(subset, "train")  # uint8 [10000, 3, 16, 16]
    """
    dest = Path(dest)
    if (dest / TEST_FILE).exists():
        return dest
    given = Path(source).expanduser()
    source = _find_cifar_dir(given) or given
    for name in (META_FILE, TRAIN_FILES[0], TEST_FILE):
        if not (source / name).exists():
            raise DataError(
                f"CIFAR-10 subset: {source / name} is missing; the data directory must be a "
                f"{CIFAR10_DIRNAME} directory (or its parent) holding at least {META_FILE}, "
                f"{TRAIN_FILES[0]} and {TEST_FILE}"
            )
    rows, side = read_cifar_meta(source / META_FILE)
    train_x, train_y = read_cifar_batch(source / TRAIN_FILES[0], rows, side)
    test_x, test_y = read_cifar_batch(source / TEST_FILE, rows, side)
    n_train = 5 * n_test
    if n_train > len(train_x) or n_test > len(test_x):
        raise DataError(
            f"CIFAR-10 subset needs {n_train} train and {n_test} test images; "
            f"{TRAIN_FILES[0]} has {len(train_x)} and {TEST_FILE} {len(test_x)}"
        )
    train = average_pool(torch.from_numpy(train_x[:n_train]).view(-1, 3, side, side), pool)
    test = average_pool(torch.from_numpy(test_x[:n_test]).view(-1, 3, side, side), pool)
    return write_cifar_batches(dest, torch.cat([train, test]), np.concatenate([train_y[:n_train], test_y[:n_test]]))
