"""The loader, on tiny generated IDX files and on the real FashionMNIST."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms

import fashionbn.core.data
from fashionbn.config import ConfigError
from fashionbn.core.data import (
    DatasetCorruptError,
    DatasetNotFoundError,
    load_dataset,
    raw_dir,
    split_indices,
)
from fashionbn.core.order import shuffled_batches
from tests.conftest import compose_config


def data_cfg(root: Path, system_dir, **overrides):
    cfg = compose_config([]).data
    cfg.root, cfg.system_dir = (
        str(root),
        None if system_dir is None else str(system_dir),
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_tiny_idx_files_load_scaled_like_to_tensor(tmp_path, tiny_system_dir) -> None:
    system_dir, arrays = tiny_system_dir
    data = load_dataset(data_cfg(tmp_path / "root", system_dir))
    assert data.train_images.shape == (96, 28, 28)
    assert data.test_images.shape == (40, 28, 28)
    assert data.train_images.dtype == torch.float32
    expected = torch.from_numpy(
        arrays["train-images-idx3-ubyte"].astype(np.float32) / 255
    )
    assert torch.equal(data.train_images, expected)
    assert data.train_images[0, 0, :3].tolist() == pytest.approx([0.0, 1.0, 128 / 255])
    assert torch.equal(
        data.test_labels,
        torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
    )
    # the same values as the notebook's PIL -> ToTensor path, sample by sample
    to_tensor = transforms.ToTensor()
    for i in (0, 7, 95):
        pil = Image.fromarray(arrays["train-images-idx3-ubyte"][i], mode="L")
        assert torch.equal(to_tensor(pil)[0], data.train_images[i])
    # prepared once, in torchvision's layout, from the .gz files
    assert sorted(p.name for p in raw_dir(tmp_path / "root").iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    ]  # fmt: skip


def test_subset_is_the_first_n_samples(tmp_path, tiny_system_dir) -> None:
    system_dir, arrays = tiny_system_dir
    cfg = data_cfg(tmp_path / "root", system_dir, train_size=10, test_size=5)
    data = load_dataset(cfg)
    assert len(data.train_labels) == 10 and len(data.test_labels) == 5
    first = arrays["train-labels-idx1-ubyte"][:10].astype(np.int64)
    assert data.train_labels.tolist() == first.tolist()


def test_subset_larger_than_dataset_is_refused(tmp_path, tiny_system_dir) -> None:
    system_dir, _ = tiny_system_dir
    cfg = data_cfg(tmp_path / "root", system_dir, train_size=97)
    with pytest.raises(ValueError, match=r"data.train_size=97 .* 96 samples"):
        load_dataset(cfg)


def test_missing_dataset_names_the_three_ways(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(data_cfg(tmp_path / "empty", None))
    message = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "data.root=" in message and "data.download=true" in message


def test_truncated_gz_is_named(tmp_path, tiny_system_dir) -> None:
    system_dir, _ = tiny_system_dir
    victim = system_dir / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DatasetCorruptError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset(data_cfg(tmp_path / "root", system_dir))
    # all four are read and checked before any is written: nothing, no debris
    assert not raw_dir(tmp_path / "root").exists()


def test_truncated_idx_file_is_named(tmp_path, tiny_system_dir) -> None:
    system_dir, _ = tiny_system_dir
    root = tmp_path / "root"
    load_dataset(data_cfg(root, system_dir))
    victim = raw_dir(root) / "train-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DatasetCorruptError, match="train-images-idx3-ubyte: size"):
        load_dataset(data_cfg(root, None))


def test_wrong_magic_is_named(tmp_path, tiny_system_dir) -> None:
    system_dir, _ = tiny_system_dir
    victim = system_dir / "train-labels-idx1-ubyte.gz"
    with gzip.open(victim, "wb") as f:
        f.write(b"not an idx file at all")
    with pytest.raises(DatasetCorruptError, match="train-labels-idx1-ubyte: not an"):
        load_dataset(data_cfg(tmp_path / "root", system_dir))


def test_shuffled_batches_cover_every_sample_once() -> None:
    batches = list(shuffled_batches(130, 64, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [64, 64, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(130))
    again = list(shuffled_batches(130, 64, torch.Generator().manual_seed(0)))
    other = list(shuffled_batches(130, 64, torch.Generator().manual_seed(1)))
    assert torch.equal(torch.cat(batches), torch.cat(again))
    assert not torch.equal(torch.cat(batches), torch.cat(other))


@pytest.mark.slow
def test_real_fashion_mnist(real_data_root: Path) -> None:
    data = load_dataset(data_cfg(real_data_root, None))
    assert data.train_images.shape == (60_000, 28, 28)
    assert data.test_images.shape == (10_000, 28, 28)
    assert sorted(data.train_labels.unique().tolist()) == list(range(10))
    assert sorted(data.test_labels.unique().tolist()) == list(range(10))
    # FashionMNIST is balanced: 6,000 / 1,000 images per class
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    assert data.train_images.min() == 0.0 and data.train_images.max() == 1.0
    # identical to the notebook's torchvision + ToTensor path
    from torchvision.datasets import FashionMNIST

    reference = FashionMNIST(
        str(real_data_root), train=False, transform=transforms.ToTensor()
    )
    for i in (0, 1234, 9999):
        image, label = reference[i]
        assert (
            torch.equal(image[0], data.test_images[i]) and label == data.test_labels[i]
        )


# --- the validation split ----------------------------------------------------------


def test_split_indices_are_disjoint_fixed_and_seeded_by_split_seed_only() -> None:
    train, val = split_indices(96, 20, split_seed=0)
    assert len(val) == 20 and len(train) == 76
    assert sorted([*train.tolist(), *val.tolist()]) == list(range(96))
    assert train.tolist() == sorted(train.tolist())
    torch.manual_seed(123)  # the training seed's streams play no part
    again_train, again_val = split_indices(96, 20, split_seed=0)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(val, split_indices(96, 20, split_seed=1)[1])
    # and it draws nothing from the global torch stream a run's training uses
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    split_indices(96, 20, split_seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_validation_samples_are_held_out_of_training(tmp_path, tiny_system_dir):
    system_dir, arrays = tiny_system_dir
    cfg = data_cfg(tmp_path / "root", system_dir, train_size=50, val_size=10)
    data = load_dataset(cfg)
    keep, held_out = split_indices(50, 10, 0)
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"][:50].astype(np.float32))
    labels = torch.from_numpy(arrays["train-labels-idx1-ubyte"][:50].astype(np.int64))
    assert torch.equal(data.train_images, images[keep] / 255)
    assert torch.equal(data.val_images, images[held_out] / 255)
    assert torch.equal(data.train_labels, labels[keep])
    assert torch.equal(data.val_labels, labels[held_out])
    assert len(data.test_labels) == 40  # the test set is untouched
    no_split = load_dataset(data_cfg(tmp_path / "root", system_dir, train_size=50))
    assert len(no_split.val_labels) == 0 and len(no_split.train_labels) == 50


@pytest.mark.parametrize("val_size, train_size", [(96, None), (500, None), (50, 50)])
def test_a_split_leaving_no_training_samples_is_refused(
    tmp_path, tiny_system_dir, val_size, train_size
) -> None:
    system_dir, _ = tiny_system_dir
    cfg = data_cfg(tmp_path / "root", system_dir, val_size=val_size,
                   train_size=train_size)  # fmt: skip
    n = train_size or 96
    with pytest.raises(ConfigError) as info:
        load_dataset(cfg)
    assert str(info.value).startswith(
        f"data.val_size={val_size} leaves no training samples: the train set has {n}"
    )
    assert str(info.value).endswith(f"use 0..{n - 1}")


# --- MNIST: the same format and loader, another place ------------------------------


def test_mnist_loads_from_its_own_folder(tmp_path, tiny_system_dir) -> None:
    system_dir, arrays = tiny_system_dir  # tiny IDX .gz files stand in for MNIST's
    cfg = compose_config(
        ["data=mnist", f"data.system_dir={system_dir}", f"data.root={tmp_path}"]
    ).data
    data = load_dataset(cfg)
    assert (raw_dir(tmp_path, "mnist") / "train-images-idx3-ubyte").is_file()
    assert raw_dir(tmp_path, "mnist") == tmp_path / "MNIST" / "raw"
    assert not (tmp_path / "FashionMNIST").exists()
    expected = arrays["train-images-idx3-ubyte"].astype(np.float32) / 255
    assert torch.equal(data.train_images, torch.from_numpy(expected))
    # from then on the uncompressed files alone suffice
    cfg.system_dir = None
    fashionbn.core.data.clear_cache()
    assert torch.equal(load_dataset(cfg).test_labels, data.test_labels)


def test_missing_mnist_says_where_to_put_it(tmp_path) -> None:
    cfg = compose_config(["data=mnist", f"data.root={tmp_path}"]).data
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(cfg)
    message = str(info.value)
    assert message.startswith(f"MNIST not found: no IDX files in {tmp_path}/MNIST/raw")
    assert "not packaged for Debian" in message
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte" in message


# --- our IDX parser against torchvision's ----------------------------------------


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_the_parser_gives_torchvisions_tensors(tmp_path, tiny_system_dir, name) -> None:
    from torchvision.datasets import MNIST, FashionMNIST

    system_dir, _ = tiny_system_dir
    cfg = compose_config(
        [f"data.name={name}", f"data.system_dir={system_dir}",
         f"data.root={tmp_path}"]
    ).data  # fmt: skip
    ours = load_dataset(cfg)
    reference = {"fashion_mnist": FashionMNIST, "mnist": MNIST}[name]
    splits = ((True, ours.train_images, ours.train_labels),
              (False, ours.test_images, ours.test_labels))  # fmt: skip
    for train, images, labels in splits:
        theirs = reference(str(tmp_path), train=train, download=False)
        assert torch.equal(images, theirs.data.to(torch.float32) / 255)
        assert labels.dtype == theirs.targets.dtype == torch.int64
        assert torch.equal(labels, theirs.targets)


@pytest.mark.slow
def test_the_parser_gives_torchvisions_tensors_on_the_real_data(real_data_root):
    from torchvision.datasets import FashionMNIST

    ours = load_dataset(data_cfg(real_data_root, None))
    splits = ((True, ours.train_images, ours.train_labels),
              (False, ours.test_images, ours.test_labels))  # fmt: skip
    for train, images, labels in splits:
        theirs = FashionMNIST(str(real_data_root), train=train, download=False)
        assert torch.equal(images, theirs.data.to(torch.float32) / 255)
        assert torch.equal(labels, theirs.targets)


# --- issue 15: a dataset is what its files hold, not how its path is spelt ----------


@pytest.fixture(scope="module")
def fashion_gz_dir(tmp_path_factory, real_data_root) -> Path:
    """A dir with FashionMNIST's four .gz files: Debian's, or made from data/."""
    system = Path("/usr/share/datasets/fashion-mnist")
    if (system / "train-images-idx3-ubyte.gz").is_file():
        return system
    made = tmp_path_factory.mktemp("fashion_gz")
    for name in fashionbn.core.data.IDX_FILES:
        with gzip.open(made / f"{name}.gz", "wb", compresslevel=1) as f:
            f.write((raw_dir(real_data_root) / name).read_bytes())
    return made


def test_the_known_digests_are_the_real_fashion_mnist(real_data_root) -> None:
    import hashlib

    for name, digest in fashionbn.core.data.KNOWN_SHA256["fashion_mnist"].items():
        content = (raw_dir(real_data_root) / name).read_bytes()
        assert hashlib.sha256(content).hexdigest() == digest, name


@pytest.mark.parametrize("spelling", ["trailing slash", "dot", "symlink"])
def test_mnist_on_fashion_mnists_files_is_refused_however_spelt(
    tmp_path, fashion_gz_dir, spelling
) -> None:
    link = tmp_path / "link"
    link.symlink_to(fashion_gz_dir)
    system_dir = {"trailing slash": f"{fashion_gz_dir}/", "dot": f"{fashion_gz_dir}/.",
                  "symlink": str(link)}[spelling]  # fmt: skip
    cfg = compose_config(["data=mnist", f"data.system_dir={system_dir}",
                          f"data.root={tmp_path / 'root'}"]).data  # fmt: skip
    with pytest.raises(DatasetCorruptError) as info:
        load_dataset(cfg)
    assert "holds FashionMNIST's files (by their content" in str(info.value)
    assert "but data.name=mnist: use data=fashion_mnist" in str(info.value)
    assert not (tmp_path / "root" / "MNIST").exists()  # nothing lands there


def test_fashion_mnists_files_put_where_mnist_goes_are_refused(
    tmp_path, real_data_root
) -> None:
    target = raw_dir(tmp_path, "mnist")
    target.mkdir(parents=True)
    for name in fashionbn.core.data.IDX_FILES:
        (target / name).symlink_to(raw_dir(real_data_root) / name)
    cfg = compose_config(["data=mnist", f"data.root={tmp_path}"]).data
    with pytest.raises(DatasetCorruptError, match=f"{target} holds FashionMNIST's"):
        load_dataset(cfg)


def test_a_run_records_its_data_by_content(tmp_path, tiny_system_dir) -> None:
    """status.json's data_sha256: the digest of the four files it trained on."""
    import hashlib
    import json

    from fashionbn.jobs.job import run_job

    system_dir, arrays = tiny_system_dir
    overrides = [f"data.system_dir={system_dir}", f"data.root={tmp_path / 'root'}",
                 "epochs=1", "device=cpu"]  # fmt: skip
    run_job(compose_config(overrides), tmp_path / "job")
    status = json.loads((tmp_path / "job" / "status.json").read_text())
    lines = ""
    for name in fashionbn.core.data.IDX_FILES:
        raw = (raw_dir(tmp_path / "root") / name).read_bytes()
        lines += f"{name} {hashlib.sha256(raw).hexdigest()}\n"
    assert status["data_sha256"] == hashlib.sha256(lines.encode()).hexdigest()


def test_changing_loaded_tensors_in_place_changes_no_later_load(
    tmp_path, tiny_system_dir
) -> None:
    """The parsed dataset is cached for the process; a caller's in-place change (a
    notebook normalising the images) must not reach the next run."""
    system_dir, arrays = tiny_system_dir
    cfg = data_cfg(tmp_path / "root", system_dir, val_size=16)
    first = load_dataset(cfg)
    for tensor in first:
        tensor.zero_()
    again = load_dataset(cfg)
    expected = arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255
    assert torch.equal(again.test_images, torch.from_numpy(expected))
    assert again.train_labels.any() and again.val_images.any()
