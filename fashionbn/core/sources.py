"""Data plug-ins (data._target_): a function, named by Hydra's dotted path and called
with data.args, that returns the train and test tensors: (train_images, train_labels,
test_images, test_labels), images of any per-sample shape, labels 0..C-1. fashionbn
then applies what it applies to FashionMNIST — data.train_size / test_size (the first
N samples), the validation split (data.val_size, split_seed) — and takes the input
shape and the number of classes from the tensors (data_facts), and a run's data
identity from their contents (source_digest, SHA-256 over dtypes, shapes and bytes).

A source is called twice per process and configuration (its tensors must be equal:
the data's identity is their digest), then cached; every run gets its own copy of
the tensors. Anything wrong with a source or what it returns is one
ConfigError line naming data._target_, before anything is trained or written.
`sklearn_digits` ships as `data=digits`: scikit-learn's 8x8 digits, offline.
"""

import functools
import hashlib
import json

import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from fashionbn.config import ConfigError

SPLITS = ("train_images", "train_labels", "test_images", "test_labels")


def _key(data_cfg) -> tuple[str, str]:
    args = data_cfg.get("args") or {}
    args = OmegaConf.to_container(args) if OmegaConf.is_config(args) else dict(args)
    return str(data_cfg["_target_"]), json.dumps(args, sort_keys=True)


def source_tensors(data_cfg) -> tuple[torch.Tensor, ...]:
    """The source's four tensors, checked (a copy each call)."""
    return tuple(t.clone() for t in _tensors(*_key(data_cfg)))


@functools.lru_cache(maxsize=4)
def _tensors(target: str, args: str) -> tuple[torch.Tensor, ...]:
    where = f"data._target_={target}"
    try:
        source = get_object(target)
    except Exception as err:  # noqa: BLE001 - hydra wraps import errors
        raise ConfigError(f"{where}: {_line(err)}") from err
    try:
        out = source(**json.loads(args))
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the source's own error, one line
        raise ConfigError(f"{where}: {_line(err)}") from err
    if not (isinstance(out, (tuple, list)) and len(out) == 4
            and all(isinstance(t, torch.Tensor) for t in out)):  # fmt: skip
        raise ConfigError(
            f"{where} returned {type(out).__name__}, not four tensors "
            f"({', '.join(SPLITS)})"
        )
    train_x, train_y, test_x, test_y = out
    problem = _shape_problem(train_x, train_y, "train") or _shape_problem(
        test_x, test_y, "test"
    )
    if problem is None and train_x.shape[1:] != test_x.shape[1:]:
        problem = (
            f"train samples of shape {tuple(train_x.shape[1:])}, test samples of "
            f"shape {tuple(test_x.shape[1:])}"
        )
    if problem is None and int(train_y.max()) < 1:
        problem = "one class in the train labels: nothing to classify"
    if problem is None and int(test_y.max()) > int(train_y.max()):
        problem = (
            f"test label {int(test_y.max())}, above every train label (at most "
            f"{int(train_y.max())}): a class the model never trains on"
        )
    if problem:
        raise ConfigError(f"{where}: {problem}")
    try:  # the data's identity is its digest: the same arguments, the same data
        again = source(**json.loads(args))
        same = len(again) == 4 and all(
            isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
            for a, b in zip(out, again)
        )
    except Exception:  # noqa: BLE001 - a second call that fails is not the same
        same = False
    if not same:
        raise ConfigError(
            f"{where} returned other tensors when called again with the same "
            "arguments: a source must return the same data every time (draw random "
            "numbers from a generator of its own, seeded from its arguments)"
        )
    images = [x.cpu().to(torch.float32).contiguous() for x in (train_x, test_x)]
    labels = [y.cpu().to(torch.int64) for y in (train_y, test_y)]
    return images[0], labels[0], images[1], labels[1]


def _shape_problem(images, labels, split: str):
    if images.dim() < 2 or len(images) == 0:
        return f"{split} images of shape {tuple(images.shape)}: need (N >= 1, ...)"
    if labels.dim() != 1 or len(labels) != len(images):
        return (
            f"{split} labels of shape {tuple(labels.shape)} for {len(images)} "
            f"{split} images"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return f"{split} labels of dtype {labels.dtype}, not integers"
    if not images.is_floating_point():
        return (
            f"{split} images of dtype {images.dtype}: return floats, scaled as the "
            "model should see them (e.g. uint8 / 255)"
        )
    if labels.min() < 0:
        return f"{split} labels below 0"
    if images.is_floating_point() and not torch.isfinite(images).all():
        return f"{split} images that are not finite (NaN or inf)"
    return None


def _line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(", set env var HYDRA_FULL_ERROR")[0][:300]


def source_facts(data_cfg) -> tuple[tuple[int, ...], int]:
    """(one sample's shape, number of classes: the largest train label + 1)."""
    train_x, train_y, _, _ = _tensors(*_key(data_cfg))
    return tuple(train_x.shape[1:]), int(train_y.max()) + 1


def source_digest(data_cfg) -> str:
    """SHA-256 over each tensor's dtype, shape and bytes: the data's identity."""
    return _digest(*_key(data_cfg))


@functools.lru_cache(maxsize=4)
def _digest(target: str, args: str) -> str:
    digest = hashlib.sha256()
    for name, tensor in zip(SPLITS, _tensors(target, args)):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def clear_cache() -> None:
    _tensors.cache_clear()
    _digest.cache_clear()


# --- a source that works offline on every machine -----------------------------------

EXTRAS = "pip install -e '.[datasets]' (make setup installs it)"


def sklearn_digits(test_size: int = 360):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes),
    scaled to [0, 1]; the last `test_size` images are the test set."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ConfigError(f"data=digits needs scikit-learn: {EXTRAS}") from err
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    if not 0 < test_size < len(labels):
        raise ConfigError(
            f"data.args.test_size={test_size}: must be in 1..{len(labels) - 1}"
        )
    cut = len(labels) - test_size
    return images[:cut], labels[:cut], images[cut:], labels[cut:]
