"""Train a cohort of runs at once: the runs' weights stacked along a first dimension
(K, ...), one batched forward and backward pass per step, each run with its own
initial weights, shuffle order, learning rate, momentum and weight decay.

A cohort is built from the runs' own `Training` objects (fashionbn.core.train
start_training: the single-run path's seeding, initialisation and optimizer), trains
one epoch at a time, and writes each run's weights, BatchNorm statistics and
momentum back into its Training after the epoch, so evaluation, checkpoints and
resume are the single-run path's own code.

Why the numbers are the single-run path's, bit for bit, on the CPU with one thread
(tests/test_batched.py, every model kind): each run's slice is computed exactly as it is
alone. torch.baddbmm is torch.addmm per matrix; the weight's gradient is formed as one
run's addmm forms it (core.stacking StackedLinear); BatchNorm over (B, K*C) is BatchNorm
over each run's (B, C); the cross-entropy gradient through `reduction="none"` and a mean
per run is the `mean` reduction's; p.addcmul_(g, -lr) is p.add_(g, alpha=-lr). Two
operations do not reduce the same way batched, so they run per run: LayerNorm (its fused
affine rounds differently) and, on the CPU, the reported loss value (nll_loss's mean
sums in its own order). With more threads, torch.mm splits one run's sums across threads
unlike torch.bmm: last digits differ (docs/launchers.md: measured). On CUDA the kernels
differ from one run's; the loss value is the batched mean there.

That hand-written forward pass is the fast path, chosen by an allowlist
(core.stacking.FAST_PATH: the built-in MLP's module types and settings). Any other
model — a plug-in normalisation (model.norm._target_) — trains through the generic
path: the single-run module itself, vmapped over the stacked parameters and buffers
(torch.func.functional_call; BatchNorm's running statistics update per run). Its
numbers match the runs alone to float32 rounding, not bit for bit (torch.bmm rounds
unlike torch.mm). Which runs share a cohort, and whether a model can be stacked at
all, is decided at set-up (core.stacking): one that cannot runs alone, with its
reason.
Nothing here reads or writes files.
"""

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from fashionbn.config.settings import RunSettings
from fashionbn.core.data import FashionData
from fashionbn.core.evaluation import evaluate_epoch
from fashionbn.core.model import ACTIVATIONS, has_batch_norm
from fashionbn.core.order import epoch_order
from fashionbn.core.records import COMPLETE, DIVERGED, STOPPED
from fashionbn.core.stacking import StackedLinear, generic_forward, on_fast_path
from fashionbn.core.train import Training, is_diverged


