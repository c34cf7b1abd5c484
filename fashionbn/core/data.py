"""FashionMNIST (or MNIST) -> in-memory tensors: find or prepare the files, load,
validate, hold out a validation split, batch.

The IDX files are parsed here (a 4-byte magic, big-endian dimensions, raw bytes; their
sizes are checked against their headers first); the images are then converted once to
float32 in [0, 1] (the values transforms.ToTensor() gives) instead of once per sample
per epoch. torchvision is imported only to download (data.download=true): importing it
costs a process about a second (it pulls in torch._dynamo), every job of a sweep.
Both datasets share the format, file names and loader; only where they live differs.
"""

import functools
import gzip
import hashlib
import logging
import math
import zlib
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from fashionbn.config import ConfigError, FashionbnError, option_value
from fashionbn.core.atomic import atomic_write

log = logging.getLogger(__name__)

# raw file name -> number of dimensions in its IDX header (all are unsigned bytes)
IDX_FILES = {
    "train-images-idx3-ubyte": 3,
    "train-labels-idx1-ubyte": 1,
    "t10k-images-idx3-ubyte": 3,
    "t10k-labels-idx1-ubyte": 1,
}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
APT_COMMAND = "apt-get update && apt-get install -y dataset-fashion-mnist"
# data.name -> torchvision's dataset class name, which names the folder <root>/<it>/raw/
TORCHVISION = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
# What the files of a dataset are, by content: SHA-256 of each uncompressed IDX file,
# read off Debian's dataset-fashion-mnist (0.0~git20200523; tests/test_data.py checks
# them against the installed files). A dataset is identified by these, never by the
# spelling of its path: data.name=mnist on these files is refused. (MNIST's are not
# listed: it cannot be had offline here to read them off.)
KNOWN_SHA256 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}  # fmt: skip


class DatasetNotFoundError(FashionbnError, FileNotFoundError):
    """No dataset files anywhere we are allowed to look."""


class DatasetCorruptError(FashionbnError, ValueError):
    """A dataset file exists but cannot be what it claims to be."""


def data_facts(data_cfg) -> tuple[tuple[int, ...], int]:
    """(the shape of one input sample, the number of classes) of the dataset
    data_cfg names: what a model is built for (core.model.build_model).
    FashionMNIST and MNIST: 28x28 images, 10 classes, known before any file is
    read; a data plug-in's: from its tensors (core.sources)."""
    if is_source(data_cfg):
        from fashionbn.core.sources import source_facts

        return source_facts(data_cfg)
    return IMAGE_SHAPE, NUM_CLASSES


def is_source(data_cfg) -> bool:
    """Whether data_cfg names a data plug-in (data._target_)."""
    getter = getattr(data_cfg, "get", None)
    return bool(getter("_target_")) if getter else False


class FashionData(NamedTuple):
    train_images: torch.Tensor  # (N_train, 28, 28) float32 in [0, 1]
    train_labels: torch.Tensor  # (N_train,) int64 in [0, 10)
    test_images: torch.Tensor  # (N_test, 28, 28) float32 in [0, 1]
    test_labels: torch.Tensor  # (N_test,) int64 in [0, 10)
    # held out of the training set (data.val_size); (0, 28, 28) and (0,) without one
    val_images: torch.Tensor = torch.empty(0, *IMAGE_SHAPE)
    val_labels: torch.Tensor = torch.empty(0, dtype=torch.int64)


