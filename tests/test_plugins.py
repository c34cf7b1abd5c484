"""Normalisation plug-ins (model.norm._target_): built from config by Hydra's
instantiate, checked at set-up, trained by both launchers (cohorts through the
generic vmap path), measured, aggregated, and kept apart from the built-ins'
identities."""

import dataclasses
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from fashionbn import api
from fashionbn.analysis.arms import describe_models, split_networks
from fashionbn.analysis.protocol import batch_norm_runs, evaluated
from fashionbn.analysis.report import gap_lines, split_network_warning
from fashionbn.analysis.table import AggregateError
from fashionbn.config import ConfigError, FashionbnError
from fashionbn.config.settings import run_identity, run_settings
from fashionbn.config.validation import check_config
from fashionbn.core.batched import Cohort, train_cohort
from fashionbn.core.model import build_model, checked_model, count_parameters
from fashionbn.core.stacking import on_fast_path, stacking_problem, unsupported
from fashionbn.core.train import (
    checked_data,
    start_training,
    torch_threads,
    train_and_evaluate,
)
from tests.conftest import compose_config, run_module, without_seconds
from tests.test_batched import KINDS, configs

CPU = torch.device("cpu")


def test_groupnorm_and_rmsnorm_are_torchs_layers_at_every_hidden_width() -> None:
    gn = build_model(compose_config(["model=groupnorm"]).model)
    assert [type(m).__name__ for m in gn] == [
        "Flatten", "Linear", "GroupNorm", "ReLU", "Linear", "GroupNorm", "ReLU",
        "Linear",
    ]  # fmt: skip
    assert [(m.num_groups, m.num_channels) for m in gn if isinstance(m, nn.GroupNorm)]\
        == [(4, 64), (4, 32)]  # fmt: skip
    # baseline 52,650 + a weight and a bias per unit of both hidden layers
    assert count_parameters(gn) == 52_650 + 2 * (64 + 32)
    rms = build_model(compose_config(["model=rmsnorm", "model.hidden=[16]"]).model)
    (layer,) = [m for m in rms if isinstance(m, nn.RMSNorm)]
    assert layer.normalized_shape == (16,) and layer.eps == 1e-5
    after = build_model(
        compose_config(["model=groupnorm", "model.norm_placement=after"]).model
    )
    assert [type(m).__name__ for m in after][1:4] == ["Linear", "ReLU", "GroupNorm"]


def test_built_in_models_keep_their_identities() -> None:
    """The identities older job dirs hold (hand-written): a plug-in mechanism must
    not rename or re-null any built-in key."""
    common = {"activation": "relu", "hidden": [64, 32], "init": "default",
              "init_std": None}  # fmt: skip
    expected = {
        "baseline": {"norm": "none", "bn_momentum": None, "norm_eps": None,
                     "norm_placement": None},
        "batchnorm": {"norm": "batchnorm", "bn_momentum": 0.1, "norm_eps": 1e-5,
                      "norm_placement": "before"},
        "batchnorm_after": {"norm": "batchnorm", "bn_momentum": 0.1,
                            "norm_eps": 1e-5, "norm_placement": "after"},
        "layernorm": {"norm": "layernorm", "bn_momentum": None, "norm_eps": 1e-5,
                      "norm_placement": "before"},
    }  # fmt: skip
    for name, keys in expected.items():
        model = run_identity(compose_config([f"model={name}"]))["model"]
        assert model == {**common, **keys, "name": name}, name


