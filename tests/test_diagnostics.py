"""Diagnostics against independent computations, read-only towards training, and
resumed like everything else."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fashionbn.core.diagnostics import (
    hidden_layers,
    landscape_values,
    measure,
    probe_indices,
)
from fashionbn.core.model import build_model
from fashionbn.core.train import steps_per_epoch
from fashionbn.jobs.files import read_diagnostics, read_metrics
from fashionbn.jobs.job import run_job
from tests.conftest import compose_config, kill_run, without_seconds

STEP_SIZES = [0.5, 1.0, 2.0, 4.0]


def as_dict(rows: list) -> dict:
    return {(layer, quantity): value for layer, quantity, value in rows}


def tiny(
    model_name: str, hidden=(5, 4, 3), seed: int = 0, activation: str = "relu"
) -> tuple:
    """A small model on 4 inputs and 3 classes, and a batch of 16 made-up samples."""
    torch.manual_seed(seed)
    cfg = compose_config([f"model={model_name}", f"model.hidden={list(hidden)}",
                          f"model.activation={activation}"])  # fmt: skip
    model = build_model(cfg.model, input_shape=(4,), num_classes=3)
    x = torch.randn(16, 4) * 2 + 0.5
    y = torch.arange(16) % 3
    return model, x, y


def plain_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.train()
    return F.cross_entropy(model(x), y)


def plain_grads(model: nn.Module, x, y) -> dict:
    """Gradients the ordinary way: .backward() on a deep copy."""
    twin = copy.deepcopy(model)
    twin.zero_grad()
    plain_loss(twin, x, y).backward()
    return {name: p.grad.clone() for name, p in twin.named_parameters()}


def moved_copy(model: nn.Module, direction: dict, eta: float, names=None) -> nn.Module:
    """A deep copy whose parameters (all, or `names`) moved by -eta * direction."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if names is None or name in names:
                p -= eta * direction[name]
    return twin


def test_layer_inputs_of_the_baseline_by_hand() -> None:
    model, x, y = tiny("baseline")
    got = as_dict(measure(model, x, y, 0.1, STEP_SIZES, ics=True))
    linears = [m for m in model if isinstance(m, nn.Linear)]
    h = x.numpy()
    grads = plain_grads(model, x, y)
    for number, linear in enumerate(linears[:-1], start=1):
        w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
        z = h @ w.T + b  # the input to this layer's ReLU
        p15, p50, p85 = np.percentile(z[:, 0], [15, 50, 85])
        assert got[(str(number), "act_in_p15")] == pytest.approx(p15, abs=1e-6)
        assert got[(str(number), "act_in_p50")] == pytest.approx(p50, abs=1e-6)
        assert got[(str(number), "act_in_p85")] == pytest.approx(p85, abs=1e-6)
        assert got[(str(number), "act_in_mean")] == pytest.approx(
            z.mean(axis=0).mean(), abs=1e-6
        )
        assert got[(str(number), "act_in_std")] == pytest.approx(
            z.std(axis=0, ddof=0).mean(), rel=1e-5
        )
        assert got[(str(number), "weight_norm")] == pytest.approx(
            math.sqrt((w**2).sum()), rel=1e-6
        )
        index = list(model).index(linear)
        grad = grads[f"{index}.weight"].numpy()
        assert got[(str(number), "grad_norm")] == pytest.approx(
            math.sqrt((grad**2).sum()), rel=1e-5
        )
        h = np.maximum(z, 0)


def test_the_last_layers_gradient_in_closed_form() -> None:
    """dCE/dW of the output layer is (softmax - onehot)^T h / B."""
    model, x, y = tiny("baseline", hidden=(6,))
    got = as_dict(measure(model, x, y, 0.1, STEP_SIZES, ics=False))
    first, output = model[1], model[3]
    h = torch.relu(x @ first.weight.T + first.bias).detach()
    p = torch.softmax(h @ output.weight.T + output.bias, dim=1).detach()
    delta = (p - F.one_hot(y, 3).float()) / len(y)  # (B, 3)
    grad_hidden = ((delta @ output.weight.detach()) * (h > 0)).T @ x  # (6, 4)
    assert got[("1", "grad_norm")] == pytest.approx(grad_hidden.norm().item(), rel=1e-5)