def split_indices(
    num_samples: int, val_size: int, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) sample indices, both sorted: `val_size` samples held out
    by a permutation fixed by `split_seed` alone, the same for every run, model and
    seed (its own generator: it draws nothing from the training seed's streams)."""
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(num_samples, generator=generator)
    return order[val_size:].sort().values, order[:val_size].sort().values


def dataset_name(data_cfg) -> str:
    """data.name as a plain string ('fashion_mnist' for configs without one); a
    data plug-in's function name."""
    if is_source(data_cfg):
        return str(data_cfg["_target_"]).rsplit(".", 1)[-1]
    return str(option_value(getattr(data_cfg, "name", "fashion_mnist")))


def raw_dir(root: str | Path, name: str = "fashion_mnist") -> Path:
    """Where torchvision expects the uncompressed IDX files of dataset `name`."""
    return Path(root) / TORCHVISION[name] / "raw"


def check_idx_file(path: Path) -> None:
    """Raise DatasetCorruptError naming `path` unless its size fits its IDX header."""
    expected_dims = IDX_FILES[path.name]
    with open(path, "rb") as f:
        header = f.read(4 + 4 * expected_dims)
    if len(header) < 4 + 4 * expected_dims:
        raise DatasetCorruptError(f"{path}: truncated IDX file (incomplete header)")
    if header[0:2] != b"\x00\x00" or header[2] != 0x08 or header[3] != expected_dims:
        raise DatasetCorruptError(
            f"{path}: not an unsigned-byte IDX file with {expected_dims} dimension(s) "
            f"(magic bytes {header[:4].hex()})"
        )
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)][
        :expected_dims
    ]
    expected_size = len(header) + math.prod(dims)
    actual_size = path.stat().st_size
    if actual_size != expected_size:
        raise DatasetCorruptError(
            f"{path}: size {actual_size} bytes, but its header {dims} needs "
            f"{expected_size} (truncated or corrupt file)"
        )


def read_idx(path: Path) -> torch.Tensor:
    """An unsigned-byte IDX file (already checked by check_idx_file) as a uint8 tensor
    shaped as its header says."""
    with open(path, "rb") as f:
        header = f.read(4)
        dims = [int.from_bytes(f.read(4), "big") for _ in range(header[3])]
        data = np.fromfile(f, dtype=np.uint8)  # the rest of the file, in one read
    return torch.from_numpy(data).view(*dims)


def _has_raw_files(root: str | Path, name: str) -> bool:
    return all((raw_dir(root, name) / file).is_file() for file in IDX_FILES)


def check_content(name: str, digests: dict[str, str], where: Path) -> None:
    """Refuse files that are, by their content, another dataset's than `name`."""
    for other, known in KNOWN_SHA256.items():
        matching = [file for file in IDX_FILES if digests.get(file) == known[file]]
        if other != name and matching:
            raise DatasetCorruptError(
                f"{where} holds {TORCHVISION[other]}'s files (by their content: "
                f"{', '.join(matching)}), but data.name={name}: use data={other}, or "
                f"point data.system_dir at a dir with {name}'s four .gz files"
            )


def dataset_digest(digests: dict[str, str]) -> str:
    """One SHA-256 for a dataset's four files (each file's own digest, in order)."""
    lines = "".join(f"{file} {digests[file]}\n" for file in IDX_FILES)
    return hashlib.sha256(lines.encode()).hexdigest()


def prepare_from_system_dir(
    root: str | Path, system_dir: str | Path, name: str = "fashion_mnist"
) -> bool:
    """Decompress the four `.gz` files of `system_dir` into `root`; False if absent.
    Files that are another dataset's, by content, are refused before any is written."""
    sources = {file: Path(system_dir) / f"{file}.gz" for file in IDX_FILES}
    if not all(path.is_file() for path in sources.values()):
        return False
    target_dir = raw_dir(root, name)
    contents = {}
    for file, source in sources.items():
        if (target_dir / file).is_file():
            continue
        try:
            with gzip.open(source, "rb") as src:
                contents[file] = src.read()
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetCorruptError(f"{source}: cannot decompress ({err})") from err
    digests = {
        file: hashlib.sha256(data).hexdigest() for file, data in contents.items()
    }
    check_content(name, digests, Path(system_dir))
    target_dir.mkdir(parents=True, exist_ok=True)
    for file, data in contents.items():  # a kill never leaves a half-written file
        atomic_write(target_dir / file, lambda dst: dst.write(data), "wb")
    log.info("prepared %s in %s from %s", name, target_dir, system_dir)
    return True