def test_a_plugins_identity_is_its_target_and_arguments() -> None:
    identity = run_identity(compose_config(["model=groupnorm"]))
    assert identity["model"]["norm"] == {
        "_target_": "torch.nn.GroupNorm", "num_groups": 4, "eps": 1e-5,
    }  # fmt: skip
    # its placement applies; the built-ins' eps and momentum do not
    assert identity["model"]["norm_placement"] == "before"
    assert identity["model"]["norm_eps"] is None
    assert identity["model"]["bn_momentum"] is None
    other = run_identity(compose_config(["model=groupnorm", "model.norm.num_groups=8"]))
    assert other != identity
    ignored = compose_config(["model=groupnorm", "model.bn_momentum=0.5"])
    assert run_identity(ignored) == identity
    check_config(ignored)  # not applicable: not validated either


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.norm=groupnorm"], "model.norm=groupnorm: not a built-in"),
        (["model=groupnorm", "model.norm._target_=nowhere.Norm"],
         "model.norm._target_=nowhere.Norm: Error locating target 'nowhere.Norm'"),
        (["model=groupnorm", "model.norm.num_groups=5"],
         "for a layer of 64 units: num_channels (64) must be divisible by "
         "num_groups (5)"),
        (["model=groupnorm", "model.norm._target_=builtins.len"],
         "model.norm._target_=builtins.len for a layer of 64 units"),
        (["model.norm={_target_:torch.nn.LazyBatchNorm1d}"],  # eps is no width
         "model.norm._target_=torch.nn.LazyBatchNorm1d takes no layer width: its "
         "first parameter (eps) has a default"),
        (["model=groupnorm", "+model.norm.device={_target_:os.system,_args_:[ls]}"],
         "Target 'os.system' is blocklisted because it allows config data to control "
         "executable behavior"),  # Hydra's whole message, on one line
        (["model=groupnorm", "model.norm._target_=torch.nn.Identity",
          "model.norm.num_groups=1"], None),
        (["model=rmsnorm", "model.norm._target_=torch.nn.Linear", "~model.norm.eps",
          "+model.norm.out_features=3"],  # another width out: the next layer fails
         "model.norm: torch.nn.Linear fails on a batch of 4"),
    ],
)  # fmt: skip
def test_a_plugin_that_cannot_work_is_one_line_at_set_up(overrides, expected) -> None:
    cfg = compose_config(overrides)
    if expected is None:  # Identity(width, num_groups=1) takes any argument
        checked_model(cfg.model)
        return
    with pytest.raises(ConfigError) as caught:
        check_config(cfg)
        checked_model(cfg.model)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value) and "HYDRA_FULL_ERROR" not in str(caught.value)


def test_checking_a_plugin_draws_no_random_number() -> None:
    cfg = compose_config(["model=groupnorm"])
    model = build_model(cfg.model)  # draws (Linear's init): before the snapshot
    before = torch.get_rng_state()
    checked_model(cfg.model)
    assert stacking_problem([model, model]) is None
    assert unsupported(run_settings(cfg)) is None
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("extra", KINDS.values(), ids=KINDS.keys())
def test_the_fast_path_equals_the_generic_path_on_every_built_in_kind(
    extra, real_data_root
) -> None:
    """The hand-written forward pass (allowlisted) against the module itself
    vmapped: the same training to float32 rounding after an epoch at lr 0.01.
    (Later epochs can drift apart in some kinds: BatchNorm after a ReLU amplifies
    last digits; measured on bn-after-nesterov at lr 0.1, the fast path at 2 threads
    moves its weights 30x further from itself at 1 thread than the generic path
    does. The generic path over several epochs, BatchNorm included, is checked
    against runs alone below.)"""
    cfgs = configs(real_data_root, extra, lrs=(0.01,), seeds=(0, 1), epochs=1)
    assert on_fast_path(build_model(cfgs[0].model))
    data = checked_data(run_settings(cfgs[0]), None, CPU)
    results = {}
    with torch_threads(1):
        for generic in (False, True):
            trainings = [start_training(run_settings(cfg), CPU) for cfg in cfgs]
            records = [[] for _ in cfgs]
            train_cohort(
                [run_settings(c) for c in cfgs],
                trainings,
                data,
                records,
                generic=generic,
            )
            results[generic] = (records, trainings)
    for fast, slow in zip(*[results[g][0] for g in (False, True)]):
        for a, b in zip(without_seconds(fast), without_seconds(slow)):
            for key, value in a.items():
                if isinstance(value, float):
                    assert math.isclose(value, b[key], rel_tol=1e-4, abs_tol=1e-4), key
    for a, b in zip(*[results[g][1] for g in (False, True)]):
        for (name, x), y in zip(a.model.state_dict().items(),
                                b.model.state_dict().values()):  # fmt: skip
            assert torch.allclose(x.double(), y.double(), atol=1e-4), name


