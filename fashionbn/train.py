"""train_and_evaluate(cfg, out_dir): one seeded run, one metrics row per epoch."""

import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashionbn.data import FashionData, load_fashion_mnist, shuffled_batches
from fashionbn.model import build_model
from fashionbn.results import write_metrics

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; refuse cuda when there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)  # raises on nonsense such as device=gpu0
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={name} but CUDA is not available here; use device=cpu"
        )
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that shuffles batches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(params, optim_cfg) -> torch.optim.Optimizer:
    """SGD or Adam from the `optim` config group."""
    if optim_cfg.lr <= 0:
        raise ValueError(f"optim.lr={optim_cfg.lr}: the learning rate must be > 0")
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim_cfg.lr,
            momentum=optim_cfg.momentum,
            weight_decay=optim_cfg.weight_decay,
            nesterov=optim_cfg.nesterov,
        )
    if optim_cfg.name == "adam":
        return torch.optim.Adam(
            params,
            lr=optim_cfg.lr,
            betas=tuple(optim_cfg.betas),
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
        )
    raise ValueError(f"optim.name={optim_cfg.name}: known optimizers are sgd, adam")


def make_update(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function applying one optimizer step to the current gradients.

    For plain SGD (no momentum, weight decay, nesterov or maximize) this is the update
    torch.optim.SGD itself computes, p -= lr * grad, as one foreach call without
    optimizer.step()'s per-call bookkeeping (profiled: ~15 % of a step of this small
    MLP); the numbers are bit-identical (tests/test_train.py checks it).
    """
    groups = optimizer.param_groups
    plain_sgd = (
        type(optimizer) is torch.optim.SGD
        and len(groups) == 1
        and not optimizer.state
        and groups[0]["momentum"] == 0
        and groups[0]["weight_decay"] == 0
        and not groups[0]["nesterov"]
        and not groups[0]["maximize"]
    )
    if not plain_sgd:
        return optimizer.step
    params = [p for p in groups[0]["params"] if p.requires_grad]

    @torch.no_grad()
    def sgd_update() -> None:
        grads = [p.grad for p in params]
        torch._foreach_add_(params, grads, alpha=-groups[0]["lr"])

    return sgd_update


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[float, float]:
    """One shuffled pass; returns (mean batch loss, accuracy)."""
    model.train()
    update = make_update(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = images.device
    loss_sum = torch.zeros((), device=device)
    predictions, targets = [], []
    for batch in shuffled_batches(len(labels), batch_size, generator, device):
        if len(batch) == 1 and _has_batch_norm(model):
            continue  # BatchNorm cannot train on one sample (DataLoader would crash)
        # index_select is ~3x faster than images[batch] for this gather (profiled)
        x = images.index_select(0, batch)  # (B, 28, 28)
        y = labels.index_select(0, batch)  # (B,)
        logits = model(x)  # (B, 10)
        loss = F.cross_entropy(logits, y)
        for p in params:  # = optimizer.zero_grad(set_to_none=True), minus its overhead
            p.grad = None
        loss.backward()
        update()
        # kept on the device: one host sync per epoch, not per step
        loss_sum += loss.detach()
        predictions.append(logits.argmax(dim=1))  # (B,); argmax records no graph
        targets.append(y)
    seen = torch.cat(targets)
    correct = (torch.cat(predictions) == seen).sum().item()
    return loss_sum.item() / len(predictions), correct / len(seen)


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Eval-mode pass over a whole split; returns (mean sample loss, accuracy)."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        logits = model(x)  # (B, 10)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def check_run_config(cfg) -> None:
    """Refuse values that would only fail (or mislead) after training started."""
    if cfg.epochs <= 0:
        raise ValueError(f"epochs={cfg.epochs}: must be >= 1")
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size={cfg.batch_size}: must be >= 1")
    if cfg.threads is not None and cfg.threads <= 0:
        raise ValueError(f"threads={cfg.threads}: must be >= 1 or null")


def train_and_evaluate(
    cfg, out_dir: Optional[Path] = None, data: Optional[FashionData] = None
) -> list[dict]:
    """Train cfg.model with cfg.optim for cfg.epochs; write metrics.csv into out_dir."""
    check_run_config(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    generator = seed_everything(cfg.seed)
    model = build_model(cfg.model).to(device)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    if data is None:
        data = load_fashion_mnist(cfg.data)
    # the whole dataset moves to the device once, not batch by batch
    train_x, train_y, test_x, test_y = (t.to(device) for t in data)
    log.info(
        "%s + %s(lr=%g), seed=%d, %d train / %d test samples, %d epochs on %s "
        "(%d torch threads)",
        cfg.model.name, cfg.optim.name, cfg.optim.lr, cfg.seed,
        len(train_y), len(test_y), cfg.epochs, device, torch.get_num_threads(),
    )  # fmt: skip

    records: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, optimizer, train_x, train_y, cfg.batch_size, generator
        )
        test_loss, test_acc = evaluate(model, test_x, test_y, cfg.data.eval_batch_size)
        seconds = time.perf_counter() - start
        records.append(
            dict(
                epoch=epoch,
                train_loss=train_loss,
                train_acc=train_acc,
                test_loss=test_loss,
                test_acc=test_acc,
                seconds=seconds,
            )
        )
        if out_dir is not None:
            write_metrics(records, Path(out_dir))
        log.info(
            "epoch %d/%d  train_loss %.4f  train_acc %.4f  test_loss %.4f  "
            "test_acc %.4f  (%.1fs, %.0f samples/s)",
            epoch, cfg.epochs, train_loss, train_acc, test_loss, test_acc,
            seconds, len(train_y) / seconds,
        )  # fmt: skip
        if not math.isfinite(train_loss):
            log.warning(
                "epoch %d: training loss is %s; stopping (diverged)", epoch, train_loss
            )
            break
    return records
