"""flowlib.data: CIFAR-format reading and validation, download errors, embedded sets, the device batcher."""

import hashlib
import io
import pickle
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from flowlib import data
from flowlib.data import DataError, cifar


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def cifar_dir(tmp_path):
    x, y = _images(24)
    data.write_cifar_batches(tmp_path / "cifar-10-batches-py", x, y)
    return tmp_path / "cifar-10-batches-py", x, y


def test_roundtrip_train_and_test(cifar_dir):
    d, x, y = cifar_dir
    xtr, ytr = data.load_cifar10(d, "train")
    assert xtr.dtype == torch.uint8 and xtr.shape == (20, 3, 32, 32) and ytr.dtype == torch.int64
    assert torch.equal(xtr, x[:20]) and torch.equal(ytr, y[:20])
    xte, yte = data.load_cifar10(d.parent, "test")  # the parent directory works too
    assert torch.equal(xte, x[20:]) and torch.equal(yte, y[20:])


def test_written_files_match_original_format(cifar_dir):
    d, x, _ = cifar_dir
    with open(d / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert set(raw) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (4, 3072) and raw[b"data"].flags.c_contiguous
    # R plane, then G, then B, each row-major 32x32
    assert np.array_equal(raw[b"data"][0, :1024].reshape(32, 32), x[0, 0].numpy())
    with open(d / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["num_cases_per_batch"] == 4


def _rewrite(path, **changes):
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    for k, v in changes.items():
        if v is None:
            del d[k.encode()]
        else:
            d[k.encode()] = v
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": None}, r"data_batch_3 lacks key.*b'data'"),
        ({"labels": None}, r"data_batch_3 lacks key.*b'labels'"),
        ({"data": np.zeros((4, 3072), np.float32)}, r"data_batch_3.*dtype float32, expected uint8"),
        ({"data": np.zeros((4, 3, 32, 32), np.uint8)}, r"data_batch_3.*shape \(4, 3, 32, 32\), expected \(4, 3072\)"),
        ({"data": np.zeros((3, 3072), np.uint8)}, r"data_batch_3.*shape \(3, 3072\), expected \(4, 3072\)"),
        ({"labels": [0, 1, 10, 2]}, r"data_batch_3: label 10 at row 2 is outside 0\.\.9"),
        ({"labels": [0, 1, 2]}, r"data_batch_3: b'labels' has 3 entries, expected 4"),
    ],
)
def test_validation_names_the_bad_file(cifar_dir, change, message):
    d, _, _ = cifar_dir
    _rewrite(d / "data_batch_3", **change)
    with pytest.raises(DataError, match=message):
        data.load_cifar10(d, "train")
    data.load_cifar10(d, "test")  # the other split is unaffected


def test_missing_file_and_garbage_file(cifar_dir):
    d, _, _ = cifar_dir
    (d / "test_batch").unlink()
    with pytest.raises(DataError, match=r"test_batch is missing.*download=True"):
        data.load_cifar10(d, "test")
    (d / "data_batch_5").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"data_batch_5 is not a readable python pickle"):
        data.load_cifar10(d, "train")


def test_pickle_with_foreign_objects_is_refused(cifar_dir):
    d, _, _ = cifar_dir
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Path("x"), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_2.*unexpected object"):
        data.load_cifar10(d, "train")


