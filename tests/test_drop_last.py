"""Dropping the incomplete last batch (data.drop_last), checked against a plain
DataLoader(drop_last=...) loop over the same order; the default keeps the notebook's
numbers."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fashionbn.core.data import load_dataset
from fashionbn.core.train import steps_per_epoch, train_and_evaluate
from fashionbn.jobs.files import read_diagnostics
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
    from fashionbn.core.order import shuffled_batches

    kept = list(shuffled_batches(96, 20, torch.Generator().manual_seed(5)))
    dropped = list(shuffled_batches(96, 20, torch.Generator().manual_seed(5),
                                    drop_last=True))  # fmt: skip
    assert [len(b) for b in kept] == [20, 20, 20, 20, 16]
    assert [len(b) for b in dropped] == [20, 20, 20, 20]
    assert all(torch.equal(a, b) for a, b in zip(kept, dropped))
    exact = list(shuffled_batches(80, 20, torch.Generator(), drop_last=True))
    assert [len(b) for b in exact] == [20] * 4  # nothing to drop


def test_drop_last_is_part_of_a_runs_identity() -> None:
    from fashionbn.config.settings import run_identity

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
