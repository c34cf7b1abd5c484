"""Data plug-ins (data._target_): the shipped scikit-learn digits and a user's own
source, with the input shape and classes taken from the tensors, the subsets and the
validation split applied as for FashionMNIST, a digest of the tensors as the data's
identity, one-line errors, and whole sweeps under both launchers."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from fashionbn.config import ConfigError
from fashionbn.config.settings import run_identity
from fashionbn.config.validation import check_config
from fashionbn.core.data import data_digest, data_facts, load_dataset, split_indices
from fashionbn.core.model import build_model
from fashionbn.core.train import train_and_evaluate
from tests.conftest import compose_config, run_module


def tiny_source(n_train: int = 30, n_test: int = 12, classes: int = 3, shape=(2, 3)):
    """A user's source: deterministic tensors of a shape no built-in has."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n_train + n_test, *shape, generator=g)
    y = torch.arange(n_train + n_test) % classes
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def bad_source(kind: str):
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    return {
        "three": (x, y, x),
        "labels": (x, y[:3], x, y),
        "float_labels": (x, y.float(), x, y),
        "negative": (x, y - 1, x, y),
        "shapes": (x, y, torch.zeros(4, 3), y),
        "notfinite": (x * float("nan"), y, x, y),
    }[kind]


SOURCE = "tests.test_data_plugins.tiny_source"


def test_digits_are_scikit_learns_8x8_digits_scaled_to_one() -> None:
    from sklearn.datasets import load_digits

    cfg = compose_config(["data=digits"])
    data = load_dataset(cfg.data)
    digits = load_digits()
    assert data.train_images.shape == (1797 - 360, 8, 8)
    assert data.test_images.shape == (360, 8, 8)
    assert np.array_equal(data.test_labels.numpy(), digits.target[-360:])
    assert np.allclose(data.train_images[5].numpy(), digits.images[5] / 16.0)
    assert float(data.train_images.max()) == 1.0 and float(data.train_images.min()) == 0
    assert data_facts(cfg.data) == ((8, 8), 10)
    assert build_model(cfg.model, *data_facts(cfg.data))[1].in_features == 64


def test_a_users_source_gives_the_shape_classes_subsets_and_split() -> None:
    overrides = [f"+data._target_={SOURCE}", "data.train_size=20", "data.test_size=5",
                 "data.val_size=6", "data.split_seed=3"]  # fmt: skip
    cfg = compose_config(overrides)
    check_config(cfg)
    assert data_facts(cfg.data) == ((2, 3), 3)  # labels 0..2
    data = load_dataset(cfg.data)
    x, y, tx, ty = tiny_source()
    keep, held = split_indices(20, 6, 3)  # the same split as FashionMNIST's
    assert torch.equal(data.train_images, x[:20][keep])
    assert torch.equal(data.val_labels, y[:20][held])
    assert torch.equal(data.test_images, tx[:5]) and len(data.val_images) == 6


def test_the_datas_identity_is_a_digest_of_its_tensors() -> None:
    cfg = compose_config([f"+data._target_={SOURCE}"])
    x, y, tx, ty = tiny_source()
    digest = hashlib.sha256()
    for name, t in zip(["train_images", "train_labels", "test_images", "test_labels"],
                       [x, y, tx, ty]):  # fmt: skip
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes())
    assert data_digest(cfg.data) == digest.hexdigest()
    other = compose_config([f"+data._target_={SOURCE}", "+data.args.n_train=31"])
    assert data_digest(other.data) != data_digest(cfg.data)
    identity = run_identity(cfg)["data"]
    assert identity["_target_"] == SOURCE and identity["name"] is None
    # FashionMNIST's runs keep the identity they had: no plug-in keys
    assert "_target_" not in run_identity(compose_config([]))["data"]


@pytest.mark.parametrize(
    "kind, message",
    [
        ("three", "returned tuple, not four tensors"),
        ("labels", "train labels of shape (3,) for 4 train images"),
        ("float_labels", "train labels of dtype torch.float32, not integers"),
        ("negative", "train labels below 0"),
        ("shapes", "train samples of shape (2,), test samples of shape (3,)"),
        ("notfinite", "train images that are not finite"),
    ],
)
def test_a_broken_source_is_one_line_naming_it(kind, message) -> None:
    cfg = compose_config(["+data._target_=tests.test_data_plugins.bad_source",
                          f"+data.args.kind={kind}"])  # fmt: skip
    with pytest.raises(ConfigError, match="data._target_=tests.test_data_plugins") as e:
        load_dataset(cfg.data)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_source_and_stray_args_are_refused() -> None:
    cfg = compose_config(["+data._target_=no.such.source"])
    with pytest.raises(ConfigError, match="data._target_=no.such.source:"):
        data_facts(cfg.data)
    with pytest.raises(ConfigError, match="arguments of a data._target_"):
        check_config(compose_config(["+data.args.n=3"]))


