"""Tests for graphinterp.data.datasets on real shared data and on small generated CIFAR-10 copies."""
from __future__ import annotations

import importlib.util
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from graphinterp.data.datasets import CIFAR10_CLASSES, DATASETS, NORMALIZATION, LabeledTensors, dataset_info, load_dataset
from graphinterp.common.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
REPO = Path(__file__).resolve().parents[1]


def _need(folder: str) -> Path:
    if not (SHARED / folder / "raw").is_dir():
        pytest.skip(f"{SHARED / folder} is absent")
    return SHARED


# ---------------------------------------------------------------- digits, info, LabeledTensors


def test_digits_split_is_stratified_deterministic_and_complete():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.classes == [str(i) for i in range(10)] and train.name == "digits"
    assert torch.equal(load_dataset("digits").x, train.x)  # deterministic
    raw_train, raw_test = load_dataset("digits", normalize=False), load_dataset("digits", split="test", normalize=False)
    assert raw_train.x.min() >= 0 and raw_train.x.max() <= 1
    # together the two splits are exactly load_digits, images / 16 with their labels
    bunch = load_digits()
    ours = torch.cat([raw_train.x, raw_test.x]).reshape(-1, 64).numpy() * 16
    ours = np.concatenate([ours, torch.cat([raw_train.y, raw_test.y]).numpy()[:, None]], axis=1)
    theirs = np.concatenate([bunch.data, bunch.target[:, None]], axis=1)
    assert np.array_equal(np.unique(ours, axis=0), np.unique(theirs, axis=0)) and len(ours) == len(theirs)
    # stratified: every class has ~20% of its images in the test split
    n_test, n_train = (torch.bincount(d.y, minlength=10).double() for d in (test, train))
    frac = n_test / (n_train + n_test)
    assert torch.all((frac - 0.2).abs() < 0.02)


def test_digits_normalisation_constants_are_the_train_statistics():
    raw = load_dataset("digits", normalize=False)
    (mean,), (std,) = NORMALIZATION["digits"]
    assert abs(raw.x.mean().item() - mean) < 1e-3 and abs(raw.x.std().item() - std) < 1e-3
    norm = load_dataset("digits")
    assert torch.allclose(norm.x, (raw.x - mean) / std, atol=1e-6)


def test_dataset_info_without_loading():
    for name in DATASETS:
        info = dataset_info(name)
        assert info["num_classes"] == len(info["classes"]) == 10
        assert len(info["mean"]) == len(info["std"]) == info["input_shape"][0]
    assert dataset_info("cifar10")["classes"] == list(CIFAR10_CLASSES) == sorted(CIFAR10_CLASSES)
    assert dataset_info("Fashion_MNIST")["name"] == "fashion-mnist"
    assert dataset_info("digits")["input_shape"] == tuple(load_dataset("digits", split="test").x.shape[1:])


def test_unknown_name_and_split():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)
    with pytest.raises(DataError, match="split"):
        load_dataset("digits", split="validation")


def test_labeled_tensors_subset_and_dataset():
    data = load_dataset("digits", split="test")
    assert len(data) == 360
    x0, y0 = data.as_dataset()[5]
    assert torch.equal(x0, data.x[5]) and y0 == data.y[5]
    sub = data.subset(50, seed=3)
    assert len(sub) == 50 and sub.classes == data.classes and sub.name == "digits"
    assert torch.equal(sub.x, data.subset(50, seed=3).x)
    assert not torch.equal(sub.x, data.subset(50, seed=4).x)
    # every drawn row is a row of the original with its own label
    flat = data.x.reshape(len(data), -1)
    for xi, yi in zip(sub.x.reshape(50, -1), sub.y):
        rows = torch.nonzero((flat == xi).all(dim=1)).flatten()
        assert len(rows) >= 1 and yi in data.y[rows]
    assert len(data.subset(10_000)) == len(data)
    with pytest.raises(DataError, match="positive"):
        data.subset(0)
    with pytest.raises(DataError, match="shape"):
        LabeledTensors(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long), ["a"], "bad")


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (real files)


@pytest.mark.parametrize(
    "name, folder, cls_name", [("mnist", "MNIST", "MNIST"), ("fashion-mnist", "FashionMNIST", "FashionMNIST")]
)
def test_mnist_like_real_files(name, folder, cls_name):
    import torchvision

    root = _need(folder)
    ref = getattr(torchvision.datasets, cls_name)(root=str(root), train=False, download=False)
    raw = load_dataset(name, split="test", data_dir=root, normalize=False)
    assert raw.x.shape == (10_000, 1, 28, 28) and raw.y.dtype == torch.int64
    assert torch.equal(raw.x[:100, 0], ref.data[:100].float() / 255) and torch.equal(raw.y, ref.targets)
    train = load_dataset(name, data_dir=root)
    assert train.x.shape == (60_000, 1, 28, 28) and train.classes == dataset_info(name)["classes"]
    # the documented constants standardise the training set
    assert abs(train.x.mean().item()) < 2e-3 and abs(train.x.std().item() - 1) < 2e-3
    # --data-dir may also point at MNIST/ itself
    assert torch.equal(load_dataset(name, split="test", data_dir=root / folder, normalize=False).y, raw.y)


