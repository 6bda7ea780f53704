"""Image data for flowlib: CIFAR-10 from its python batches, two embedded sets, a GPU batcher.

* :func:`load_cifar10` reads the original CIFAR-10 "python version" (``data_batch_1`` ..
  ``data_batch_5``, ``test_batch``, ``batches.meta``), checks every file's structure
  (keys, dtype, shape, label range, counts) and names the file when something is wrong.
  With ``download=True`` it fetches the official archive, verifies its MD5 and extracts it.
  Individual files are *not* checksummed, so a re-ordered or re-written copy in the same
  format loads as well as the official files do.
* :func:`find_cifar10` says where CIFAR-10 is: an explicit directory, else ``$FLOWLIB_DATA``,
  else ``~/.cache/flowlib/cifar-10-batches-py`` (downloading there only when asked).
* :func:`average_pool` downsamples uint8 images by averaging ``f x f`` blocks (the CPU-sized
  16x16 CIFAR-10 of ``python -m flowlib.experiments ... --scale cpu-real``).
* :func:`load_digits` (scikit-learn's bundled 8x8 digits) and :func:`load_synthetic`
  (generated smooth blobs and stripes) need no download; they make CPU runs and tests possible.
* :func:`write_cifar_batches` writes images in the exact on-disk CIFAR-10 format
  (tests and notebook 05's test mode use it to make small CIFAR-format directories).
* :class:`GPUBatches` keeps the whole uint8 data set on the device (CIFAR-10 train is
  150 MB) and draws index permutations and horizontal flips there: no per-image Python work.

Every loader returns ``(images, labels)``: ``images`` a uint8 tensor ``[N, C, H, W]`` with
values 0..255, ``labels`` an int64 tensor ``[N]``. Notebook 05 trains on them.
"""

from __future__ import annotations

import hashlib
import io
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
    "average_pool",
    "read_cifar_meta",
    "read_cifar_batch",
    "write_cifar_batches",
    "load_digits",
    "load_synthetic",
    "load_dataset",
    "DATASETS",
    "GPUBatches",
    "batches",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATASETS = ("cifar10", "digits", "synthetic")
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
    downsampled copy written by :func:`write_cifar_batches` records ``num_vis = 3 side^2``
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


# --------------------------------------------------------------------------------------------
# Writing CIFAR-format batches
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Embedded data sets
# --------------------------------------------------------------------------------------------


def load_digits(split: str = "train") -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits as uint8 ``[N, 1, 8, 8]`` images.

    The 17 grey levels 0..16 are scaled by 255/16 and rounded. The 1,797 images are split
    by a fixed permutation into 1,500 train and 297 test images.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    order = np.random.default_rng(0).permutation(len(images))
    idx = order[:1500] if split == "train" else order[1500:]
    return torch.from_numpy(images[idx]), torch.from_numpy(d.target[idx].astype(np.int64))


