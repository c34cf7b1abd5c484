"""Precise BatchNorm statistics (fashionbn.core.precise_bn, precise_bn=true): checked
against numpy by hand and torch's update_bn; measuring them changes no training
state."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from fashionbn.config.settings import run_settings
from fashionbn.core.data import load_dataset
from fashionbn.core.model import build_model
from fashionbn.core.precise_bn import population_statistics, using_statistics
from fashionbn.jobs.files import read_metrics
from fashionbn.jobs.job import run_job
from tests.conftest import compose_config

TRAINING = ["epoch", "train_loss", "train_acc"]
DEFAULT_EVALUATION = ["test_loss", "test_acc", "val_loss", "val_acc"]


def tiny_bn(placement: str = "before", seed: int = 0):
    torch.manual_seed(seed)
    cfg = compose_config(["model=batchnorm", "model.hidden=[6,5]",
                          f"model.norm_placement={placement}"])  # fmt: skip
    model = build_model(cfg.model, input_shape=(4,), num_classes=3)
    model.train()
    for _ in range(3):  # running statistics that are not the population's
        model(torch.randn(16, 4) * 3 + 2)
    images = torch.randn(200, 2, 2) * 1.5 + 0.5  # "training samples", (N, 2, 2)
    return model, images


@pytest.mark.parametrize("placement", ["before", "after"])
def test_precise_statistics_by_hand_with_numpy(placement) -> None:
    """Layer by layer: the mean and unbiased variance of each BatchNorm layer's input
    over all samples, earlier layers normalising with theirs."""
    model, images = tiny_bn(placement)
    got = population_statistics(model, images)
    x = images.flatten(1).numpy().astype(np.float64)
    expected = []
    for module in model:
        if isinstance(module, torch.nn.Linear):
            x = x @ module.weight.detach().numpy().T + module.bias.detach().numpy()
        elif isinstance(module, torch.nn.BatchNorm1d):
            mean, var = x.mean(axis=0), x.var(axis=0, ddof=1)
            expected.append((mean, var))
            gamma = module.weight.detach().numpy()
            x = (x - mean) / np.sqrt(var + module.eps) * gamma + module.bias.numpy(
                force=True
            )
        elif isinstance(module, torch.nn.ReLU):
            x = np.maximum(x, 0)
    assert len(got) == len(expected) == 2
    for (mean, var), (hand_mean, hand_var) in zip(got, expected):
        assert mean.numpy() == pytest.approx(hand_mean, rel=1e-5, abs=1e-6)
        assert var.numpy() == pytest.approx(hand_var, rel=1e-5)


def test_precise_statistics_agree_with_torchs_update_bn() -> None:
    """update_bn on a copy, over one batch of all samples, gives the same statistics
    (up to update_bn normalising in training mode with the biased variance: O(1/N))."""
    model, images = tiny_bn()
    got = population_statistics(model, images)
    twin = copy.deepcopy(model)
    update_bn([images], twin)  # one batch: the whole set
    layers = [m for m in twin.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    for (mean, var), layer in zip(got, layers):
        assert mean.numpy() == pytest.approx(layer.running_mean.numpy(), rel=2e-2,
                                             abs=1e-3)  # fmt: skip
        assert var.numpy() == pytest.approx(layer.running_var.numpy(), rel=2e-2)


def test_evaluating_with_precise_statistics_changes_no_state() -> None:
    model, images = tiny_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    statistics = population_statistics(model, images)
    with using_statistics(model, statistics):
        layer = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
        assert torch.equal(layer.running_mean, statistics[0][0])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.slow
def test_precise_statistics_leave_training_identical(small_real_overrides, tmp_path):
    """metrics.csv's training and default evaluation columns are the same with and
    without precise_bn; only the *_precise columns are added, for BatchNorm only."""
    overrides = [*small_real_overrides, "model=batchnorm", "epochs=3",
                 "data.val_size=500", "optim.lr=0.3"]  # fmt: skip
    run_job(compose_config(overrides), tmp_path / "off")
    run_job(compose_config([*overrides, "precise_bn=true"]), tmp_path / "on")
    off, on = read_metrics(tmp_path / "off"), read_metrics(tmp_path / "on")
    keep = TRAINING + DEFAULT_EVALUATION
    assert [{k: r[k] for k in keep} for r in on] == [
        {k: r[k] for k in keep} for r in off
    ]
    assert all(r["test_acc_precise"] is None for r in off)
    assert all(0 < r["test_acc_precise"] <= 1 and 0 < r["val_acc_precise"] <= 1
               for r in on)  # fmt: skip
    # the baseline records nothing precise: it has no BatchNorm
    base = run_job(compose_config([*overrides, "model=baseline", "precise_bn=true"]),
                   tmp_path / "base")  # fmt: skip
    assert all(r["test_acc_precise"] is None for r in base)


@pytest.mark.slow
def test_the_precise_columns_are_an_evaluation_with_recomputed_statistics(
    small_real_overrides,
) -> None:
    """The recorded test_acc_precise equals evaluating the trained model, with
    statistics recomputed by hand over the training samples."""
    from fashionbn.core.evaluation import evaluate
    from fashionbn.core.train import start_training, to_device, train_epochs

    cfg = compose_config([*small_real_overrides, "model=batchnorm", "epochs=1",
                          "precise_bn=true", "optim.lr=0.1"])  # fmt: skip
    training = start_training(run_settings(cfg), torch.device("cpu"))
    data = to_device(load_dataset(cfg.data), torch.device("cpu"))
    records: list[dict] = []
    train_epochs(run_settings(cfg), training, data, records)
    model = training.model
    x = data.train_images.flatten(1)
    for module in model:  # the population statistics, written out again
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(x.mean(0).detach())
            module.running_var.copy_(x.var(0).detach())
            x = F.batch_norm(x, module.running_mean, module.running_var,
                             module.weight, module.bias, eps=module.eps)  # fmt: skip
        elif not isinstance(module, torch.nn.Flatten):
            x = module(x)
    loss, accuracy = evaluate(model, data.test_images, data.test_labels, 10_000)
    assert records[0]["test_acc_precise"] == accuracy
    assert records[0]["test_loss_precise"] == pytest.approx(loss, rel=1e-6)