@pytest.mark.parametrize("model_name", ["batchnorm", "layernorm"])
def test_normalised_layer_inputs_at_step_0(model_name: str) -> None:
    model, x, y = tiny(model_name)
    got = as_dict(measure(model, x, y, 0.1, STEP_SIZES, ics=True))
    for number in ("1", "2", "3"):
        if model_name == "batchnorm":  # each unit: mean 0, std 1 over the batch
            assert got[(number, "act_in_mean")] == pytest.approx(0.0, abs=1e-6)
            assert got[(number, "act_in_std")] == pytest.approx(1.0, abs=1e-3)
        else:  # each sample is normalised over the units: the grand mean is 0 too,
            # but a unit's spread over the batch is not 1
            assert got[(number, "act_in_mean")] == pytest.approx(0.0, abs=1e-6)
            assert got[(number, "act_in_std")] != pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "model_name, activation",
    [("baseline", "relu"), ("batchnorm", "relu"), ("batchnorm_after", "relu"),
     ("layernorm", "relu"), ("layernorm", "tanh"), ("batchnorm", "sigmoid")],
)  # fmt: skip
def test_loss_landscape_and_ics_by_hand(model_name, activation) -> None:
    """Every kind of model: the stacked pass must normalise as each module does."""
    model, x, y = tiny(model_name, activation=activation)
    lr = 0.3
    got = as_dict(measure(model, x, y, lr, STEP_SIZES, ics=True))
    grads = plain_grads(model, x, y)
    names = list(grads)
    g = torch.cat([grads[n].flatten() for n in names])
    losses = [plain_loss(copy.deepcopy(model), x, y).item()]
    changes, betas = [], []
    for size in STEP_SIZES:
        twin = moved_copy(model, grads, size * lr)
        losses.append(plain_loss(copy.deepcopy(twin), x, y).item())
        moved = plain_grads(twin, x, y)
        change = torch.cat([(moved[n] - grads[n]).flatten() for n in names]).norm()
        changes.append(change.item())
        betas.append(change.item() / (size * lr * g.norm().item()))
    # a difference of float32 losses near 1: a few of their ulps (1.2e-7) of noise
    assert got[("all", "loss_range")] == pytest.approx(
        max(losses) - min(losses), abs=5e-7
    )
    assert got[("all", "grad_change")] == pytest.approx(max(changes), rel=1e-5)
    assert got[("all", "beta_smoothness")] == pytest.approx(max(betas), rel=1e-5)
    # ICS of layer 3: layers 1 and 2 (Linear + their norm) take an SGD step first
    layers = hidden_layers(model)
    for number in (2, 3):
        earlier = {
            name
            for layer in layers[: number - 1]
            for module in layer["modules"]
            for name, p in model.named_parameters()
            if any(p is q for q in module.parameters())
        }
        weight = f"{list(model).index(layers[number - 1]['linear'])}.weight"
        after = plain_grads(moved_copy(model, grads, lr, earlier), x, y)[weight]
        before = grads[weight]
        assert got[(str(number), "ics_l2")] == pytest.approx(
            (before - after).norm().item(), rel=1e-4, abs=1e-9
        )
        cos = (before * after).sum() / (before.norm() * after.norm())
        assert got[(str(number), "ics_cos")] == pytest.approx(cos.item(), abs=1e-5)
    assert ("1", "ics_l2") not in got  # nothing comes before layer 1


@pytest.mark.parametrize("where", [0, 1, -1])
def test_a_nan_point_makes_the_landscape_nan_wherever_it_is(where) -> None:
    losses, changes = [1.0, 2.0, 3.5], [0.1, 0.3, 0.2]
    assert dict(landscape_values(losses, changes, [1.0, 2.0, 4.0], 0.5, 2.0)) == {
        "loss_range": 2.5, "grad_change": 0.3,
        "beta_smoothness": pytest.approx(max(0.1 / 1.0, 0.3 / 2.0, 0.2 / 4.0)),
    }  # fmt: skip
    losses[where], changes[where] = math.nan, math.nan
    values = dict(landscape_values(losses, changes, [1.0, 2.0, 4.0], 0.5, 2.0))
    assert all(math.isnan(v) for v in values.values()), values


def test_measuring_reads_the_training_state_only() -> None:
    model, x, y = tiny("batchnorm")
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # a leftover the probe must not touch
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.eval()
    measure(model, x, y, 0.1, STEP_SIZES, ics=True)
    assert not model.training  # the mode is put back
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():  # incl. BN running stats, counts
        assert torch.equal(value, state[key]), key
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