PLUGIN_KINDS = {
    "groupnorm": ["model=groupnorm"],
    "rmsnorm": ["model=rmsnorm"],
    # a BatchNorm off the fast path: the generic path's running statistics, and
    # train mode again after each epoch's evaluation
    # torch's own layers, set up otherwise than the fast path computes them
    "batchnorm-no-affine": [
        "model=groupnorm", "model.norm._target_=torch.nn.BatchNorm1d",
        "~model.norm.num_groups", "+model.norm.affine=false",
    ],
    "batchnorm-batch-statistics-only": [
        "model=groupnorm", "model.norm._target_=torch.nn.BatchNorm1d",
        "~model.norm.num_groups", "+model.norm.track_running_stats=false",
    ],
    "layernorm-no-bias": [
        "model=rmsnorm", "model.norm._target_=torch.nn.LayerNorm",
        "+model.norm.bias=false",
    ],
    "subclassed-batchnorm": [
        "model=groupnorm", "model.norm._target_=tests.test_plugins.SubclassedBatchNorm",
        "~model.norm.num_groups", "data.val_size=100", "precise_bn=true",
    ],
}  # fmt: skip


@pytest.mark.parametrize("extra", PLUGIN_KINDS.values(), ids=PLUGIN_KINDS.keys())
def test_a_plugin_cohort_trains_each_run_as_alone(extra, real_data_root) -> None:
    """3 epochs, momentum: each run of the cohort as it trains alone."""
    cfgs = configs(real_data_root, [*extra, "optim.momentum=0.9"], lrs=(0.05,),
                   epochs=3)  # fmt: skip
    assert unsupported(run_settings(cfgs[0])) is None  # it joins a cohort
    assert not on_fast_path(build_model(cfgs[0].model))
    records, alone, statuses = cohort_and_alone(cfgs)
    assert statuses == ["complete", "complete"]
    assert records[0] != records[1]  # two seeds: two runs
    assert_records_close(records, alone, rel_tol=1e-4, abs_tol=1e-5)


def cohort_and_alone(cfgs) -> tuple[list, list, list]:
    """(each run's records trained in one cohort, the same runs trained alone, the
    cohort's statuses), at one thread."""
    with torch_threads(1):
        alone = [without_seconds(train_and_evaluate(cfg)) for cfg in cfgs]
        data = checked_data(run_settings(cfgs[0]), None, CPU)
        trainings = [start_training(run_settings(cfg), CPU) for cfg in cfgs]
        records = [[] for _ in cfgs]
        statuses = train_cohort(
            [run_settings(c) for c in cfgs], trainings, data, records
        )
    return [without_seconds(run) for run in records], alone, statuses


def assert_records_close(records, alone, rel_tol: float, abs_tol: float) -> None:
    """Every value of every epoch as alone: the same keys, None where alone has
    None (no validation split), numbers within the tolerances."""
    for run, single in zip(records, alone):
        assert len(run) == len(single)
        for a, b in zip(run, single):
            assert a.keys() == b.keys()
            for key in a:
                if a[key] is None or b[key] is None:
                    assert a[key] is b[key], key
                    continue
                assert math.isclose(a[key], b[key], rel_tol=rel_tol,
                                    abs_tol=abs_tol), key  # fmt: skip


class SubclassedBatchNorm(nn.BatchNorm1d):
    """A user's BatchNorm: a subclass is a BatchNorm too."""


@pytest.mark.parametrize(
    "target", ["torch.nn.BatchNorm1d", "tests.test_plugins.SubclassedBatchNorm"]
)
def test_a_batchnorm_plugin_trains_as_the_built_in_batchnorm(target, real_data_root):
    """BatchNorm1d (or a subclass) by _target_ is a BatchNorm: it skips one-sample
    batches (1025 samples in batches of 64) and gets precise statistics, bit for
    bit as model=batchnorm."""
    base = [f"data.root={real_data_root}", "data.train_size=1025",
            "data.val_size=100", "data.test_size=200", "device=cpu", "threads=1",
            "epochs=2", "precise_bn=true", "optim.lr=0.1"]  # fmt: skip
    built_in = compose_config([*base, "model=batchnorm"])
    plugin = compose_config([*base, "model=groupnorm", "+model.norm.momentum=0.1",
                             f"model.norm._target_={target}",
                             "~model.norm.num_groups"])  # fmt: skip
    with torch_threads(1):
        expected = without_seconds(train_and_evaluate(built_in))
        got = without_seconds(train_and_evaluate(plugin))
    assert expected[0]["test_acc_precise"] is not None
    assert got == expected