def ensure_dataset(
    root: str | Path,
    system_dir: Optional[str | Path],
    download: bool,
    name: str = "fashion_mnist",
) -> None:
    """Make sure `root` holds the raw IDX files of `name`, or raise one clear error."""
    if _has_raw_files(root, name):
        return
    if system_dir is not None and prepare_from_system_dir(root, system_dir, name):
        return
    if download:
        import torchvision.datasets  # only here: it is slow to import

        dataset = getattr(torchvision.datasets, TORCHVISION[name])
        dataset(str(root), train=True, download=True)
        dataset(str(root), train=False, download=True)
        return
    files = raw_dir(root, name)
    title = TORCHVISION[name]
    package = (
        f"(1) install Debian's package: {APT_COMMAND} (or run `make setup`); "
        if name == "fashion_mnist"
        else "(1) it is not packaged for Debian: copy its four .gz files into a dir "
        "and set data.system_dir=<dir>; "
    )
    raise DatasetNotFoundError(
        f"{title} not found: no IDX files in {files} and no .gz files in "
        f"data.system_dir={system_dir}. Get it one of three ways: {package}"
        f"(2) put the four *-ubyte files ({', '.join(IDX_FILES)}) in {files} "
        f"(or point data.root=<dir> at a copy that has them); "
        f"(3) allow torchvision to download with data.download=true (needs internet)."
    )


