"""fashionbn.jobs.composing: jobs composed once per config-group choice give what
Hydra composes for each job itself, byte for byte (configs and `.hydra/` files), and
what cannot be derived is composed by Hydra (with Hydra's own error)."""

import copy
import os
import shutil
from pathlib import Path

import pytest
from hydra._internal.callbacks import Callbacks  # (tests may read Hydra's internals)
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the expansion
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, run_job
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf, open_dict

from fashionbn.config.schema import (
    dirname_exclude_keys,
    excluded_from_dirname,
    job_subdir,
)
from fashionbn.jobs.composing import ComposeOnce
from fashionbn.jobs.setting_up import YamlParts, run_job_lean
from tests.conftest import CONF_DIR

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


class Loaders:
    """Hydra's own config loader, a ComposeOnce in front of it, and the master
    config of a multirun command line, as Hydra's multirun makes it."""

    def __init__(self, arguments: list[str], sweep_dir: Path) -> None:
        self.hydra = GlobalHydra.instance().config_loader()
        self.once = ComposeOnce(self.hydra)
        self.once.keep = True  # as the batched launcher has it (it `take`s)
        hydra_args = [f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=batched"]
        self.master = self.hydra.load_configuration(
            "config", [*arguments, *hydra_args], RunMode.MULTIRUN
        )
        parser = OverridesParser.create(config_loader=self.hydra)
        params = self.master.hydra.sweeper.params or {}
        task = [f"{key}={value}" for key, value in params.items()] + arguments
        # Hydra's BasicSweeper's own expansion into jobs (its order, its lines)
        self.jobs = BasicSweeper.split_arguments(parser.parse_overrides(task), None)[0]

    def both(self, job: list[str]):
        """(Hydra's composition, the one ComposeOnce gives the launcher) of one
        job, after the sweeper's check asked ComposeOnce for it."""
        return (self.hydra.load_sweep_config(self.master, job),
                self.once.take(self.master, job))  # fmt: skip


def job_outcome(run, cfg, job_num: int, context: HydraContext, **kw) -> dict:
    """Everything a job's set-up by `run` (Hydra's run_job, or run_job_lean) gives:
    the `.hydra/` files, the JobReturn, and what the task function saw (its config,
    the Hydra config, their flags) and returned; the job dir is then removed."""
    cfg = copy.deepcopy(cfg)  # (each set-up changes the config it is given)
    with open_dict(cfg):
        cfg.hydra.job.id = cfg.hydra.job.num = job_num
    seen = {}

    def task(task_cfg):
        hydra_cfg = HydraConfig.get()
        seen.update(
            task=OmegaConf.to_yaml(task_cfg), hydra=OmegaConf.to_yaml(hydra_cfg),
            subdir=hydra_cfg.sweep.subdir,  # (an interpolation, resolved now)
            env=os.environ.get("FASHIONBN_TEST_ENV"), cwd=os.getcwd(),
            flags=(OmegaConf.is_struct(task_cfg), OmegaConf.is_readonly(task_cfg),
                   OmegaConf.is_readonly(hydra_cfg), "hydra" in task_cfg),
        )  # fmt: skip
        return f"job {job_num}"

    try:
        ret: JobReturn = run(
            task_function=task, config=cfg, job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir", hydra_context=context,
            configure_logging=False, **kw,
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - compared between the two set-ups
        return {"raised": (type(err), str(err)), "seen": seen, "cwd": os.getcwd()}
    out = Path(ret.hydra_cfg.hydra.runtime.output_dir)
    hydra_dir = out / ".hydra"
    files = {p.name: p.read_bytes() for p in sorted(hydra_dir.glob("*"))}
    shutil.rmtree(out)
    try:  # (the Hydra config handed back resolves what a run_job's copy does)
        subdir = ret.hydra_cfg.hydra.sweep.subdir
    except Exception as err:  # noqa: BLE001 - compared between the two set-ups
        subdir = (type(err), str(err))
    returned = {
        "cfg": OmegaConf.to_yaml(ret.cfg),
        "hydra_cfg": OmegaConf.to_yaml(ret.hydra_cfg),
        "subdir": subdir, "overrides": ret.overrides, "working_dir": ret.working_dir,
        "task_name": ret.task_name, "status": ret.status, "value": ret.return_value,
        "types": (type(ret.cfg), type(ret.hydra_cfg)),
    }  # fmt: skip
    return {"files": files, "seen": seen, "returned": returned, "cwd": os.getcwd()}


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_job_of_every_preset_is_composed_and_set_up_as_hydra_does_it(
    preset, hydra_conf, tmp_path
):
    """ComposeOnce's configs equal Hydra's, and run_job_lean sets each job up as
    Hydra's run_job does: the same `.hydra/` files byte for byte, JobReturn and
    job context (the lean set-up's YAML cache warm from the jobs before, as in a
    sweep)."""
    loaders = Loaders([f"experiment={preset}"], tmp_path / "sweep")
    assert len(loaders.jobs) > 1
    for job in loaders.jobs:  # the sweeper checks every job first
        loaders.once.load_sweep_config(loaders.master, job)
    context = HydraContext(config_loader=loaders.hydra, callbacks=Callbacks())
    parts = YamlParts()
    for num, job in enumerate(loaders.jobs):
        plain, once = loaders.both(job)
        assert OmegaConf.to_yaml(once) == OmegaConf.to_yaml(plain), job
        ours = job_outcome(run_job_lean, once, num, context, yaml_parts=parts)
        if len(loaders.jobs) <= 64 or num % 4 == 0:  # (robust's 320: a quarter)
            assert ours == job_outcome(run_job, plain, num, context), job
        assert f"seed={once.seed}" in ours["seen"]["subdir"]  # the job's own dir
    # one composition per config-group choice (the jobs' lines without the values
    # the presets sweep), the other jobs derived
    choices = {tuple(o for o in job if o.split("=")[0] not in VALUES)
               for job in loaders.jobs}  # fmt: skip
    assert loaders.once.composed == len(choices) < len(loaders.jobs)
    assert loaders.once.derived == len(loaders.jobs) - len(choices)


VALUES = {"optim.lr", "seed", "data.drop_last"}


def outcome(compose, job: list[str]):
    """A composition's YAML, or its error's type and message."""
    try:
        return OmegaConf.to_yaml(compose(job))
    except Exception as err:  # noqa: BLE001 - compared between the two loaders
        return type(err), str(err)


@pytest.mark.parametrize(
    "arguments",
    [
        ["model=baseline,groupnorm", "model.hidden=[8],[16,8]", "seed=0,1"],
        ["data=fashion_mnist,digits", "optim.lr=0.1,${seed}", "seed=1,2"],
        ["model=cnn", "+model.args.width=4,8", "seed=0,1"],  # an added key
        ["optim.lr=0.1,0.01", "++optim.lr=0.5"],  # one key twice: the last one wins
        ["model=cnn", "model.args={width:4},{depth:2}"],  # merged into the node
        ["model.norm=none,{_target_:torch.nn.GroupNorm,num_groups:2}", "seed=0,1"],
        ["model.norm=none,batchnorm", "optim=sgd,adam", "optim.lr=1e-3,3"],
        ["seed=0,1", "model.init_std='0.5',0.25", "model.init=normal"],
        ["model.name=a,'b c',null", "seed=0"],
        ["seed=0,1", "optim.lr=0.1,0.2",  # a dir name of one's own choosing
         "hydra.job.config.override_dirname.exclude_keys=[seed]",
         "hydra.job.config.override_dirname.kv_sep=-"],
    ],
)  # fmt: skip
def test_odd_sweeps_are_composed_as_hydra_composes_them(
    arguments, hydra_conf, tmp_path
):
    loaders = Loaders(arguments, tmp_path / "sweep")
    hydra, once = loaders.hydra, loaders.once
    first = [outcome(lambda j: once.load_sweep_config(loaders.master, j), job)
             for job in loaders.jobs]  # fmt: skip
    for job, checked in zip(loaders.jobs, first):
        ours = outcome(lambda j: once.take(loaders.master, j), job)
        assert ours == checked  # the launcher gets what the sweeper checked
        assert ours == outcome(
            lambda j: hydra.load_sweep_config(loaders.master, j), job
        )


def test_jobs_with_the_same_overrides_each_get_their_own_config(hydra_conf, tmp_path):
    """A sweep may give two jobs the same overrides (seed=1,1; optim.lr=0.1,1e-1
    both read 0.1): each job is set up (and changed) on a config of its own."""
    loaders = Loaders(["seed=1,0,1", "optim.lr=0.1,1e-1"], tmp_path / "sweep")
    assert len(loaders.jobs) == 6 and len({tuple(j) for j in loaders.jobs}) == 2
    checked = [loaders.once.load_sweep_config(loaders.master, j) for j in loaders.jobs]
    taken = [loaders.once.take(loaders.master, j) for j in loaders.jobs]
    assert len({id(c) for c in taken}) == 6  # none handed out twice
    assert sorted(map(id, taken)) == sorted(map(id, checked))  # what was checked
    for job, cfg in zip(loaders.jobs, taken):
        assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(
            loaders.hydra.load_sweep_config(loaders.master, job)
        )
    assert loaders.once.take(loaders.master, loaders.jobs[0]) is not taken[0]  # anew
    assert not loaders.once.made


def test_a_value_hydra_refuses_gets_hydras_own_error(hydra_conf, tmp_path):
    loaders = Loaders(["seed=1,abc", "model=baseline"], tmp_path / "sweep")
    good, bad = loaders.jobs
    assert loaders.once.load_sweep_config(loaders.master, good).seed == 1
    with pytest.raises(Exception) as hydras:
        loaders.hydra.load_sweep_config(loaders.master, bad)
    with pytest.raises(Exception) as ours:
        loaders.once.load_sweep_config(loaders.master, bad)
    assert type(ours.value) is type(hydras.value)
    assert str(ours.value) == str(hydras.value) and "seed=abc" in str(ours.value)


def test_only_plain_values_of_the_config_are_derived(hydra_conf, tmp_path):
    """Group choices, dict values, added keys and keys given twice are composed by
    Hydra; plain values are derived from the first job of their group choice."""
    loaders = Loaders(["model=baseline,batchnorm", "seed=0,1,2"], tmp_path / "s")
    for job in loaders.jobs:
        loaders.once.load_sweep_config(loaders.master, job)
    assert (loaders.once.composed, loaders.once.derived) == (2, 4)
    odd = Loaders(["+model.args.width=4,8", "model=cnn"], tmp_path / "t")
    for job in odd.jobs:
        odd.once.load_sweep_config(odd.master, job)
    assert (odd.once.composed, odd.once.derived) == (2, 0)


def test_a_line_given_twice_is_composed_by_hydra(hydra_conf, tmp_path):
    """A job that gives one key twice is composed by Hydra, never derived from
    another job, also where it is the same line twice (one parsed line in two
    places; Hydra's own sweeper keeps one line a key, another sweeper may not)."""
    loaders = Loaders(["seed=0"], tmp_path / "sweep")
    jobs = [["seed=0", "seed=0"], ["seed=1", "seed=1"], ["seed=0", "seed=1"]]
    for job in jobs:
        ours = outcome(lambda j: loaders.once.load_sweep_config(loaders.master, j), job)
        assert ours == outcome(
            lambda j: loaders.hydra.load_sweep_config(loaders.master, j), job
        )
    assert (loaders.once.composed, loaders.once.derived) == (3, 0)


@pytest.mark.parametrize(
    "arguments, excluded, subdir",
    [
        (["seed=1,2"], None, "seed=2"),
        (["seed=1,2", "hydra.job.config.override_dirname.exclude_keys=[seed]",
          "hydra.sweep.subdir=s${seed}"], ["seed"], "s2"),
    ],
)  # fmt: skip
def test_the_dirname_shortcuts_give_what_resolving_gives(
    arguments, excluded, subdir, hydra_conf, tmp_path
):
    loaders = Loaders(arguments, tmp_path / "sweep")
    cfg = loaders.once.take(loaders.master, loaders.jobs[1])
    naming = cfg.hydra.job.config.override_dirname
    assert excluded_from_dirname(naming) == list(naming.exclude_keys)
    assert excluded_from_dirname(naming) == (excluded or dirname_exclude_keys())
    assert "threads" in dirname_exclude_keys() and "seed" not in dirname_exclude_keys()
    assert job_subdir(cfg) == str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    assert job_subdir(cfg) == subdir
