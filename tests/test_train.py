"""Training on the real data through the composed config."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from fashionbn.data import load_fashion_mnist, shuffled_batches
from fashionbn.model import build_model
from fashionbn.results import METRIC_COLUMNS
from fashionbn.train import (
    make_optimizer,
    make_update,
    resolve_device,
    seed_everything,
    train_and_evaluate,
    train_one_epoch,
)
from tests.conftest import compose_config, without_seconds


@pytest.mark.slow
def test_one_epoch_on_real_data_writes_metrics(small_real_cfg, tmp_path) -> None:
    records = train_and_evaluate(small_real_cfg, tmp_path)
    assert len(records) == 1 and records[0]["epoch"] == 1
    with open(tmp_path / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == METRIC_COLUMNS
    assert len(rows) == 1
    assert float(rows[0]["test_acc"]) == records[0]["test_acc"]
    for key in ("train_acc", "test_acc"):
        assert 0.0 <= records[0][key] <= 1.0
    # test_acc is a count over 1,000 test samples
    assert math.isclose(
        records[0]["test_acc"] * 1000, round(records[0]["test_acc"] * 1000)
    )
    # one epoch of plain SGD at lr=0.001 barely moves from chance: loss near ln(10)
    assert 1.5 < records[0]["train_loss"] < 2.5


@pytest.mark.slow
@pytest.mark.parametrize("model", ["baseline", "batchnorm"])
def test_same_config_twice_gives_identical_numbers(small_real_overrides, model) -> None:
    cfg = compose_config([*small_real_overrides, f"model={model}", "epochs=2"])
    first = without_seconds(train_and_evaluate(cfg))
    second = without_seconds(train_and_evaluate(cfg))
    assert first == second
    cfg.seed = 1
    assert without_seconds(train_and_evaluate(cfg)) != first


@pytest.mark.slow
def test_batchnorm_learns_faster_than_baseline(small_real_overrides) -> None:
    """The experiment's headline on a subset: after 1 epoch BN is far ahead."""
    overrides = [*small_real_overrides, "data.train_size=10000"]
    baseline = train_and_evaluate(compose_config(overrides))[-1]["test_acc"]
    batchnorm = train_and_evaluate(compose_config([*overrides, "model=batchnorm"]))
    assert batchnorm[-1]["test_acc"] > baseline + 0.15


def test_device_auto_picks_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["baseline", "batchnorm"])
def test_fast_sgd_update_is_bit_identical_to_optimizer_step(
    small_real_overrides, model
) -> None:
    """train_one_epoch's plain-SGD shortcut gives torch.optim.SGD's exact numbers."""
    cfg = compose_config([*small_real_overrides, f"model={model}"])
    data = load_fashion_mnist(cfg.data)

    seed_everything(0)
    fast_model = build_model(cfg.model)
    fast_optimizer = make_optimizer(fast_model.parameters(), cfg.optim)
    assert make_update(fast_optimizer) != fast_optimizer.step  # the shortcut is used
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        train_one_epoch(fast_model, fast_optimizer, data.train_images,
                        data.train_labels, 64, generator)  # fmt: skip

    seed_everything(0)
    model_ = build_model(cfg.model)
    optimizer = torch.optim.SGD(model_.parameters(), lr=cfg.optim.lr)
    generator = torch.Generator().manual_seed(0)
    model_.train()
    for _ in range(2):
        for batch in shuffled_batches(len(data.train_labels), 64, generator):
            logits = model_(data.train_images[batch])
            loss = F.cross_entropy(logits, data.train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    fast_state, state = fast_model.state_dict(), model_.state_dict()
    assert fast_state.keys() == state.keys()
    for name in state:
        assert torch.equal(fast_state[name], state[name]), name


@pytest.mark.parametrize(
    "overrides", [["optim.momentum=0.9"], ["optim.weight_decay=0.01"], ["optim=adam"]]
)
def test_other_optimizers_use_their_own_step(overrides) -> None:
    cfg = compose_config(overrides)
    model = build_model(cfg.model)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    assert make_update(optimizer) == optimizer.step