class Cohort:
    """K runs of one architecture, stacked; trains them one epoch at a time."""

    def __init__(
        self,
        trainings: list[Training],
        runs: list[RunSettings],
        exact_losses: Optional[bool] = None,
        generic: Optional[bool] = None,
    ):
        """`exact_losses`: each run's loss value computed as alone, run by run
        (None: where a cohort's numbers are the runs' own, on the CPU at one thread;
        with more threads they differ in the last digits anyway, and the batched
        mean saves ~10% of an epoch: docs/launchers.md). `generic`: None = the
        fast path when the model is on it (FAST_PATH), True = the generic path
        whatever the model (tests compare the two)."""
        self.trainings, self.runs = trainings, runs
        template = self.template = trainings[0].model
        self.generic = bool(generic) or not on_fast_path(template)
        # the fast path walks the MLP's layers; the generic path calls the module
        self.modules = [] if self.generic else list(template)
        self.batch_norm = has_batch_norm(template)
        params, buffers = stack_module_state([t.model for t in trainings])
        self.params = {
            n: p.detach().clone().requires_grad_() for n, p in params.items()
        }
        self.buffers = {n: b.clone() for n, b in buffers.items()}
        device = next(iter(self.params.values())).device
        self.names = list(self.params)
        if exact_losses is None:
            exact_losses = device.type == "cpu" and torch.get_num_threads() == 1
        self.exact_losses = exact_losses

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        self.neg_lr = column([-run.optim.lr for run in runs])
        self.momentum = column([run.optim.momentum for run in runs])
        self.weight_decay = column([run.optim.weight_decay for run in runs])
        self.nesterov = runs[0].optim.nesterov
        self.uses_momentum = bool(runs[0].optim.momentum)
        self.uses_decay = bool(runs[0].optim.weight_decay)
        self.momentum_buffers = self._stacked_momentum()
        self.use_graphs = (
            device.type == "cuda" and not exact_losses and not self.generic
        )  # the generic path runs eagerly
        self._fresh_program()

    def _fresh_program(self) -> None:
        """The epoch's sums and the CUDA graph, for the runs now in the cohort."""
        k, device = len(self.trainings), self.neg_lr.device
        self.loss_sum = torch.zeros(k, device=device)
        self.correct = torch.zeros(k, dtype=torch.long, device=device)
        self.graph, self.warm_steps, self.static_batch = None, 0, None

    def __len__(self) -> int:
        return len(self.trainings)

    # --- the model, batched ------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, 784) -> logits (K, B, 10); BatchNorm updates the stacked running
        statistics as each run's module would."""
        if self.generic:
            return generic_forward(self.template, self.params, self.buffers, x)
        h = x
        for index, module in enumerate(self.modules):
            weight = self.params.get(f"{index}.weight")
            bias = self.params.get(f"{index}.bias")
            if isinstance(module, nn.Flatten):
                continue  # x comes flat
            if isinstance(module, nn.Linear):  # (K, B, I) -> (K, B, O)
                h = StackedLinear.apply(h, weight, bias)
            elif isinstance(module, nn.BatchNorm1d):
                h = self._batch_norm(index, module, h, weight, bias)
            elif isinstance(module, nn.LayerNorm):  # per run: see the docstring
                h = torch.stack([
                    F.layer_norm(h[k], module.normalized_shape, weight[k], bias[k],
                                 module.eps)
                    for k in range(len(h))
                ])  # fmt: skip
            elif isinstance(module, tuple(ACTIVATIONS.values())):
                h = module(h)  # the activation, elementwise
            else:  # on_fast_path() keeps other modules off this path
                raise TypeError(f"the fast path has no stacked {type(module).__name__}")
        return h

    def _batch_norm(self, index, module, h, weight, bias) -> torch.Tensor:
        """Each run's channels side by side: (K, B, C) -> (B, K*C), one batch norm
        with the batch statistics of every run's own channels."""
        k, b, c = h.shape
        mean = self.buffers[f"{index}.running_mean"]  # (K, C), updated in place
        var = self.buffers[f"{index}.running_var"]
        flat = h.transpose(0, 1).reshape(b, k * c)
        out = F.batch_norm(
            flat, mean.view(-1), var.view(-1), weight.reshape(-1), bias.reshape(-1),
            True, module.momentum, module.eps,
        )  # fmt: skip
        self.buffers[f"{index}.num_batches_tracked"].add_(1)
        return out.view(b, k, c).transpose(0, 1).contiguous()

    # --- one epoch ----------------------------------------------------------------

    def train_epoch(
        self,
        data: FashionData,
        batch_size: int,
        drop_last: bool,
        on_step: Optional[Callable[[], None]] = None,
    ) -> tuple[list[float], list[float]]:
        """One shuffled pass per run (each its own order); (mean batch loss,
        accuracy) per run, as train_one_epoch computes them alone."""
        images, labels = data.train_images, data.train_labels
        n, device = len(labels), images.device
        self.template.train()  # as train_one_epoch: evaluation left it in eval mode
        orders = torch.stack([
            epoch_order(n, batch_size, t.generator, device, drop_last)
            for t in self.trainings
        ])  # (K, n')  # fmt: skip
        self.loss_sum.zero_()
        self.correct.zero_()
        steps = seen = 0
        for start in range(0, orders.shape[1], batch_size):
            batch = orders[:, start : start + batch_size]  # (K, B)
            if batch.shape[1] == 1 and self.batch_norm:
                continue  # BatchNorm cannot train on one sample (as alone)
            if self.use_graphs and batch.shape[1] == batch_size:
                self._graphed_step(batch, images, labels)
            else:  # the last, smaller batch (or no CUDA)
                self._step_and_count(batch, images, labels)
            steps, seen = steps + 1, seen + batch.shape[1]
            if on_step is not None:
                on_step()
        # as train_one_epoch: the float32 sum, then a Python division
        return (
            [total / steps for total in self.loss_sum.tolist()],
            [right / seen for right in self.correct.tolist()],
        )

    def _step_and_count(self, batch, images, labels) -> None:
        """One step of every run on its (K, B) batch indices, adding its losses and
        correct predictions to the epoch's sums."""
        k, b = batch.shape
        flat = batch.reshape(-1)
        sample = images.shape[1:] if self.generic else (-1,)  # the fast path: flat
        x = images.index_select(0, flat).view(k, b, *sample)  # (K, B, 784) flat
        y = labels.index_select(0, flat).view(k, b)  # (K, B)
        losses, logits = self.step(x, y)
        self.loss_sum += losses
        self.correct += (logits.argmax(dim=2) == y).sum(dim=1)

    def _graphed_step(self, batch, images, labels) -> None:
        """_step_and_count replayed from a CUDA graph: a few eager steps on a side
        stream first (they are real steps: the same kernels as the graph's), then one
        capture, then one replay per step with the batch copied in."""
        if self.graph is None:
            if self.warm_steps < 3:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._step_and_count(batch, images, labels)
                torch.cuda.current_stream().wait_stream(side)
                self.warm_steps += 1
                return
            self.static_batch = batch.clone()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records; runs nothing yet
                self._step_and_count(self.static_batch, images, labels)
        self.static_batch.copy_(batch)
        self.graph.replay()

    def step(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and the SGD update of every run; (loss per run, logits)."""
        if x.shape[1] == 1:
            return self._step_per_run(x, y)
        logits = self.forward(x)  # (K, B, 10)
        k, b, classes = logits.shape
        per_sample = F.cross_entropy(
            logits.reshape(k * b, classes), y.reshape(-1), reduction="none"
        ).view(k, b)
        losses = per_sample.mean(dim=1)  # (K,): the gradient is each run's own
        grads = torch.autograd.grad(losses.sum(), [self.params[n] for n in self.names])
        self._update(grads)
        with torch.no_grad():
            if self.exact_losses:
                detached = logits.detach()
                losses = torch.stack([F.cross_entropy(detached[i], y[i])
                                      for i in range(k)])  # fmt: skip
            return losses.detach(), logits.detach()

    def _step_per_run(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """step() for a batch of one sample (an epoch's last, e.g. 2001 samples in
        batches of 50), each run through its own module's forward and backward: with
        one sample torch.mm and torch.bmm round differently (a matrix-vector
        product), so the batched form would differ from the run alone in the last
        digits. BatchNorm never trains on one sample; these models have no buffers
        to update."""
        template = self.trainings[0].model
        losses, logits, grads = [], [], []
        for k in range(len(self)):
            params = {
                n: self.params[n][k].detach().requires_grad_() for n in self.names
            }
            buffers = {n: b[k] for n, b in self.buffers.items()}
            out = functional_call(template, {**params, **buffers}, (x[k],))  # (1, 10)
            loss = F.cross_entropy(out, y[k])
            grads.append(torch.autograd.grad(loss, [params[n] for n in self.names]))
            losses.append(loss.detach())
            logits.append(out.detach())
        self._update([torch.stack(per_run) for per_run in zip(*grads)])
        return torch.stack(losses), torch.stack(logits)

    @torch.no_grad()
    def _update(self, grads) -> None:
        """torch.optim.SGD's update per run, each with its own lr, momentum and weight
        decay (a per-run scalar as a (K, 1, ...) tensor gives the same roundings)."""
        for name, grad in zip(self.names, grads):
            param = self.params[name]
            shape = (len(self), *[1] * (param.dim() - 1))
            if self.uses_decay:
                grad = grad.addcmul(param, self.weight_decay.view(shape))
            if self.uses_momentum:
                buffer = self.momentum_buffers.get(name)
                if buffer is None:
                    buffer = self.momentum_buffers[name] = grad.clone()
                else:
                    buffer.mul_(self.momentum.view(shape)).add_(grad)
                grad = (
                    grad.addcmul(buffer, self.momentum.view(shape))
                    if self.nesterov
                    else buffer
                )
            param.addcmul_(grad, self.neg_lr.view(shape))

    # --- to and from the runs' own objects -----------------------------------------

    def _stacked_momentum(self) -> dict[str, torch.Tensor]:
        """The optimizers' momentum buffers, stacked (none before the first step)."""
        if not self.uses_momentum:
            return {}
        stacked = {}
        for name in self.names:
            buffers = []
            for training in self.trainings:
                param = dict(training.model.named_parameters())[name]
                buffers.append(training.optimizer.state.get(param, {}).get(
                    "momentum_buffer"))  # fmt: skip
            if all(b is not None for b in buffers):
                stacked[name] = torch.stack(buffers)
            elif any(b is not None for b in buffers):
                raise ValueError("the runs of a cohort must be at the same step")
        return stacked

    @torch.no_grad()
    def write_back(self) -> None:
        """Each run's weights, BatchNorm statistics and momentum into its own model
        and optimizer (what evaluation and its checkpoint read)."""
        for k, training in enumerate(self.trainings):
            named = dict(training.model.named_parameters())
            for name, param in named.items():
                param.copy_(self.params[name][k])
                if name in self.momentum_buffers:
                    state = training.optimizer.state.setdefault(param, {})
                    state["momentum_buffer"] = self.momentum_buffers[name][k].clone()
            for name, buffer in training.model.named_buffers():
                buffer.copy_(self.buffers[name][k])

    def keep(self, indices: list[int]) -> None:
        """Go on with only these runs (the others diverged or finished)."""
        select = torch.tensor(indices, device=self.neg_lr.device)
        self.trainings = [self.trainings[i] for i in indices]
        self.runs = [self.runs[i] for i in indices]
        self.params = {
            n: p.detach().index_select(0, select).requires_grad_()
            for n, p in self.params.items()
        }
        self.buffers = {n: b.index_select(0, select) for n, b in self.buffers.items()}
        self.momentum_buffers = {
            n: b.index_select(0, select) for n, b in self.momentum_buffers.items()
        }
        self.neg_lr = self.neg_lr.index_select(0, select)
        self.momentum = self.momentum.index_select(0, select)
        self.weight_decay = self.weight_decay.index_select(0, select)
        self._fresh_program()


def train_cohort(
    runs: list[RunSettings],
    trainings: list[Training],
    data: FashionData,
    records: list[list[dict]],
    on_epoch: Optional[Callable[[int, list[dict], bool], Optional[bool]]] = None,
    exact_losses: Optional[bool] = None,
    on_step: Optional[Callable[[], None]] = None,
    generic: Optional[bool] = None,
    saving: Callable[[], ContextManager] = nullcontext,
) -> list[str]:
    """train_epochs for K runs at the same epoch: each epoch trained at once, then
    every run evaluated by the single-run path's own evaluate_epoch; records[k] grows
    by one record per epoch and on_epoch(k, records[k], diverged) is called. A run
    that diverges stops there and leaves the cohort, and so does one for which
    on_epoch returns False (STOPPED); the others go on unchanged.
    Each run's `seconds` is its share of the cohort's training time plus its own
    evaluation. on_step() is called after every step of the cohort. Returns
    COMPLETE or DIVERGED per run. `generic`: see Cohort. An epoch's on_epoch calls
    run within one `saving()` block (the job files' writes made durable together)."""
    run = runs[0]  # cohort_key: what the runs share
    statuses = [COMPLETE] * len(runs)
    active = list(range(len(runs)))
    cohort = Cohort(list(trainings), list(runs), exact_losses, generic)
    for epoch in range(len(records[0]) + 1, run.epochs + 1):
        start = time.perf_counter()
        losses, accuracies = cohort.train_epoch(
            data, run.batch_size, run.drop_last, on_step
        )
        cohort.write_back()
        share = (time.perf_counter() - start) / len(active)
        going_on = []
        with saving():  # every run's files of the epoch
            for position, k in enumerate(active):
                evaluation_start = time.perf_counter()
                evaluated = evaluate_epoch(runs[k], trainings[k].model, data)
                seconds = share + time.perf_counter() - evaluation_start
                train_loss = losses[position]
                records[k].append({
                    "epoch": epoch, "train_loss": train_loss,
                    "train_acc": accuracies[position], "seconds": seconds, **evaluated,
                })  # fmt: skip
                diverged = is_diverged(train_loss, runs[k].divergence_loss)
                go_on = on_epoch(k, records[k], diverged) if on_epoch else None
                if diverged:
                    statuses[k] = DIVERGED
                elif go_on is False:  # its caller stopped it (e.g. it cannot be saved)
                    statuses[k] = STOPPED
                else:
                    going_on.append(position)
        if len(going_on) < len(active):
            active = [active[p] for p in going_on]
            if not active:
                break
            cohort.keep(going_on)
    return statuses
