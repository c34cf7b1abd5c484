"""The training loop alone: seeding, optimizer, epochs, evaluation. No file I/O.

`start_training` seeds everything and builds model, optimizer and shuffle generator;
`train_epochs` runs the epochs and hands each finished epoch to a callback (which
fashionbn.jobs.job uses to save it); `train_and_evaluate` does a whole run in memory.
Everything here takes a run's RunSettings (fashionbn.config.settings: the config read
once into plain values); only train_and_evaluate takes a config and resolves it.
"""

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashionbn.config import ConfigError
from fashionbn.config.settings import OptimSettings, RunSettings, run_settings
from fashionbn.core.data import FashionData, data_facts, load_dataset
from fashionbn.core.evaluation import evaluate_epoch
from fashionbn.core.model import build_model, checked_model, has_batch_norm
from fashionbn.core.order import shuffled_batches
from fashionbn.core.records import COMPLETE, DIVERGED

log = logging.getLogger(__name__)

DEVICE_HINT = "use auto, cpu, cuda or cuda:N"


def resolve_device(name: str, batched: bool = False) -> torch.device:
    """'auto' -> the faster device for the job: a cohort (batched) trains on CUDA
    where there is one; one run alone on the CPU, since this small MLP at batch 64
    cannot fill a GPU (one run alone on an H100 was slower than on the CPU:
    docs/launchers.md). Refuse devices fashionbn cannot use."""
    if name == "auto":
        cuda = batched and torch.cuda.is_available()
        return torch.device("cuda" if cuda else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:  # e.g. device=gpu0
        raise ConfigError(f"device={name}: {DEVICE_HINT}") from err
    if device.type not in ("cpu", "cuda"):  # e.g. mps, xpu, meta
        raise ConfigError(f"device={name}: {DEVICE_HINT}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name} but CUDA is not available here; use device=cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name} but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that shuffles batches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class PlainSGD:
    """torch.optim.SGD without momentum, weight decay or nesterov: p -= lr * grad,
    applied as one foreach call. Built without torch.optim, whose constructor imports
    torch._dynamo (about 0.9 s of every process's start-up here), and without
    optimizer.step()'s per-call bookkeeping (profiled: ~15 % of a step of this small
    MLP). The numbers are torch.optim.SGD's, bit for bit (tests/test_train.py), and so
    is the behaviour a schedule or a frozen layer relies on: a parameter without a
    gradient is left alone, and the learning rate is read from param_groups[0]["lr"]
    at every step (a schedule that writes it takes effect)."""

    def __init__(self, params, lr: float):
        self.param_groups = [{"params": list(params), "lr": lr}]

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            grads = [p.grad for p in params]
            torch._foreach_add_(params, grads, alpha=-group["lr"])

    def state_dict(self) -> dict:
        """torch.optim.SGD's state_dict for the same settings (it has no state)."""
        params, lr = self.param_groups[0]["params"], self.param_groups[0]["lr"]
        group = {"lr": lr, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                 "nesterov": False, "maximize": False,
                 "params": list(range(len(params)))}  # fmt: skip
        return {"state": {}, "param_groups": [group]}

    def load_state_dict(self, state: dict) -> None:
        """Take the saved learning rate, as torch.optim.SGD does; refuse state."""
        if state.get("state"):
            raise ValueError("plain SGD has no state: this is another optimizer's")
        self.param_groups[0]["lr"] = state["param_groups"][0]["lr"]


def make_optimizer(params, optim: OptimSettings):
    """SGD (PlainSGD when it has no momentum, weight decay or nesterov) or Adam."""
    if optim.name == "sgd":
        plain = (optim.momentum, optim.weight_decay) == (0, 0)
        if plain and not optim.nesterov:
            return PlainSGD(params, optim.lr)
        return torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            nesterov=optim.nesterov,
        )
    if optim.name == "adam":
        return torch.optim.Adam(
            params,
            lr=optim.lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
    raise ConfigError(f"optim.name={optim.name}: known optimizers are sgd, adam")


def steps_per_epoch(
    num_samples: int, batch_size: int, batch_norm: bool, drop_last: bool = False
) -> int:
    """Optimizer steps per epoch: one per batch (without the incomplete last batch
    when drop_last), except that a model with BatchNorm skips batches of one sample
    (it cannot normalise over a single sample)."""
    full, rest = divmod(num_samples, batch_size)
    rest = 0 if drop_last else rest
    if not batch_norm:
        return full + int(rest > 0)
    return (full if batch_size > 1 else 0) + int(rest > 1)


def check_trainable(run: RunSettings, num_samples: int) -> None:
    """Refuse, before anything is trained or written, a run with no step to take or
    a model that cannot take one (core.model.checked_model)."""
    model = checked_model(run.model, *data_facts(run.data))  # a plug-in's error here
    batch_norm = has_batch_norm(model)
    if steps_per_epoch(num_samples, run.batch_size, batch_norm, run.drop_last) > 0:
        return
    if run.drop_last and num_samples < run.batch_size:
        raise ConfigError(
            f"data.drop_last=true with batch_size={run.batch_size} and {num_samples} "
            "training sample(s) drops every batch: use a smaller batch_size or "
            "data.drop_last=false"
        )
    raise only_one_sample_batches(run.batch_size, num_samples)


def only_one_sample_batches(batch_size: int, num_samples: int) -> ConfigError:
    """The error for a BatchNorm model whose every batch has one sample."""
    return ConfigError(
        f"batch_size={batch_size} with {num_samples} training sample(s) leaves "
        "only one-sample batches, which BatchNorm cannot train on"
    )


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    on_step: Optional[Callable[[], None]] = None,
    drop_last: bool = False,
) -> tuple[float, float]:
    """One shuffled pass (without the incomplete last batch when drop_last); returns
    (mean batch loss, accuracy over the samples trained on). on_step, if given, is
    called after every update (fashionbn.core.diagnostics measures there)."""
    model.train()
    update = optimizer.step
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = images.device
    loss_sum = torch.zeros((), device=device)
    predictions, targets = [], []
    batches = shuffled_batches(len(labels), batch_size, generator, device, drop_last)
    for batch in batches:
        if len(batch) == 1 and has_batch_norm(model):
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
        if on_step is not None:
            on_step()
        # kept on the device: one host sync per epoch, not per step
        loss_sum += loss.detach()
        predictions.append(logits.argmax(dim=1))  # (B,); argmax records no graph
        targets.append(y)
    if not predictions:
        raise only_one_sample_batches(batch_size, len(labels))
    seen = torch.cat(targets)
    correct = (torch.cat(predictions) == seen).sum().item()
    return loss_sum.item() / len(predictions), correct / len(seen)


@dataclass
class Training:
    """What a run changes as it trains: weights, optimizer state, the shuffle order."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator


def start_training(run: RunSettings, device: torch.device) -> Training:
    """Seed everything from run.seed, then build the model and its optimizer."""
    generator = seed_everything(run.seed)
    model = build_model(run.model, *data_facts(run.data)).to(device)
    return Training(model, make_optimizer(model.parameters(), run.optim), generator)


def training_state(training: Training, rng: Optional[dict] = None) -> dict:
    """Everything needed to continue bit-identically: weights, optimizer, every RNG
    (the process's global generators as they are now, or as `rng` recorded them:
    global_rng_state() of a run trained beside others).

    Only tensors and plain Python values (numpy's RNG keys become a tensor), so that
    checkpoint.pt loads with torch.load(weights_only=True): reading a job dir copied
    from someone else never runs pickle."""
    return {
        "model": training.model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "generator": training.generator.get_state(),
        **(rng if rng is not None else global_rng_state()),
    }


def global_rng_state() -> dict:
    """The process's global generators: torch, CUDA, numpy, python."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(position),
            int(has_gauss),
            float(cached),
        ),  # fmt: skip
        "python": random.getstate(),
    }