def load_synthetic(n: int = 2000, shape=(3, 8, 8), seed: int = 0) -> tuple[Tensor, Tensor]:
    """Generated images with learnable structure: a coloured Gaussian blob on oriented stripes.

    Image ``i`` has label ``i % 10``; the label fixes the stripe orientation and frequency and
    the blob colour, while the blob position, stripe phase and a little pixel noise are random.
    Deterministic for a given ``(n, shape, seed)``.
    """
    C, H, W = shape
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")  # [H, W]
    angle = labels.float() * (torch.pi / 10)  # stripe orientation per class
    freq = 0.5 + 0.25 * (labels % 3).float()  # cycles per image side
    phase = torch.rand(n, generator=g) * 2 * torch.pi
    proj = xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]  # [n, H, W]
    stripes = 0.5 + 0.3 * torch.sin(2 * torch.pi * freq[:, None, None] * proj + phase[:, None, None])
    centre = 0.25 + 0.5 * torch.rand(n, 2, generator=g)  # [n, 2]
    d2 = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2
    blob = torch.exp(-d2 / 0.05)  # [n, H, W]
    hue = torch.arange(C).float() / max(C, 1)  # [C]
    colour = 0.5 + 0.5 * torch.cos(2 * torch.pi * (labels.float()[:, None] / 10 + hue))  # [n, C]
    img = 0.6 * stripes[:, None] + 0.4 * blob[:, None] * colour[:, :, None, None]  # [n, C, H, W]
    img = img + 0.02 * torch.randn(n, C, H, W, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


def load_dataset(name: str, root=None, split: str = "train", download: bool = False) -> tuple[Tensor, Tensor]:
    """Dispatch over ``"cifar10"``, ``"digits"`` and ``"synthetic"``.

    ``cifar10`` reads the directory :func:`find_cifar10` gives for ``root`` (``None``: the
    conventions ``$FLOWLIB_DATA``, then ``~/.cache/flowlib``). ``synthetic`` has 2,000 train
    images (seed 0) and 500 test images (seed 1) of shape 3x8x8.
    """
    if name == "cifar10":
        return load_cifar10(root, split, download=download)
    if name == "digits":
        return load_digits(split)
    if name == "synthetic":
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return load_synthetic(2000, seed=0) if split == "train" else load_synthetic(500, seed=1)
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------------
# Device-resident batches
# --------------------------------------------------------------------------------------------


class GPUBatches:
    """Endless random uint8 batches drawn on the device, epoch by epoch, with horizontal flips.

    The whole set stays on ``device``; at the start of each epoch one ``randperm`` and one
    Bernoulli flip mask are drawn there from a dedicated generator, and each batch is an index
    gather plus ``torch.where(flip, x.flip(-1), x)``: no per-image Python work, no host copies.

    With ``world_size > 1`` every rank draws the same permutation (same seed) and takes the
    slice ``perm[rank::world_size]``, so the ranks see disjoint data. Incomplete final batches
    are dropped. :meth:`state_dict` / :meth:`load_state_dict` restore the exact data order.

    Arguments:
        images: uint8 ``[N, C, H, W]``.
        batch_size: images per batch (per rank).
        device: where the set and the generator live (default: the images' device).
        flip: random horizontal flips with probability 1/2.
        seed: seed of the data-order generator.
    """

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        device=None,
        flip: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {list(images.shape)}")
        self.images = images.to(device) if device is not None else images
        self.device = self.images.device
        self.batch_size, self.flip, self.rank, self.world_size = batch_size, flip, rank, world_size
        self.per_rank = len(images) // world_size
        self.steps_per_epoch = self.per_rank // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch size {batch_size} is larger than the {self.per_rank} images available per rank; "
                "use a smaller batch size"
            )
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch, self.index = 0, 0
        self._epoch_state = self.generator.get_state()
        self._draw()

    def _draw(self) -> None:
        """Draw this epoch's order and flips from the generator."""
        n = len(self.images)
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        flips = torch.rand(n, generator=self.generator, device=self.device) < 0.5
        self._perm = perm[self.rank :: self.world_size][: self.per_rank]
        self._flips = flips[self.rank :: self.world_size][: self.per_rank]

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        if self.index == self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._epoch_state = self.generator.get_state()
            self._draw()
        sl = slice(self.index * self.batch_size, (self.index + 1) * self.batch_size)
        self.index += 1
        x = self.images[self._perm[sl]]  # [B, C, H, W] uint8
        if self.flip:
            x = torch.where(self._flips[sl, None, None, None], x.flip(-1), x)
        return x

    def state_dict(self) -> dict:
        """Generator state at the start of the current epoch, the epoch and the batch index in it."""
        return {"generator": self._epoch_state.clone(), "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        self._epoch_state = state["generator"].cpu().clone()
        self.epoch, self.index = state["epoch"], state["index"]
        self._draw()


def batches(images: Tensor, batch_size: int, device=None, flip: bool = True, seed: int = 0) -> GPUBatches:
    """Shorthand for :class:`GPUBatches` (single process)."""
    return GPUBatches(images, batch_size, device=device, flip=flip, seed=seed)