class ItemNorm(nn.Module):
    """Scales by a Python float of its input's mean: data-dependent control that
    vmap cannot stack (.item())."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, x):
        return x / (1.0 + abs(x.mean().item()))


class AliasNorm(nn.Module):
    """Reads its weight through a plain list: functional_call swaps the registered
    parameter, not the alias, so stacked every run would use the template's."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.alias = [self.weight]

    def forward(self, x):
        return x * self.alias[0]


class MaskNorm(nn.Module):
    """Keeps a random mask as a plain attribute, not a buffer: each run's differs,
    and stacked every run would use the first run's."""

    def __init__(self, width: int):
        super().__init__()
        self.mask = (torch.rand(width) > 0.5).float()

    def forward(self, x):
        return x * self.mask


def test_a_module_that_computes_otherwise_stacked_runs_alone() -> None:
    def mlp(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 8), AliasNorm(8),
                             nn.ReLU(), nn.Linear(8, 10))  # fmt: skip

    otherwise = "its model computes otherwise when stacked for a cohort"
    assert stacking_problem([mlp(0), mlp(1)]) == otherwise
    # by config: two runs' models are built (seeds 0 and 1) and compared
    cfg = compose_config(
        ["model=groupnorm", "model.norm._target_=tests.test_plugins.MaskNorm",
         "~model.norm.num_groups", "~model.norm.eps"]
    )  # fmt: skip
    assert unsupported(run_settings(cfg)) == otherwise


def test_a_module_vmap_cannot_stack_runs_alone_with_its_reason() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), ItemNorm(8), nn.ReLU(),
                          nn.Linear(8, 10))  # fmt: skip
    assert not on_fast_path(model)
    problem = stacking_problem([model, model])
    assert problem is not None and "cannot be stacked for a cohort" in problem
    # by config: the launcher's set-up check gives the job its line (run_alone)
    cfg = compose_config(
        ["model=groupnorm", "model.norm._target_=tests.test_plugins.ItemNorm",
         "~model.norm.num_groups", "~model.norm.eps"]
    )  # fmt: skip
    assert "cannot be stacked for a cohort" in unsupported(run_settings(cfg))


def test_a_plugins_integer_argument_is_described_as_written() -> None:
    """A column other models leave empty holds floats (4 -> 4.0 in pandas); the
    report's description of each arm writes the argument as the YAML has it."""
    runs = pd.DataFrame({
        "run": ["a", "b"], "model": ["baseline", "groupnorm"],
        "model.norm": ["none", None], "model.norm.num_groups": [None, 4],
        "model.norm.eps": [None, 1e-5],
    })  # fmt: skip
    assert runs["model.norm.num_groups"].iloc[1] == 4.0  # pandas made it a float
    described = describe_models(runs, ["model"])["groupnorm"]
    assert described["model.norm.num_groups"] == 4
    assert type(described["model.norm.num_groups"]) is int
    assert described["model.norm.eps"] == 1e-5
    assert "model.norm.num_groups" not in describe_models(runs, ["model"])["baseline"]


