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
  (tests and notebook 05's test mode use it to make small CIFAR-format directories), and
  :func:`cifar_subset` a subset of a CIFAR-10 directory (optionally downsampled).
* :class:`GPUBatches` keeps the whole uint8 data set on the device (CIFAR-10 train is
  150 MB) and draws index permutations and horizontal flips there: no per-image Python work.

Every loader returns ``(images, labels)``: ``images`` a uint8 tensor ``[N, C, H, W]`` with
values 0..255, ``labels`` an int64 tensor ``[N]``. Notebook 05 trains on them.

Modules: :mod:`.cifar` (reading, finding, downloading), :mod:`.writing` (the pickle format,
downsampling, subsets), :mod:`.sources` (embedded sets, :func:`load_dataset`) and
:mod:`.batching` (device-resident batches). This package re-exports their public names.
"""

from .batching import GPUBatches, batches
from .cifar import (
    CIFAR10_MD5,
    CIFAR10_URL,
    DataError,
    download_cifar10,
    find_cifar10,
    load_cifar10,
    read_cifar_batch,
    read_cifar_meta,
)
from .sources import DATASETS, load_dataset, load_digits, load_synthetic
from .writing import average_pool, cifar_subset, write_cifar_batches

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
    "cifar_subset",
    "load_digits",
    "load_synthetic",
    "load_dataset",
    "DATASETS",
    "GPUBatches",
    "batches",
]