def restore_training(training: Training, state: dict) -> None:
    """Put weights, optimizer and every RNG back as `training_state` saved them."""
    training.model.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss,
                         cached))  # fmt: skip
    random.setstate(state["python"])


def log_start(run: RunSettings, data: FashionData, device: torch.device) -> None:
    log.info(
        "%s + %s(lr=%g), seed=%d, %d train / %d val / %d test samples, %d epochs on "
        "%s (%d torch threads)",
        run.model.name, run.optim.name, run.optim.lr, run.seed,
        len(data.train_labels), len(data.val_labels), len(data.test_labels),
        run.epochs, device, torch.get_num_threads(),
    )  # fmt: skip


EpochCallback = Callable[[list[dict], bool], None]  # (records so far, diverged)


def is_diverged(train_loss: float, divergence_loss: float) -> bool:
    """NaN/inf, or so far above chance (ln 10 = 2.3) that training has blown up."""
    return not math.isfinite(train_loss) or train_loss > divergence_loss


def train_epochs(
    run: RunSettings,
    training: Training,
    data: FashionData,
    records: list[dict],
    on_epoch: Optional[EpochCallback] = None,
    on_step: Optional[Callable[[], None]] = None,
) -> str:
    """Run the epochs after those in `records`, appending one record per epoch and
    calling on_epoch(records, diverged) after each (and on_step() after every
    update); return COMPLETE or DIVERGED."""
    model, optimizer, generator = training.model, training.optimizer, training.generator
    for epoch in range(len(records) + 1, run.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, optimizer, data.train_images, data.train_labels, run.batch_size,
            generator, on_step, run.drop_last,
        )  # fmt: skip
        evaluated = evaluate_epoch(run, model, data)
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
        records.append({**record, "seconds": seconds, **evaluated})
        diverged = is_diverged(train_loss, run.divergence_loss)
        if on_epoch is not None:
            on_epoch(records, diverged)
        log.info(
            "%s  (%.1fs, %.0f samples/s)", epoch_summary(records[-1], run.epochs),
            seconds, len(data.train_labels) / seconds,
        )  # fmt: skip
        if diverged:
            log.warning("%s", divergence_message(records[-1], run.divergence_loss))
            return DIVERGED
    return COMPLETE