def test_a_cnn_trains_on_digits_in_memory() -> None:
    cfg = compose_config(["data=digits", "model=cnn_groupnorm", "epochs=1",
                          "threads=1", "optim.lr=0.1"])  # fmt: skip
    records = train_and_evaluate(cfg)
    assert records[-1]["test_acc"] > 0.2  # learns something in one epoch


@pytest.mark.slow
def test_a_digits_sweep_in_both_launchers_aggregates(tmp_path) -> None:
    sweeps = {}
    for launcher in ("basic", "batched"):
        sweeps[launcher] = tmp_path / launcher
        result = run_module(
            ["fashionbn.run", "-m", "data=digits", "model=baseline,batchnorm",
             "seed=0,1", "epochs=2", "optim.lr=0.1", "threads=1", "device=cpu",
             f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweeps[launcher]}"],
            tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in sweeps["basic"].iterdir() if p.is_dir())
    assert len(names) == 4
    for name in names:
        a = pd.read_csv(sweeps["basic"] / name / "metrics.csv").drop(columns="seconds")
        b = pd.read_csv(sweeps["batched"] / name / "metrics.csv").drop(
            columns="seconds"
        )
        assert a.equals(b), name  # the built-in MLP: bit for bit at one thread
        status = json.loads((sweeps["basic"] / name / "status.json").read_text())
        assert status["config"]["data"]["_target_"].endswith("sklearn_digits")
    report = run_module(["fashionbn.aggregate", str(sweeps["basic"])], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    results = pd.read_csv(sweeps["basic"] / "results.csv")
    assert len(results) == 4 * 2
    assert set(results["data._target_"]) == {"fashionbn.core.sources.sklearn_digits"}


def uint8_images():
    x, y = torch.zeros(4, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    return x, y, x, y


def one_class():
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    return x, y, x, y


def unseen_test_class():
    x = torch.zeros(4, 2)
    return x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 2, 1])


_calls = [0]


def different_each_call():
    """Random numbers from the global stream: other data on every call."""
    _calls[0] += 1
    x = torch.full((4, 2), float(_calls[0]))
    y = torch.tensor([0, 1, 0, 1])
    return x, y, x, y


@pytest.mark.parametrize(
    "source, message",
    [
        ("uint8_images", "train images of dtype torch.uint8: return floats"),
        ("one_class", "one class in the train labels"),
        ("unseen_test_class", r"test label 2, above every train label \(at most 1\)"),
        ("different_each_call", "returned other tensors when called again"),
    ],
)
def test_a_source_the_model_cannot_learn_from_is_refused(source, message) -> None:
    cfg = compose_config([f"+data._target_=tests.test_data_plugins.{source}"])
    with pytest.raises(ConfigError, match=message):
        data_facts(cfg.data)


def test_load_model_calls_no_data_source_a_dir_names(real_data_root, tmp_path) -> None:
    """The model is built for its data's shape, which a plug-in source gives by
    being called: only sources fashionbn ships are called for an untrusted dir."""
    from fashionbn import api
    from fashionbn.config import FashionbnError
    from fashionbn.jobs.job import run_job

    _calls[0] = 0
    base = ["epochs=1", "threads=1", "device=cpu"]
    run_job(compose_config([*base, "data=digits"]), tmp_path / "digits")
    assert api.load_model(tmp_path / "digits")[1].in_features == 64  # shipped
    mine = compose_config([*base, f"+data._target_={SOURCE}"])
    run_job(mine, tmp_path / "mine")
    calls = []
    import tests.test_data_plugins as me
    from fashionbn.core.sources import clear_cache

    clear_cache()  # nothing cached: a call would reach the source
    real = me.tiny_source
    me.tiny_source = lambda **kw: calls.append(kw) or real(**kw)
    try:
        with pytest.raises(FashionbnError, match="not a source fashionbn ships"):
            api.load_model(tmp_path / "mine")
        assert calls == []  # refused before anything of the dir's was called
        assert api.load_model(tmp_path / "mine", trust_plugins=True)[1].in_features == 6
    finally:
        me.tiny_source = real