def test_load_model_builds_only_torch_plugins_from_a_dir_unless_trusted(
    real_data_root, tmp_path
) -> None:
    overrides = [f"data.root={real_data_root}", "data.train_size=256",
                 "data.test_size=100", "epochs=1", "device=cpu", "threads=1",
                 "model=groupnorm"]  # fmt: skip
    api.train(api.config(overrides), tmp_path / "gn")
    model = api.load_model(tmp_path / "gn")
    assert sum(isinstance(m, nn.GroupNorm) for m in model) == 2
    # the same run, but its stored target is code the dir chooses
    api.train(api.config([*overrides,
                          "model.norm._target_=tests.test_plugins.ScaledGroupNorm"]),
              tmp_path / "mine")  # fmt: skip
    with pytest.raises(FashionbnError, match="trust_plugins=True"):
        api.load_model(tmp_path / "mine")
    model = api.load_model(tmp_path / "mine", trust_plugins=True)
    # (imported by its dotted name: a module object apart from pytest's own)
    assert [type(m).__name__ for m in model].count("ScaledGroupNorm") == 2
    # a torch.nn target whose argument is code: Hydra would build the nested
    # _target_ too, so it is refused, and nothing of it runs
    marker = tmp_path / "called"
    os.environ["FASHIONBN_TEST_MARKER"] = str(marker)
    try:
        nested = "+model.norm.device={_target_:tests.test_plugins.cpu_device}"
        api.train(api.config([*overrides, nested]), tmp_path / "nested")
        assert marker.exists()  # training built it (the user's own command)
        marker.unlink()
        with pytest.raises(FashionbnError, match="passes 'device'="):
            api.load_model(tmp_path / "nested")
        assert not marker.exists()
        assert (
            sum(
                isinstance(m, nn.GroupNorm)
                for m in api.load_model(tmp_path / "nested", trust_plugins=True)
            )
            == 2
        )
        assert marker.exists()
    finally:
        del os.environ["FASHIONBN_TEST_MARKER"]
    for bad in (
        {"_target_": "torch.nn.GroupNorm", "_args_": [4]},
        {"_target_": "torch.nn.init"},
        {"_target_": "torch.nn.functional.relu"},
        {"_target_": "os.system"},
        {"_target_": "torch.nn.GroupNorm", "x": [{"_target_": "os.system"}]},
    ):
        assert api.untrusted_plugin(bad) is not None, bad
    assert api.untrusted_plugin({"_target_": "torch.nn.RMSNorm", "eps": None}) is None


def cpu_device() -> str:
    """A nested target (a plug-in's argument built by Hydra); records each call."""
    with open(os.environ["FASHIONBN_TEST_MARKER"], "a") as marker:
        marker.write("called")
    return "cpu"


class ScaledGroupNorm(nn.GroupNorm):
    """A user's subclass: off the fast path, so cohorts take the generic path."""


def test_a_cumulative_batchnorm_runs_alone() -> None:
    """momentum=null (a cumulative average: a Python float of a buffer) cannot be
    stacked: the job runs alone, not a failure mid-sweep."""
    cfg = compose_config(
        [
            "model=groupnorm",
            "model.norm._target_=torch.nn.BatchNorm1d",
            "~model.norm.num_groups",
            "+model.norm.momentum=null",
        ]
    )
    assert not on_fast_path(build_model(cfg.model))
    assert "cannot be stacked for a cohort (vmap:" in unsupported(run_settings(cfg))


def test_a_subclass_of_a_fast_layer_takes_the_generic_path() -> None:
    cfg = compose_config(
        ["model=groupnorm", "model.norm._target_=tests.test_plugins.ScaledGroupNorm"]
    )
    model = build_model(cfg.model)
    assert not on_fast_path(model)
    sub = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), type("B", (nn.BatchNorm1d,),
                        {})(8), nn.ReLU(), nn.Linear(8, 10))  # fmt: skip
    assert not on_fast_path(sub)
    assert on_fast_path(build_model(compose_config(["model=batchnorm"]).model))
    gn = compose_config(["model=groupnorm"])
    assert Cohort(
        [start_training(run_settings(gn), CPU)], [run_settings(gn)], exact_losses=True
    ).generic


def test_the_help_lists_the_plug_in_models(tmp_path: Path) -> None:
    result = run_module(["fashionbn.run", "--help"], tmp_path)
    line = next(
        line for line in result.stdout.splitlines() if line.strip().startswith("model:")
    )
    assert "groupnorm" in line and "rmsnorm" in line


def test_precise_evaluation_counts_a_batchnorm_plugin_as_batchnorm() -> None:
    """--metric precise swaps in precise statistics for every BatchNorm run, a
    plug-in's included (by its target's class name, or by what it recorded), and
    refuses a BatchNorm plug-in that recorded none."""
    frame = pd.DataFrame({
        "run": ["bn", "plugin", "gn", "mine"],
        "model.norm": ["batchnorm", None, None, None],
        "model.norm._target_": [None, "torch.nn.BatchNorm1d", "torch.nn.GroupNorm",
                                "my_norms.Odd"],
        "test_acc": [0.5, 0.6, 0.7, 0.8], "test_acc_precise": [0.51, 0.61, None, 0.81],
        "test_loss": [1.0, 1.0, 1.0, 1.0], "test_loss_precise": [0.9, 0.8, None, 0.7],
        "val_acc": [None] * 4, "val_acc_precise": [None] * 4,
        "val_loss": [None] * 4, "val_loss_precise": [None] * 4,
    })  # fmt: skip
    assert batch_norm_runs(frame).tolist() == [True, True, False, True]
    swapped = evaluated(frame, "precise")
    assert swapped["test_acc"].tolist() == [0.51, 0.61, 0.7, 0.81]
    assert swapped["test_loss"].tolist() == [0.9, 0.8, 1.0, 0.7]
    frame.loc[1, "test_acc_precise"] = None
    with pytest.raises(AggregateError, match="e.g. plugin"):
        evaluated(frame, "precise")