def _load_split(root: Path, name: str, train: bool, size: Optional[int]) -> tuple:
    prefix = "train" if train else "t10k"
    for file in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        check_idx_file(raw_dir(root, name) / file)
    images = read_idx(
        raw_dir(root, name) / f"{prefix}-images-idx3-ubyte"
    )  # (N, 28, 28)
    labels = read_idx(
        raw_dir(root, name) / f"{prefix}-labels-idx1-ubyte"
    ).long()  # (N,)
    split = "train" if train else "test"
    if images.shape[1:] != IMAGE_SHAPE or len(images) != len(labels):
        raise DatasetCorruptError(
            f"{raw_dir(root, name)}: {split} images {tuple(images.shape)} do not match "
            f"{len(labels)} labels of 28x28 images"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetCorruptError(f"{raw_dir(root, name)}: {split} labels outside 0..9")
    images, labels = first(images, labels, size, split)
    # the same arithmetic as transforms.ToTensor(): uint8 -> float32, / 255
    return images.to(torch.float32).div_(255), labels  # in place: one 188 MB pass less


def load_dataset(data_cfg) -> FashionData:
    """Find (or prepare) the dataset `data_cfg` names and return it as tensors.

    The files are parsed and converted once per process (the jobs of a sweep in one
    process share that), and every call gets its own copy of the tensors (~40 ms for
    the full set), so a caller that changes them in place — a notebook normalising the
    images — changes nothing for the next run. Files that are, by content, another
    dataset's than data.name are refused.
    """
    if is_source(data_cfg):
        return _from_source(data_cfg)
    root, name = Path(data_cfg.root).resolve(), dataset_name(data_cfg)
    stamps = _prepared(data_cfg)
    check_content(name, _file_digests(root, name, stamps), raw_dir(root, name))
    cached = _load_cached(
        root, name, data_cfg.train_size, data_cfg.test_size, data_cfg.val_size,
        data_cfg.split_seed, stamps,
    )  # fmt: skip
    return FashionData(*(tensor.clone() for tensor in cached))


def data_digest(data_cfg) -> str:
    """The SHA-256 of the dataset's four files (dataset_digest), as a run records it;
    a data plug-in's: of its tensors (core.sources.source_digest)."""
    if is_source(data_cfg):
        from fashionbn.core.sources import source_digest

        return source_digest(data_cfg)
    root, name = Path(data_cfg.root).resolve(), dataset_name(data_cfg)
    return dataset_digest(_file_digests(root, name, _prepared(data_cfg)))


def digest_if_present(data_cfg) -> Optional[str]:
    """data_digest where the dataset's files are already in data.root, else None:
    nothing is prepared, downloaded or built (a data plug-in's tensors: None)."""
    if is_source(data_cfg):
        return None
    root, name = Path(data_cfg.root).resolve(), dataset_name(data_cfg)
    if name not in TORCHVISION or not _has_raw_files(root, name):
        return None
    return data_digest(data_cfg)


def _prepared(data_cfg) -> tuple:
    """Make sure the raw files exist; their sizes and times (a changed file is read
    again, by the caches below)."""
    root, name = Path(data_cfg.root).resolve(), dataset_name(data_cfg)
    ensure_dataset(root, data_cfg.system_dir, data_cfg.download, name)
    return tuple(
        (path.stat().st_size, path.stat().st_mtime_ns)
        for path in (raw_dir(root, name) / file for file in IDX_FILES)
    )


@functools.lru_cache(maxsize=4)
def _file_digests(root: Path, name: str, stamps: tuple) -> dict[str, str]:
    digests = {}
    for file in IDX_FILES:  # (hashlib.file_digest needs Python 3.11)
        digest = hashlib.sha256()
        with open(raw_dir(root, name) / file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        digests[file] = digest.hexdigest()
    return digests


@functools.lru_cache(maxsize=1)
def _load_cached(
    root: Path,
    name: str,
    train_size: Optional[int],
    test_size: Optional[int],
    val_size: int,
    split_seed: int,
    stamps: tuple,
) -> FashionData:
    train_images, train_labels = _load_split(root, name, True, train_size)
    test_images, test_labels = _load_split(root, name, False, test_size)
    return with_validation(
        FashionData(train_images, train_labels, test_images, test_labels),
        val_size, split_seed, train_size,
    )  # fmt: skip


def first(images: torch.Tensor, labels: torch.Tensor, size, split: str) -> tuple:
    """The first `size` samples (None: all): a fixed, seed-independent subset."""
    if size is None:
        return images, labels
    if not 0 < size <= len(labels):
        raise ConfigError(
            f"data.{split}_size={size} but the {split} set has {len(labels)} "
            f"samples; use a value in 1..{len(labels)} or null for all"
        )
    return images[:size], labels[:size]


def with_validation(
    data: FashionData, val_size: int, split_seed: int, train_size=None
) -> FashionData:
    """`val_size` training samples held out (split_indices); none: as it is."""
    if not val_size:  # the notebook's protocol: every training sample is trained on
        return data
    available = len(data.train_labels)
    if val_size >= available:
        after = " (data.train_size)" if train_size is not None else ""
        raise ConfigError(
            f"data.val_size={val_size} leaves no training samples: the train set has "
            f"{available}{after}; use 0..{available - 1}"
        )
    keep, held_out = split_indices(available, val_size, split_seed)
    return FashionData(
        data.train_images[keep], data.train_labels[keep], data.test_images,
        data.test_labels, data.train_images[held_out], data.train_labels[held_out],
    )  # fmt: skip


def _from_source(data_cfg) -> FashionData:
    """A data plug-in's tensors with the subsets and the validation split."""
    from fashionbn.core.sources import source_tensors

    train_x, train_y, test_x, test_y = source_tensors(data_cfg)
    train_x, train_y = first(train_x, train_y, data_cfg.train_size, "train")
    test_x, test_y = first(test_x, test_y, data_cfg.test_size, "test")
    data = FashionData(train_x, train_y, test_x, test_y,
                       torch.empty(0, *train_x.shape[1:]))  # fmt: skip
    return with_validation(
        data, data_cfg.val_size, data_cfg.split_seed, data_cfg.train_size
    )


def clear_cache() -> None:
    """Forget the cached tensors (the benchmark times cold loads)."""
    from fashionbn.core.sources import clear_cache as clear_sources

    _load_cached.cache_clear()
    _file_digests.cache_clear()
    clear_sources()