def test_missing_directory_says_how_to_get_the_data(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"does not exist.*download=True.*cifar-10-batches-py"):
        data.load_cifar10(tmp_path / "nowhere")
    monkeypatch.delenv("FLOWLIB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match=r"home/.cache/flowlib/cifar-10-batches-py \(the default location\)"):
        data.load_dataset("cifar10", None)


@pytest.fixture
def no_conventions(tmp_path, monkeypatch):
    """No $FLOWLIB_DATA and an empty home directory: only what a test puts there is found."""
    monkeypatch.delenv("FLOWLIB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home" / ".cache" / "flowlib" / "cifar-10-batches-py"


def test_find_cifar10_order_explicit_then_env_then_cache(tmp_path, monkeypatch, no_conventions):
    x, y = _images(6)
    cache = data.write_cifar_batches(no_conventions, x, y)
    env = data.write_cifar_batches(tmp_path / "env" / "cifar-10-batches-py", x, y)
    explicit = data.write_cifar_batches(tmp_path / "mine", x, y)
    assert data.find_cifar10() == cache
    monkeypatch.setenv("FLOWLIB_DATA", str(env.parent))  # the parent works as well as the directory
    assert data.find_cifar10() == env
    monkeypatch.setenv("FLOWLIB_DATA", str(env))
    assert data.find_cifar10() == env
    assert data.find_cifar10(explicit) == explicit  # an explicit argument wins over both
    with pytest.raises(DataError, match=r"home \(the data_dir argument\) holds no CIFAR-10 batches"):
        data.find_cifar10(tmp_path / "home")  # ... and is the only place looked at
    monkeypatch.setenv("FLOWLIB_DATA", str(tmp_path / "typo"))  # a wrong $FLOWLIB_DATA is not skipped
    with pytest.raises(DataError, match=r"typo \(\$FLOWLIB_DATA\) does not exist"):
        data.find_cifar10()


def test_find_cifar10_downloads_only_when_asked(tmp_path, monkeypatch, no_conventions):
    payload, x = _archive(tmp_path)
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return _Response(payload)

    monkeypatch.setattr(cifar, "urlopen", fake_urlopen)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    with pytest.raises(DataError, match="default location"):
        data.find_cifar10()
    assert calls == []  # no network without download=True
    assert data.find_cifar10(download=True) == no_conventions
    assert calls == [data.CIFAR10_URL]
    xte, _ = data.load_dataset("cifar10", None, "test")  # the conventions, now satisfied, need no download
    assert torch.equal(xte, x[10:]) and len(calls) == 1


class _Response(io.BytesIO):
    headers: dict = {}


def _archive(tmp_path, names=("cifar-10-batches-py",)):
    x, y = _images(12)
    src = data.write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py", x, y)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in names:
            tar.add(src, arcname=name)
    return buf.getvalue(), x


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "urlopen", offline)
    with pytest.raises(DataError, match=r"could not download CIFAR-10.*internet.*--data-dir"):
        data.load_cifar10(tmp_path / "c", download=True)
    assert not list((tmp_path / "c").iterdir())  # no partial files left behind


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    payload, _ = _archive(tmp_path)
    monkeypatch.setattr(cifar, "urlopen", lambda *a, **k: _Response(payload))
    with pytest.raises(DataError, match=r"MD5 [0-9a-f]{32}, expected c58f30108f718f92721af3b95e74349a"):
        data.load_cifar10(tmp_path / "c", download=True)
    assert not (tmp_path / "c" / "cifar-10-batches-py").exists()


def test_download_verifies_extracts_and_loads(tmp_path, monkeypatch):
    payload, x = _archive(tmp_path)
    monkeypatch.setattr(cifar, "urlopen", lambda *a, **k: _Response(payload))
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    xte, _ = data.load_cifar10(tmp_path / "c", "test", download=True)
    assert torch.equal(xte, x[10:])


def test_archive_with_path_traversal_is_refused(tmp_path, monkeypatch):
    payload, _ = _archive(tmp_path, names=("cifar-10-batches-py/../../evil",))
    monkeypatch.setattr(cifar, "urlopen", lambda *a, **k: _Response(payload))
    with pytest.raises(DataError, match=r"unexpected path"):
        data.download_cifar10(tmp_path / "c", md5=hashlib.md5(payload).hexdigest())
    assert not (tmp_path / "evil").exists()


def test_write_rejects_bad_input(tmp_path):
    x, y = _images(7)
    with pytest.raises(ValueError, match=r"6\*n images"):
        data.write_cifar_batches(tmp_path, x, y)
    with pytest.raises(ValueError, match=r"uint8 \[6\*n, 3, S, S\]"):
        data.write_cifar_batches(tmp_path, x[:6].float(), y[:6])
    with pytest.raises(ValueError, match=r"uint8 \[6\*n, 3, S, S\]"):
        data.write_cifar_batches(tmp_path, x[:6, :, :, :16], y[:6])  # not square


def test_average_pool_against_a_loop_and_a_downsampled_roundtrip(tmp_path):
    x, y = _images(12)
    small = data.average_pool(x, 2)
    assert small.dtype == torch.uint8 and small.shape == (12, 3, 16, 16)
    for n, c, i, j in [(0, 0, 0, 0), (3, 1, 7, 11), (11, 2, 15, 15)]:
        block = x[n, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].double()
        assert small[n, c, i, j].item() == int(block.mean().item() + 0.5)  # round half up
    ties = torch.tensor([[[[0, 1], [0, 1]], [[0, 0], [0, 1]]]], dtype=torch.uint8)  # means 0.5 and 0.25
    assert data.average_pool(ties, 2).flatten().tolist() == [1, 0]
    assert torch.equal(data.average_pool(x, 1), x)
    with pytest.raises(ValueError, match="positive divisor"):
        data.average_pool(x, 3)
    # a 16x16 copy in the CIFAR format records its size and loads back as [N, 3, 16, 16]
    d = data.write_cifar_batches(tmp_path / "small", small, y)
    assert data.read_cifar_meta(d / "batches.meta") == (2, 16)
    xtr, _ = data.load_cifar10(d, "train")
    assert torch.equal(xtr, small[:10])
    _rewrite(d / "batches.meta", num_vis=1000)
    with pytest.raises(DataError, match=r"'num_vis' is 1000, expected 3 x side\^2"):
        data.load_cifar10(d, "train")


def test_cifar_subset_reads_only_the_first_batch_and_the_test_batch(tmp_path):
    images, _ = _images(60)
    labels = torch.arange(60) % 10
    source = data.write_cifar_batches(tmp_path / "full" / "cifar-10-batches-py", images, labels)  # 10 per file
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (source / name).unlink()  # only data_batch_1, test_batch and batches.meta travel
    subset = data.cifar_subset(source, tmp_path / "subset", n_test=2)
    train_x, _ = data.load_cifar10(subset, "train")
    test_x, test_y = data.load_cifar10(subset, "test")
    assert torch.equal(train_x, images[:10]) and torch.equal(test_x, images[50:52])
    assert test_y.tolist() == labels[50:52].tolist()
    assert data.cifar_subset(source.parent, tmp_path / "from-parent", n_test=1) == tmp_path / "from-parent"
    assert torch.equal(data.load_cifar10(tmp_path / "from-parent", "test")[0], images[50:51])  # the parent works
    with pytest.raises(DataError, match="subset needs 15 train"):
        data.cifar_subset(source, tmp_path / "too-big", n_test=3)
    pooled = data.cifar_subset(source, tmp_path / "pooled", n_test=2, pool=2)
    assert torch.equal(data.load_cifar10(pooled, "train")[0], data.average_pool(images[:10], 2))
    assert torch.equal(data.load_cifar10(pooled, "test")[0], data.average_pool(images[50:52], 2))
    (source / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch is missing"):
        data.cifar_subset(source, tmp_path / "other", n_test=2)
    assert data.cifar_subset(source, subset, n_test=2) == subset  # written once, reused without reading source


def test_the_package_exports_every_public_name_of_its_modules():
    from flowlib.data import batching, sources, writing

    for module in (cifar, writing, sources, batching):
        for name in module.__all__:
            assert getattr(data, name) is getattr(module, name), f"{module.__name__}.{name}"
    assert set(data.__all__) == {n for m in (cifar, writing, sources, batching) for n in m.__all__}


def test_digits_and_synthetic():
    xtr, ytr = data.load_digits("train")
    xte, _ = data.load_digits("test")
    assert xtr.shape == (1500, 1, 8, 8) and xte.shape == (297, 1, 8, 8) and xtr.dtype == torch.uint8
    assert xtr.max() == 255 and set(ytr.tolist()) == set(range(10))
    assert torch.equal(data.load_digits("train")[0], xtr)  # deterministic split
    s1, l1 = data.load_synthetic(50, shape=(3, 8, 8), seed=3)
    s2, _ = data.load_synthetic(50, shape=(3, 8, 8), seed=3)
    assert s1.shape == (50, 3, 8, 8) and s1.dtype == torch.uint8 and torch.equal(s1, s2)
    assert not torch.equal(s1, data.load_synthetic(50, shape=(3, 8, 8), seed=4)[0])
    # structure: neighbouring pixels are strongly correlated (smooth images, not noise)
    f = s1.float()
    corr = torch.corrcoef(torch.stack([f[..., :-1].flatten(), f[..., 1:].flatten()]))[0, 1]
    assert corr > 0.7 and l1.tolist()[:10] == list(range(10))
    assert data.load_dataset("synthetic", split="test")[0].shape == (500, 3, 8, 8)
    with pytest.raises(DataError, match="cifar10, digits, synthetic"):
        data.load_dataset("mnist")


def test_gpu_batches_shapes_flips_and_epochs():
    x = torch.arange(10 * 2 * 3, dtype=torch.uint8).view(10, 1, 2, 3)
    b = data.GPUBatches(x, batch_size=4, seed=0)
    assert b.steps_per_epoch == 2
    seen, flipped = [], 0
    for _ in range(2):
        batch = next(b)
        assert batch.shape == (4, 1, 2, 3) and batch.dtype == torch.uint8
        for img in batch:
            i = int(img.flatten().min()) // 6  # which image (flip keeps the set of values)
            seen.append(i)
            if torch.equal(img, x[i].flip(-1)):
                flipped += 1
            else:
                assert torch.equal(img, x[i])
    assert len(set(seen)) == 8  # no repeats within an epoch
    assert 0 < flipped < 8
    next(b)
    assert b.epoch == 1 and b.index == 1
    noflip = data.GPUBatches(x, batch_size=5, flip=False)
    assert sorted(torch.cat([next(noflip), next(noflip)]).flatten().tolist()) == list(range(60))


def test_gpu_batches_state_restores_order_and_ranks_are_disjoint():
    x = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    a = data.GPUBatches(x, batch_size=3, seed=5)
    for _ in range(17):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(20)]
    b = data.GPUBatches(x, batch_size=3, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(e, next(b)) for e in expected)
    r0 = data.GPUBatches(x, batch_size=4, seed=1, rank=0, world_size=2)
    r1 = data.GPUBatches(x, batch_size=4, seed=1, rank=1, world_size=2)
    s0 = set(torch.cat([next(r0) for _ in range(5)]).flatten().tolist())
    s1 = set(torch.cat([next(r1) for _ in range(5)]).flatten().tolist())
    assert not s0 & s1 and len(s0 | s1) == 40
    with pytest.raises(ValueError, match="larger than the 40 images"):
        data.GPUBatches(x, batch_size=41)