def test_probe_batch_and_steps_per_epoch() -> None:
    assert torch.equal(probe_indices(1000, 8), probe_indices(1000, 8))
    assert len(set(probe_indices(1000, 128).tolist())) == 128
    assert steps_per_epoch(60_000, 64, batch_norm=False) == 938
    assert steps_per_epoch(129, 64, batch_norm=False) == 3
    assert steps_per_epoch(129, 64, batch_norm=True) == 2  # skips the 1-sample batch
    assert steps_per_epoch(130, 64, batch_norm=True) == 3
    # batches of one sample only: BatchNorm has nothing to train on
    assert steps_per_epoch(5, 1, batch_norm=False) == 5
    assert steps_per_epoch(5, 1, batch_norm=True) == 0
    assert steps_per_epoch(1, 64, batch_norm=True) == 0


# --- in a real run -------------------------------------------------------------------


@pytest.fixture
def overrides(small_real_overrides) -> list[str]:
    return [*small_real_overrides, "model=batchnorm", "epochs=3"]


@pytest.mark.slow
def test_diagnostics_change_no_metric(overrides, tmp_path) -> None:
    off = run_job(compose_config(overrides), tmp_path / "off")
    on = run_job(compose_config([*overrides, "diagnostics=on"]), tmp_path / "on")
    assert without_seconds(on) == without_seconds(off)
    rows = read_diagnostics(tmp_path / "on")
    steps = sorted({r["step"] for r in rows})
    every = 32 * 3 // 50  # 2048 samples / 64 = 32 steps per epoch, 3 epochs
    assert steps == list(range(0, 32 * 3 + 1, every))
    assert {r["epoch"] for r in rows if r["step"] == 0} == {0}
    assert {r["epoch"] for r in rows if r["step"] == 32} == {1}
    assert {r["epoch"] for r in rows if r["step"] == 33} <= {2}
    at_0 = {(r["layer"], r["quantity"]): r["value"] for r in rows if r["step"] == 0}
    for layer in ("1", "2"):  # BatchNorm before the ReLU: normalised inputs
        assert at_0[(layer, "act_in_mean")] == pytest.approx(0.0, abs=1e-5)
        assert at_0[(layer, "act_in_std")] == pytest.approx(1.0, abs=1e-3)
    assert not (tmp_path / "off" / "diagnostics.csv").exists()


@pytest.mark.slow
def test_a_resumed_run_has_every_row_exactly_once(overrides, tmp_path, monkeypatch):
    cfg = compose_config([*overrides, "diagnostics=on", "diagnostics.every_steps=5"])
    run_job(cfg, tmp_path / "whole")
    kill_run(cfg, tmp_path / "split", monkeypatch, epochs=1)  # dies in epoch 2
    assert max(r["step"] for r in read_diagnostics(tmp_path / "split")) <= 32
    run_job(cfg, tmp_path / "split")
    assert read_diagnostics(tmp_path / "split") == read_diagnostics(tmp_path / "whole")
    assert without_seconds(read_metrics(tmp_path / "split")) == without_seconds(
        read_metrics(tmp_path / "whole")
    )


@pytest.mark.slow
def test_a_damaged_diagnostics_file_is_restored(overrides, tmp_path, caplog) -> None:
    cfg = compose_config([*overrides, "diagnostics=on"])
    run_job(cfg, tmp_path)
    rows = read_diagnostics(tmp_path)
    text = (tmp_path / "diagnostics.csv").read_text()
    (tmp_path / "diagnostics.csv").write_text(text[: len(text) // 2])
    run_job(cfg, tmp_path)
    assert "restoring it from checkpoint.pt" in caplog.text
    assert read_diagnostics(tmp_path) == rows


def test_a_probe_larger_than_the_train_set_is_refused(tmp_path, tiny_system_dir):
    system_dir, _ = tiny_system_dir
    cfg = compose_config(
        [f"data.system_dir={system_dir}", f"data.root={tmp_path / 'root'}",
         "diagnostics=on", "diagnostics.probe_size=500"]
    )  # fmt: skip
    with pytest.raises(Exception, match="diagnostics.probe_size=500 but the train set"):
        run_job(cfg, tmp_path / "job")
    assert not (tmp_path / "job" / "status.json").exists()
