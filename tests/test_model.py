"""Model invariants that must not drift: layer order, parameter counts, output shape."""

import pytest
import torch
from torch import nn

from fashionbn.core.model import build_model, count_parameters
from tests.conftest import compose_config


def layer_types(model: nn.Module) -> list[type]:
    return [type(m) for m in model]


def test_baseline_is_the_original_architecture() -> None:
    model = build_model(compose_config(["model=baseline"]).model)
    assert layer_types(model) == [
        nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear,
    ]  # fmt: skip
    shapes = [
        (m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)
    ]
    assert shapes == [(784, 64), (64, 32), (32, 10)]
    # 784*64+64 + 64*32+32 + 32*10+10
    assert count_parameters(model) == 52_650


def test_batchnorm_puts_bn_before_each_relu() -> None:
    model = build_model(compose_config(["model=batchnorm"]).model)
    assert layer_types(model) == [
        nn.Flatten,
        nn.Linear, nn.BatchNorm1d, nn.ReLU,
        nn.Linear, nn.BatchNorm1d, nn.ReLU,
        nn.Linear,
    ]  # fmt: skip
    assert [m.num_features for m in model if isinstance(m, nn.BatchNorm1d)] == [64, 32]
    # baseline + 2*(64+32) BN weights and biases; running stats are buffers
    assert count_parameters(model) == 52_842


def test_batchnorm_after_relu_placement() -> None:
    model = build_model(compose_config(["model=batchnorm_after"]).model)
    assert layer_types(model)[1:4] == [nn.Linear, nn.ReLU, nn.BatchNorm1d]
    assert count_parameters(model) == 52_842


def test_bn_hyperparameters_are_overridable() -> None:
    cfg = compose_config(
        ["model=batchnorm", "model.bn_momentum=0.3", "model.norm_eps=0.01"]
    )
    bn = [m for m in build_model(cfg.model) if isinstance(m, nn.BatchNorm1d)]
    assert {(m.momentum, m.eps) for m in bn} == {(0.3, 0.01)}


@pytest.mark.parametrize("model_name", ["baseline", "batchnorm", "batchnorm_after"])
@pytest.mark.parametrize("hidden", [[64, 32], [128, 64, 32], [16]])
def test_any_depth_gives_logits_for_ten_classes(
    model_name: str, hidden: list[int]
) -> None:
    cfg = compose_config([f"model={model_name}", f"model.hidden={hidden}"])
    model = build_model(cfg.model)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [*hidden, 10]
    assert model(torch.rand(5, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("hidden", ["[]", "[64,0]", "[-3]"])
def test_bad_hidden_sizes_are_refused(hidden: str) -> None:
    cfg = compose_config([f"model.hidden={hidden}"])
    with pytest.raises(ValueError, match="model.hidden"):
        build_model(cfg.model)


def test_layernorm_option_normalises_each_sample() -> None:
    model = build_model(compose_config(["model=layernorm"]).model)
    assert layer_types(model) == [
        nn.Flatten,
        nn.Linear, nn.LayerNorm, nn.ReLU,
        nn.Linear, nn.LayerNorm, nn.ReLU,
        nn.Linear,
    ]  # fmt: skip
    assert count_parameters(model) == 52_842  # LayerNorm's weight + bias per unit
    normed = model[:3](torch.rand(5, 28, 28))  # Flatten, Linear, LayerNorm: (5, 64)
    assert torch.allclose(normed.mean(dim=1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(normed.std(dim=1, unbiased=False), torch.ones(5), atol=1e-3)


@pytest.mark.parametrize("name, module", [("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh)])
def test_activation_choice(name: str, module: type) -> None:
    model = build_model(compose_config([f"model.activation={name}"]).model)
    assert layer_types(model) == [
        nn.Flatten, nn.Linear, module, nn.Linear, module, nn.Linear,
    ]  # fmt: skip


def test_normal_init_draws_small_gaussian_weights_and_zero_biases() -> None:
    torch.manual_seed(0)
    cfg = compose_config(["model.init=normal", "model.init_std=0.02",
                          "model.hidden=[256]"])  # fmt: skip
    model = build_model(cfg.model)
    first = model[1]
    assert first.weight.std().item() == pytest.approx(0.02, rel=0.02)  # 200k draws
    assert first.weight.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert (
        torch.count_nonzero(first.bias) == 0 and torch.count_nonzero(model[3].bias) == 0
    )


def test_default_init_is_pytorchs_own() -> None:
    torch.manual_seed(0)
    model = build_model(compose_config([]).model)
    torch.manual_seed(0)
    plain = nn.Linear(784, 64)
    assert torch.equal(model[1].weight, plain.weight)
    assert torch.equal(model[1].bias, plain.bias)
