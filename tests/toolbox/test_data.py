"""Data loading: the seeded split, the per-process cache, torchvision formats, missing data,
the training-set size."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from toolbox.config import DataConfig
from toolbox.data import DEFAULT_DATA_DIR, _cached_split, data_root, limit_train, load_split
from toolbox.errors import ConfigError, DataUnavailableError


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format of the MNIST files: magic, big-endian dims."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    raw = root / folder / "raw"
    _write_idx(raw / "train-images-idx3-ubyte", images)
    _write_idx(raw / "train-labels-idx1-ubyte", labels)
    _write_idx(raw / "t10k-images-idx3-ubyte", images[:3])
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[:3])
    return images, labels


def _write_cifar(root: Path, per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Write python-pickle CIFAR-10 batches: ``data`` (n, 3072) uint8 rows in CHW order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    all_x, all_y = [], []
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": []}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        if name != "test_batch":
            all_x.append(data)
            all_y.extend(labels)
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(all_x).reshape(-1, 3, 32, 32), np.asarray(all_y)


def _all_rows(split_x: torch.Tensor, split_y: torch.Tensor) -> set[tuple[int, ...]]:
    return {(*x.flatten().tolist(), int(y)) for x, y in zip(split_x, split_y, strict=True)}


def test_digits_split_is_seeded_disjoint_and_sized() -> None:
    cfg = DataConfig(dataset="digits", val_fraction=0.25, split_seed=3)
    split = load_split(cfg)
    fresh = _cached_split.__wrapped__(cfg, "cpu")  # bypass the cache: same seed, same split
    assert torch.equal(split.train_x, fresh.train_x) and torch.equal(split.val_y, fresh.val_y)
    other = _cached_split.__wrapped__(cfg.model_copy(update={"split_seed": 4}), "cpu")
    assert not torch.equal(split.val_x, other.val_x)

    n = 1797  # scikit-learn's digits
    assert len(split.val_y) == round(n * 0.25) and len(split.train_y) == n - round(n * 0.25)
    assert split.in_shape == (1, 8, 8) and split.num_classes == 10
    assert split.train_x.dtype == torch.float32 and split.train_y.dtype == torch.int64
    assert split.train_x.min() >= 0.0 and split.train_x.max() <= 1.0
    # Disjoint by index: the permutation puts every sample on exactly one side.
    rng = np.random.default_rng(3)
    order = rng.permutation(n)
    val_idx, train_idx = set(order[: len(split.val_y)]), set(order[len(split.val_y) :])
    assert not val_idx & train_idx and len(val_idx | train_idx) == n


def test_second_call_returns_the_cached_tensors() -> None:
    cfg = DataConfig(dataset="digits", split_seed=11)
    first, second = load_split(cfg), load_split(cfg, torch.device("cpu"))
    assert second is first
    assert second.train_x.data_ptr() == first.train_x.data_ptr()


@pytest.mark.parametrize(
    ("dataset", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_idx_files_load_as_unit_float_images(tmp_path: Path, dataset: str, folder: str) -> None:
    images, labels = _write_mnist(tmp_path, folder, n=40, seed=1)
    cfg = DataConfig(dataset=dataset, data_dir=str(tmp_path), val_fraction=0.25, download=False)
    split = load_split(cfg)

    assert split.in_shape == (1, 28, 28) and split.num_classes == 10 and split.name == dataset
    assert len(split.train_y) == 30 and len(split.val_y) == 10
    expected = _all_rows(
        torch.from_numpy(images[:, None] / 255.0).float(), torch.from_numpy(labels)
    )
    got = _all_rows(split.train_x, split.train_y) | _all_rows(split.val_x, split.val_y)
    assert got == expected  # every training image, exactly once, scaled to [0, 1]


def test_cifar10_pickled_batches_load_in_chw_order(tmp_path: Path) -> None:
    images, labels = _write_cifar(tmp_path, per_batch=4)
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_fraction=0.2, download=False)
    # Our small batches cannot match the official checksums; they load with a warning.
    with pytest.warns(UserWarning, match="official checksums"):
        split = load_split(cfg)

    assert split.in_shape == (3, 32, 32) and split.num_classes == 10
    assert len(split.train_y) + len(split.val_y) == 20  # the five training batches only
    expected = _all_rows(torch.from_numpy(images / 255.0).float(), torch.from_numpy(labels))
    assert _all_rows(split.train_x, split.train_y) | _all_rows(split.val_x, split.val_y) == expected


def test_corrupt_cifar_batch_is_reported_not_loaded(tmp_path: Path) -> None:
    _write_cifar(tmp_path, per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False)
    with pytest.warns(UserWarning), pytest.raises(DataUnavailableError, match="unreadable"):
        load_split(cfg)


@pytest.mark.parametrize(
    ("dataset", "expected_file"),
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_5"),
    ],
)
def test_missing_data_error_names_directory_and_layout(
    tmp_path: Path, dataset: str, expected_file: str
) -> None:
    cfg = DataConfig(dataset=dataset, data_dir=str(tmp_path / "empty"), download=False)
    with pytest.raises(DataUnavailableError) as info:
        load_split(cfg)
    message = str(info.value)
    assert str(tmp_path / "empty") in message
    assert str(tmp_path / "empty" / expected_file) in message
    assert "data.download" in message and "data.data_dir" in message


def test_default_data_dir_is_the_user_cache() -> None:
    assert data_root(DataConfig()) == Path(DEFAULT_DATA_DIR).expanduser()
    assert data_root(DataConfig(data_dir="/srv/data")) == Path("/srv/data")


def test_train_size_keeps_the_first_training_samples_and_the_same_validation() -> None:
    cfg = DataConfig(dataset="digits", split_seed=5)
    whole = load_split(cfg)
    small = load_split(cfg.model_copy(update={"train_size": 100}))
    assert len(small.train_y) == 100
    assert torch.equal(small.train_x, whole.train_x[:100])
    assert torch.equal(small.train_y, whole.train_y[:100])
    assert small.val_x is whole.val_x and small.val_y is whole.val_y
    # Views of the one cached split, not a second copy of the data set.
    assert small.train_x.data_ptr() == whole.train_x.data_ptr()
    assert limit_train(small, 100) is small  # limiting twice changes nothing


def test_train_size_is_validated_against_the_official_split_at_the_config_edge() -> None:
    available = 1797 - round(1797 * 0.2)  # digits' training split with val_fraction 0.2
    assert DataConfig(train_size=available).train_size == available
    with pytest.raises(ValidationError, match=rf"data\.train_size=1500 .*{available} samples"):
        DataConfig(train_size=1500)
    with pytest.raises(ValidationError, match="train_size"):
        DataConfig(train_size=0)


def test_train_size_beyond_smaller_files_fails_when_loaded(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "MNIST", n=40, seed=2)  # well-formed files, far below 60000 images
    cfg = DataConfig(
        dataset="mnist", data_dir=str(tmp_path), val_fraction=0.25, download=False, train_size=31
    )
    with pytest.raises(ConfigError, match=r"data\.train_size=31 .*mnist \(30 samples\)"):
        load_split(cfg)
