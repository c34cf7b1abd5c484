"""The protocol's choices as keys (issue 16): dropping the incomplete last batch, and
evaluating BatchNorm with precise statistics — checked against plain PyTorch and
independent computations; the defaults keep the notebook's numbers."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from fashionbn.core.data import load_dataset
from fashionbn.core.model import build_model
from fashionbn.core.precise_bn import population_statistics, using_statistics
from fashionbn.core.train import steps_per_epoch, train_and_evaluate
from fashionbn.jobs.files import read_diagnostics, read_metrics
from fashionbn.jobs.job import run_job
from tests.conftest import compose_config, plain_start

TRAINING = ["epoch", "train_loss", "train_acc"]
DEFAULT_EVALUATION = ["test_loss", "test_acc", "val_loss", "val_acc"]


class EpochOrder(torch.utils.data.Sampler):
    """A fresh permutation of the samples per epoch from `generator`: the order
    fashionbn trains in. (DataLoader(shuffle=True, generator=g) draws a seed from g
    for its workers before each epoch's permutation, so it would not be the same.)"""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


def plain_dataloader_loop(cfg, data) -> list[dict]:
    """The protocol written with nn.Module, DataLoader(sampler, drop_last) over the
    same split and order, torch.optim.SGD and model.eval(): independent of
    fashionbn.core.train. One record of test/val accuracy and train loss per epoch."""
    generator, model, optimizer = plain_start(cfg)
    loader = DataLoader(
        TensorDataset(data.train_images, data.train_labels), batch_size=cfg.batch_size,
        sampler=EpochOrder(len(data.train_labels), generator),
        drop_last=cfg.data.drop_last,
    )  # fmt: skip
    records = []
    for _ in range(cfg.epochs):
        model.train()
        losses = []
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            test = (model(data.test_images).argmax(1) == data.test_labels).sum()
            val = (model(data.val_images).argmax(1) == data.val_labels).sum()
        records.append({"train_loss": sum(losses) / len(losses),
                        "test_acc": test.item() / len(data.test_labels),
                        "val_acc": val.item() / len(data.val_labels),
                        "steps": len(losses)})  # fmt: skip
    return records


@pytest.mark.slow
@pytest.mark.parametrize("drop_last", ["false", "true"])
def test_batchnorm_at_a_large_lr_matches_a_plain_dataloader_loop(
    real_data_root, drop_last
) -> None:
    """BatchNorm at lr 0.3 with a validation split: 3,096 training samples end each
    epoch on a batch of 24 (3096 mod 64), kept or dropped."""
    cfg = compose_config(
        [f"data.root={real_data_root}", "model=batchnorm", "optim.lr=0.3",
         "data.train_size=4096", "data.val_size=1000", "data.test_size=1000",
         f"data.drop_last={drop_last}", "epochs=2", "device=cpu", "seed=3"]
    )  # fmt: skip
    records = train_and_evaluate(cfg)
    plain = plain_dataloader_loop(cfg, load_dataset(cfg.data))
    assert [p["steps"] for p in plain] == [48 + (drop_last == "false")] * 2
    assert [r["test_acc"] for r in records] == [p["test_acc"] for p in plain]
    assert [r["val_acc"] for r in records] == [p["val_acc"] for p in plain]
    assert [r["train_loss"] for r in records] == pytest.approx(
        [p["train_loss"] for p in plain], rel=1e-6
    )


def test_drop_last_trains_floor_n_over_b_steps(tmp_path, tiny_system_dir) -> None:
    """96 samples in batches of 20: 4 full batches and one of 16, or the 4 alone."""
    system_dir, _ = tiny_system_dir
    steps = {}
    for drop_last in ("false", "true"):
        cfg = compose_config(
            [f"data.system_dir={system_dir}", f"data.root={tmp_path / 'root'}",
             "batch_size=20", "epochs=2", "device=cpu", f"data.drop_last={drop_last}",
             "diagnostics=on", "diagnostics.every_steps=1",
             "diagnostics.probe_size=16"]
        )  # fmt: skip
        run_job(cfg, tmp_path / drop_last)
        rows = read_diagnostics(tmp_path / drop_last)
        steps[drop_last] = (
            max(r["step"] for r in rows),
            max(r["epoch"] for r in rows if r["step"] == 5),
        )
    # (the last step, the epoch step 5 is in): 5 or 4 steps an epoch
    assert steps == {"false": (2 * 5, 1), "true": (2 * 4, 2)}
    assert steps_per_epoch(96, 20, batch_norm=False, drop_last=True) == 96 // 20
    assert steps_per_epoch(97, 20, batch_norm=True, drop_last=False) == 5
    assert steps_per_epoch(81, 20, batch_norm=True, drop_last=False) == 4  # skips 1


def test_drop_last_drops_only_the_incomplete_batch_of_the_same_order() -> None:
    from fashionbn.core.data import shuffled_batches

    kept = list(shuffled_batches(96, 20, torch.Generator().manual_seed(5)))
    dropped = list(shuffled_batches(96, 20, torch.Generator().manual_seed(5),
                                    drop_last=True))  # fmt: skip
    assert [len(b) for b in kept] == [20, 20, 20, 20, 16]
    assert [len(b) for b in dropped] == [20, 20, 20, 20]
    assert all(torch.equal(a, b) for a, b in zip(kept, dropped))
    exact = list(shuffled_batches(80, 20, torch.Generator(), drop_last=True))
    assert [len(b) for b in exact] == [20] * 4  # nothing to drop


def test_drop_last_is_part_of_a_runs_identity() -> None:
    from fashionbn.jobs.job import run_identity

    assert run_identity(compose_config(["data.drop_last=true"])) != run_identity(
        compose_config([])
    )
    assert run_identity(compose_config(["data.drop_last=false"])) == run_identity(
        compose_config([])
    )


def test_drop_last_with_fewer_samples_than_a_batch_is_refused(
    tmp_path, tiny_system_dir
) -> None:
    from fashionbn.config import ConfigError

    system_dir, _ = tiny_system_dir
    cfg = compose_config(
        [f"data.system_dir={system_dir}", f"data.root={tmp_path / 'root'}",
         "batch_size=128", "data.drop_last=true", "device=cpu"]
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match="data.drop_last=true with batch_size=128 and"
    ):
        run_job(cfg, tmp_path / "job")
    assert not (tmp_path / "job" / "status.json").exists()


# --- precise BatchNorm statistics --------------------------------------------------


def tiny_bn(placement: str = "before", seed: int = 0):
    torch.manual_seed(seed)
    cfg = compose_config(["model=batchnorm", "model.hidden=[6,5]",
                          f"model.norm_placement={placement}"])  # fmt: skip
    model = build_model(cfg.model, in_features=4, num_classes=3)
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
    training = start_training(cfg, torch.device("cpu"))
    data = to_device(load_dataset(cfg.data), torch.device("cpu"))
    records: list[dict] = []
    train_epochs(cfg, training, data, records)
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