def test_one_model_name_for_several_networks_is_reported() -> None:
    """An override that makes some runs of one name another network (model=
    batchnorm model.norm=layernorm added to a sweep) is named, with the keys; a key
    swept for every model, or a plug-in's argument swept for its own model, is
    not."""

    def runs(rows: list[tuple]) -> pd.DataFrame:
        columns = [
            "run",
            "model",
            "model.norm",
            "model.hidden",
            "model.norm.num_groups",
        ]
        return pd.DataFrame(rows, columns=columns)

    mixed = runs([("a", "baseline", "none", "[64]", None),
                  ("b", "batchnorm", "batchnorm", "[64]", None),
                  ("c", "batchnorm", "layernorm", "[64]", None)])  # fmt: skip
    assert split_networks(mixed) == {"batchnorm": ["model.norm"]}
    swept = runs([("a", "baseline", "none", "[64]", None),
                  ("b", "baseline", "none", "[128]", None),
                  ("c", "batchnorm", "batchnorm", "[64]", None),
                  ("d", "batchnorm", "batchnorm", "[128]", None)])  # fmt: skip
    assert split_networks(swept) == {}
    groups = runs([("a", "baseline", "none", "[64]", None),
                   ("b", "groupnorm", None, "[64]", 4),
                   ("c", "groupnorm", None, "[64]", 8)])  # fmt: skip
    assert split_networks(groups) == {}
    text = split_network_warning("batchnorm", ["model.norm"])
    assert text.startswith(
        "model=batchnorm names more than one network (its runs differ in model.norm, "
        "unlike the other models')"
    )
    (line,) = gap_lines(pd.DataFrame(), ["model", "model.norm"], "baseline")
    assert line.endswith("with matching seeds within a group of equal model.norm.")


def test_a_sweep_checks_each_model_once(monkeypatch) -> None:
    """The set-up check of a model (two stacked copies built and compared) runs once
    per model and data spec in one sweep (deferred_jobs), again for another spec
    or another sweep; its answer is each job's as when checked alone."""
    import fashionbn.core.stacking as stacking
    from fashionbn.jobs.launching import deferred_jobs, sweep_memo

    checked = []
    real = stacking.model_problem
    monkeypatch.setattr(stacking, "model_problem",
                        lambda run: checked.append(run.seed) or real(run))  # fmt: skip
    item = ["model=groupnorm", "model.norm._target_=tests.test_plugins.ItemNorm",
            "~model.norm.num_groups", "~model.norm.eps"]  # fmt: skip
    runs = [run_settings(compose_config([*item, f"seed={s}", f"optim.lr={lr}"]))
            for s, lr in ((0, 0.1), (1, 0.1), (2, 0.5))]  # fmt: skip
    groupnorm = run_settings(compose_config(["model=groupnorm", "seed=3"]))
    assert runs[0].model is runs[1].model  # equal specs: one read-only object
    copied = dataclasses.replace(runs[2], model=OmegaConf.create(
        OmegaConf.to_container(runs[2].model)))  # equal, another object  # fmt: skip
    with deferred_jobs():
        answers = [unsupported(run, sweep_memo())
                   for run in [*runs, groupnorm, copied]]  # fmt: skip
    assert checked == [0, 3]  # ItemNorm once for four jobs, GroupNorm once
    assert answers[4] == answers[0]
    assert all("cannot be stacked for a cohort" in a for a in answers[:3])
    assert answers[3] is None
    with deferred_jobs():
        unsupported(runs[1], sweep_memo())
    assert checked == [0, 3, 1]  # another sweep checks again
    assert unsupported(runs[2], sweep_memo()) == answers[2]  # outside: no memo
    assert checked == [0, 3, 1, 2]
