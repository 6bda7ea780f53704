"""Image data for flowlib: CIFAR-10 from its python batches, two embedded sets, a GPU batcher.

One module per job; this package re-exports their public names (``flowlib.data.<name>``):

* :mod:`.cifar` - :func:`load_cifar10` (the original python batches, every file's structure
  checked, the bad file named), :func:`find_cifar10` (an explicit directory, ``$FLOWLIB_DATA``,
  ``~/.cache/flowlib``) and :func:`download_cifar10` (the official archive, MD5-checked);
* :mod:`.writing` - :func:`write_cifar_batches` (the exact on-disk format, for tests and small
  copies), :func:`average_pool` (``f x f`` block means: the 16x16 CIFAR-10 of the cpu-real
  experiments) and :func:`cifar_subset` (a subset read from three of the files);
* :mod:`.sources` - :func:`load_digits` and :func:`load_synthetic`, which need no download,
  and :func:`load_dataset` over :data:`DATASETS`;
* :mod:`.batching` - :class:`GPUBatches`: the whole uint8 set on the device (CIFAR-10 train is
  150 MB), index permutations and horizontal flips drawn there.

Every loader returns ``(images, labels)``: ``images`` a uint8 tensor ``[N, C, H, W]`` with
values 0..255, ``labels`` an int64 tensor ``[N]``. Notebook 05 trains on them.
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