def epoch_summary(record: dict, epochs: int) -> str:
    """An epoch's log line: 'epoch 2/5  train_loss ...  test_acc ...'."""
    validation = (
        f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_acc']:.4f}"
        if record.get("val_acc") is not None
        else ""
    )
    return (
        f"epoch {record['epoch']}/{epochs}  train_loss {record['train_loss']:.4f}  "
        f"train_acc {record['train_acc']:.4f}{validation}  "
        f"test_loss {record['test_loss']:.4f}  test_acc {record['test_acc']:.4f}"
    )


def divergence_message(record: dict, divergence_loss: float) -> str:
    return (
        f"epoch {record['epoch']}: training loss {record['train_loss']} is not finite "
        f"or above divergence_loss={divergence_loss:g}; the run diverged and stops "
        "here (status 'diverged' in its dir)"
    )


@contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """torch's (process-wide) thread count set to `threads` (None: left as it is)
    inside the block, and put back as it was after it."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def checked_data(
    run: RunSettings, data: Optional[FashionData], device: torch.device
) -> FashionData:
    """The run's data (given, or loaded as run.data says) on the device, checked to
    be trainable with these settings (ConfigError otherwise)."""
    data = to_device(data if data is not None else load_dataset(run.data), device)
    check_trainable(run, len(data.train_labels))
    return data


def train_and_evaluate(cfg, data: Optional[FashionData] = None) -> list[dict]:
    """A whole run of a composed config in memory, no files: one record per epoch
    (tests, notebooks). The config is checked and resolved once (run_settings)."""
    run = run_settings(cfg)
    device = resolve_device(run.device)
    with torch_threads(run.threads):
        data = checked_data(run, data, device)
        training = start_training(run, device)
        log_start(run, data, device)
        records: list[dict] = []
        train_epochs(run, training, data, records)
    return records


def to_device(data: FashionData, device: torch.device) -> FashionData:
    """The whole dataset on the device once, not batch by batch."""
    return FashionData(*(t.to(device) for t in data))