@pytest.mark.parametrize(
    "name, folder", [("mnist", "MNIST/"), ("fashion-mnist", "FashionMNIST/"), ("cifar10", "cifar-10-batches-py")]
)
def test_missing_dataset_says_where_and_how(tmp_path, name, folder):
    with pytest.raises(DataError) as info:
        load_dataset(name, data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "--download" in message and folder in message and "\n" not in message


def _write_idx(path: Path, magic: int, dims: tuple) -> None:
    path.write_bytes(struct.pack(">" + "I" * (1 + len(dims)), magic, *dims))


def test_empty_mnist_raises(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", 2051, (0, 28, 28))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, (0,))
    with pytest.raises(DataError, match="empty"):
        load_dataset("mnist", data_dir=tmp_path)


def test_damaged_mnist_and_failed_download(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", 1234, (0, 28, 28))  # wrong magic number
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, (0,))
    with pytest.raises(DataError, match="could not read mnist.*--download"):
        load_dataset("mnist", data_dir=tmp_path)
    # --download with the files present reads them (nothing is fetched): damaged files, not the network; and a
    # --data-dir naming MNIST/ itself is the same folder as without --download, not MNIST/MNIST/
    with pytest.raises(DataError, match="could not read mnist in .*damaged"):
        load_dataset("mnist", data_dir=tmp_path / "MNIST", download=True)
    assert not (tmp_path / "MNIST" / "MNIST").exists()

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with pytest.raises(DataError, match="could not download fashion-mnist.*check the network"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=True)


def test_a_missing_or_damaged_mnist_file_is_named(tmp_path):
    """Read through torchvision's class, a split needed all four files (the train split failed for want of the
    test labels) and every failure named only MNIST/: 'Dataset not found' for a missing file, 'the files are
    damaged, re-download them with --download' for a damaged one, though --download fetches nothing while the
    files are there. Found by damaging copies of the real files one at a time."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels, digits = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 0, 9], dtype=np.uint8)
    (raw / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 3, 28, 28) + pixels.tobytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 3) + digits.tobytes())
    data = load_dataset("mnist", data_dir=tmp_path, normalize=False)  # no t10k files: the train split still reads
    assert torch.equal(data.x[:, 0], torch.from_numpy(pixels).float() / 255) and data.y.tolist() == [7, 0, 9]
    with pytest.raises(DataError, match="expected .*t10k-labels-idx1-ubyte") as info:
        (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes())
        load_dataset("mnist", split="test", data_dir=tmp_path)
    assert "\n" not in str(info.value)
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])  # the header says 3 labels, 2 follow
    for download in (False, True):
        with pytest.raises(DataError, match=f"could not read mnist in {labels}.*delete it and fetch it again"):
            load_dataset("mnist", data_dir=tmp_path, download=download)
    labels.write_bytes(struct.pack(">II", 2049, 2) + digits[:2].tobytes())
    with pytest.raises(DataError, match="3 images in train-images-idx3-ubyte but 2 labels in train-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)
    # only the download's archive of a file: said, with how to extract it (it was "not found")
    import gzip

    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels.read_bytes()))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is there but not t10k-labels-idx1-ubyte: extract "
                                        r"it \(gunzip -k"):
        load_dataset("mnist", split="test", data_dir=tmp_path)


# ---------------------------------------------------------------- CIFAR-10, python batches


def _write_cifar_python(root: Path, sizes=(3, 2, 3, 2, 3, 4), protocol=2, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for fname, n in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], sizes):
        entry = {"batch_label": fname, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, n)], "filenames": [f"{i}.png" for i in range(n)]}
        arrays[fname] = entry
        (folder / fname).write_bytes(pickle.dumps(entry, protocol=protocol))
    meta = {"label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return arrays


def _expected(arrays: dict, names: list) -> tuple:
    x = np.concatenate([arrays[n]["data"] for n in names]).reshape(-1, 3, 32, 32)
    y = [v for n in names for v in arrays[n]["labels"]]
    return torch.from_numpy(x).float() / 255, torch.tensor(y)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_python_batches_read_when_torchvision_refuses(tmp_path, protocol):
    import torchvision

    arrays = _write_cifar_python(tmp_path, protocol=protocol)
    with pytest.raises(RuntimeError):  # md5s differ from the official files
        torchvision.datasets.CIFAR10(root=str(tmp_path), train=True, download=False)
    train = load_dataset("cifar10", data_dir=tmp_path, normalize=False)
    x, y = _expected(arrays, [f"data_batch_{i}" for i in range(1, 6)])
    assert torch.equal(train.x, x) and torch.equal(train.y, y) and train.classes == list(CIFAR10_CLASSES)
    test = load_dataset("cifar10", split="test", data_dir=tmp_path)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["cifar10"])
    x, y = _expected(arrays, ["test_batch"])
    assert torch.allclose(test.x, (x - mean) / std, atol=1e-6) and torch.equal(test.y, y)


def test_cifar_python_batches_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    import graphinterp.data.datasets as data_mod

    arrays = _write_cifar_python(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)  # accept the generated md5s

    def fail(*args, **kwargs):
        raise AssertionError("torchvision should have read these batches")

    monkeypatch.setattr(data_mod, "_read_cifar_batches", fail)
    train = load_dataset("cifar10", data_dir=tmp_path, normalize=False)
    x, y = _expected(arrays, [f"data_batch_{i}" for i in range(1, 6)])
    assert torch.equal(train.x, x) and torch.equal(train.y, y)


def test_cifar_python_batches_refuse_foreign_pickles(tmp_path):
    import datetime

    _write_cifar_python(tmp_path)
    bad = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "when": datetime.date(2020, 1, 1)}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match="datetime.date"):
        load_dataset("cifar10", split="test", data_dir=tmp_path)


def test_cifar_python_empty_batch(tmp_path):
    _write_cifar_python(tmp_path, sizes=(0, 0, 0, 0, 0, 0))
    with pytest.raises(DataError, match="empty"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------- CIFAR-10, image folders


def _write_jpegs(split_dir: Path, per_class: int, classes=CIFAR10_CLASSES, size=32) -> None:
    from PIL import Image

    for label, name in enumerate(classes):
        (split_dir / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (label * 25, 255 - label * 20, (i * 60) % 256)
            Image.new("RGB", (size, size), colour).save(split_dir / name / f"{i:04d}.jpg", quality=95)


@pytest.mark.parametrize("sub", ["", "cifar10", "CIFAR10-jpeg"])
def test_cifar_image_folder(tmp_path, sub):
    from PIL import Image

    root = tmp_path / sub
    _write_jpegs(root / "train", per_class=2)
    _write_jpegs(root / "test", per_class=1)
    train = load_dataset("cifar10", data_dir=tmp_path, normalize=False)
    assert train.x.shape == (20, 3, 32, 32) and train.y.tolist() == [c for c in range(10) for _ in range(2)]
    assert train.classes == list(CIFAR10_CLASSES)
    ref = np.asarray(Image.open(root / "train" / "cat" / "0001.jpg").convert("RGB"), dtype=np.float32) / 255
    got = train.x[CIFAR10_CLASSES.index("cat") * 2 + 1].permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() <= 3 / 255
    test = load_dataset("cifar10", split="test", data_dir=tmp_path)
    assert test.x.shape == (10, 3, 32, 32) and test.y.tolist() == list(range(10))


def test_cifar_image_folder_pil_fallback(tmp_path, monkeypatch):
    import torchvision.io

    _write_jpegs(tmp_path / "train", per_class=1)
    fast = load_dataset("cifar10", data_dir=tmp_path, normalize=False)
    monkeypatch.delattr(torchvision.io, "decode_image")  # as if torchvision dropped its decoder
    slow = load_dataset("cifar10", data_dir=tmp_path, normalize=False)
    assert torch.equal(fast.y, slow.y) and (fast.x - slow.x).abs().max() <= 3 / 255


def test_cifar_image_folder_errors(tmp_path):
    _write_jpegs(tmp_path / "a" / "train", per_class=1, classes=("cat", "dog"))
    with pytest.raises(DataError, match="airplane"):
        load_dataset("cifar10", data_dir=tmp_path / "a")
    _write_jpegs(tmp_path / "b" / "train", per_class=1, size=16)
    with pytest.raises(DataError, match="32x32"):
        load_dataset("cifar10", data_dir=tmp_path / "b")
    _write_jpegs(tmp_path / "e" / "train", per_class=1)
    (tmp_path / "e" / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="broken.jpg"):
        load_dataset("cifar10", data_dir=tmp_path / "e")
    for name in CIFAR10_CLASSES:
        (tmp_path / "c" / "train" / name).mkdir(parents=True)
    with pytest.raises(DataError, match="no CIFAR-10 images"):
        load_dataset("cifar10", data_dir=tmp_path / "c")
    (tmp_path / "d" / "CIFAR10-jpeg").mkdir(parents=True)
    zipfile.ZipFile(tmp_path / "d" / "CIFAR10-jpeg" / "cifar10-jpeg.zip", "w").close()
    with pytest.raises(DataError, match="extract"):
        load_dataset("cifar10", data_dir=tmp_path / "d")


# ---------------------------------------------------------------- benchmarks/_shared_data.py


def _shared_data_module():
    spec = importlib.util.spec_from_file_location("_shared_data", REPO / "benchmarks" / "_shared_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shared_datasets_dir():
    module = _shared_data_module()
    expected = SHARED if SHARED.is_dir() else None
    assert module.shared_datasets_dir() == expected


def test_cifar10_jpeg_dir_extracts_once(tmp_path, monkeypatch):
    module = _shared_data_module()
    fake_shared = tmp_path / "shared"
    (fake_shared / "CIFAR10-jpeg").mkdir(parents=True)
    src = tmp_path / "src"
    _write_jpegs(src / "train", per_class=1)
    _write_jpegs(src / "test", per_class=1)
    with zipfile.ZipFile(fake_shared / "CIFAR10-jpeg" / "cifar10-jpeg.zip", "w") as zf:
        for path in sorted(src.rglob("*.jpg")):
            zf.write(path, path.relative_to(src).as_posix())
    monkeypatch.setattr(module, "shared_datasets_dir", lambda: fake_shared)
    cache = tmp_path / "cache"
    folder = module.cifar10_jpeg_dir(cache)
    assert folder == cache and sorted(p.name for p in (folder / "train").iterdir()) == list(CIFAR10_CLASSES)
    stamp = (folder / "train" / "cat" / "0000.jpg").stat().st_mtime_ns
    assert module.cifar10_jpeg_dir(cache) == folder
    assert (folder / "train" / "cat" / "0000.jpg").stat().st_mtime_ns == stamp  # not extracted again
    assert len(load_dataset("cifar10", data_dir=folder, split="test")) == 10
    monkeypatch.setattr(module, "shared_datasets_dir", lambda: None)
    assert module.cifar10_jpeg_dir(tmp_path / "other") is None


def test_a_split_short_of_the_complete_dataset_is_noted_by_load_train_and_eval(tmp_path):
    """An image folder cut short (an interrupted extraction) was read without a word."""
    from cli._eval_data import load_eval_data
    from graphinterp.training.train import _load_data
    from graphinterp.training.train_config import TrainConfig

    _write_jpegs(tmp_path / "train", per_class=2)
    _write_jpegs(tmp_path / "test", per_class=2)
    (tmp_path / "test" / "truck" / "0001.jpg").unlink()  # one truck short
    train = load_dataset("cifar10", data_dir=tmp_path)
    assert "has 20 examples, not the 50,000 of the complete dataset" in train.note
    test = load_dataset("cifar10", split="test", data_dir=tmp_path)
    assert "has 19 examples, not the 10,000" in test.note and "fewest in truck 1" in test.note
    assert test.subset(3).note == test.note
    notes = []
    load_eval_data("cifar10", "test", str(tmp_path), None, 0, notes)
    assert notes == [test.note]
    heard = []
    _load_data(TrainConfig(dataset="cifar10", data_dir=str(tmp_path)), None, None, heard.append)
    assert heard == [train.note, test.note]
    assert load_dataset("digits").note is None  # digits has no file to be incomplete


def test_corpus_splits_are_train_and_val_only_and_line_endings_are_kept(tmp_path):
    from graphinterp.common.errors import DataError
    from graphinterp.data.tasks import load_corpus

    path = tmp_path / "crlf.txt"
    path.write_bytes(b"ab\r\ncd\r\n" * 40)
    corpus = load_corpus(path, n_ctx=4, val_frac=0.25)
    assert "\r" in corpus.chars and corpus.decode(torch.cat([corpus.train, corpus.val])) == "ab\r\ncd\r\n" * 40
    assert torch.equal(corpus.windows(4, "val")[0][0], corpus.val[:4])
    assert torch.equal(corpus.windows(4, "train")[0][0], corpus.train[:4])
    g = torch.Generator().manual_seed(0)
    for call in (lambda s: corpus.windows(4, s), lambda s: corpus.next_char_windows(4, s),
                 lambda s: corpus.batch(2, 4, g, split=s)):
        for split in ("test", "validation"):
            with pytest.raises(DataError, match="'train' and 'val'"):
                call(split)


def test_a_char_corpus_batch_draws_every_window_start_the_last_included():
    """The starts were drawn from 0 .. len - n_ctx - 2: the window whose target ends on the split's last character
    was never drawn, so that character was never a target (found in the data review)."""
    from graphinterp.data.tasks import CharCorpus

    ids = torch.arange(10)  # distinct ids: a window's first id is its start
    corpus = CharCorpus([str(i) for i in range(10)], ids, ids[:6])
    x, y = corpus.batch(400, 4, torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y, x + 1)
    assert set(x[:, 0].tolist()) == set(range(6))  # starts 0..5: the last, 5, ends its target on ids[9]
