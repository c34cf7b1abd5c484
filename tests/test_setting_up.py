"""fashionbn.jobs.setting_up: a sweep's job set up as Hydra's run_job sets it up
(tests/test_composing.py compares every preset's jobs; here odd settings, failing
tasks and callbacks), its YAML made from parts equal to OmegaConf.to_yaml, and its
pickle copies equal to copy.deepcopy's."""

import copy
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from hydra._internal.callbacks import Callbacks  # (tests may read Hydra's internals)
from hydra.core.utils import JobStatus, run_job
from hydra.types import HydraContext
from omegaconf import MISSING, OmegaConf, ValidationError
from omegaconf.errors import ConfigAttributeError

from fashionbn.jobs.setting_up import (
    YamlParts,
    copied,
    plain,
    run_job_lean,
    task_config,
)
from tests.test_composing import Loaders, job_outcome


class Colour(enum.Enum):
    red = 1


ODD_VALUES = [
    {"a": 1, "b": 1.0, "c": True, "d": None, "e": "1", "f": "true", "g": "null"},
    {"text": "ü ñ 漢字 😀", "colon": "a: b", "hash": "x # y", "dash": "- z"},
    {"long": "word " * 40, "lines": "one\ntwo\n  three\n", "tab": "a\tb"},
    {"empty": {}, "none": [], "deep": {"x": {"y": {"z": {"w": [1, {"v": {}}]}}}}},
    {"k" * 140: 1, "short": 2},  # a key past PyYAML's 128: written as '? key'
    {"interp": "${a}", "esc": "\\${a}", "colour": Colour.red, "list": [1, [2, []]]},
    {"hydra": {"job": {"num": 3, "name": "x" * 100}, "empty": {}, "v": "w " * 60}},
    {"only": {"one": {"key": {"deep": {"deeper": "🙂 " * 50}}}}},
    {"n" * 130: {"m" * 130: {"a": 1, "b": [1]}, "c": {}}, "d": {"e": None}},
    {"a\nb": {"c": {"d": 1}}, "e": {"f\ng": {"h": 2}, "i": 3}},  # keys on 2 lines
]


@pytest.mark.parametrize("values", ODD_VALUES)
def test_yaml_from_parts_is_omegaconfs_yaml(values):
    parts = YamlParts()
    cfg = OmegaConf.create(values)
    assert parts.to_yaml(cfg) == OmegaConf.to_yaml(cfg)
    assert parts.to_yaml(cfg) == OmegaConf.to_yaml(cfg)  # from the cache
    for node in cfg.values() if isinstance(cfg, dict) else []:
        if OmegaConf.is_config(node):
            assert parts.to_yaml(node) == OmegaConf.to_yaml(node)


def test_parts_tell_equal_values_of_other_types_apart():
    """1, 1.0 and True are == in Python; their YAML is 1, 1.0 and true."""
    parts = YamlParts()
    for value in (1, 1.0, True, "1", None, 1, True):
        cfg = OmegaConf.create({"hydra": {"job": {"num": value}, "x": 2}, "y": value})
        assert parts.to_yaml(cfg) == OmegaConf.to_yaml(cfg), value
    for wrapped in ([], {}, [1], {"a": 1}, ""):  # (and empty ones of each kind)
        cfg = OmegaConf.create({"a": {"b": {"c": wrapped}}})
        assert parts.to_yaml(cfg) == OmegaConf.to_yaml(cfg), wrapped


@dataclass
class Odd:
    colour: Colour = Colour.red
    maybe: Optional[dict] = None  # a None container
    later: dict = MISSING  # a '???' container
    pointer: dict = "${by_colour}"  # an interpolation container
    by_colour: Dict[Colour, int] = field(default_factory=lambda: {Colour.red: 3})
    values: List[Any] = field(default_factory=lambda: [None, "???", b"x", 1.0])
    path: Path = Path("/a/b")
    ref: str = "${colour}"
    missing: int = MISSING


@pytest.mark.parametrize("values", [*ODD_VALUES, Odd, {"odd": Odd, 5: True}])
def test_plain_is_omegaconfs_container(values):
    """plain(node) == OmegaConf.to_container(node, resolve=False, enum_to_str=True),
    with the same types (1 is not 1.0 or True) and key order, for the root and for
    each of its nodes (containers and values)."""
    cfg = OmegaConf.structured(values) if values is Odd else OmegaConf.create(values)
    expected = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    assert repr(plain(cfg)) == repr(expected)
    for key, value in zip(cfg, expected.values()):
        assert repr(plain(cfg._get_node(key))) == repr(value)
        node = cfg._get_node(key)
        if OmegaConf.is_config(node):
            assert repr(plain(node)) == repr(
                OmegaConf.to_container(node, resolve=False, enum_to_str=True)
            )


def test_plain_of_odd_nodes_by_hand():
    cfg = OmegaConf.structured(Odd)
    assert plain(cfg) == {
        "colour": "red", "maybe": None, "later": "???", "pointer": "${by_colour}",
        "by_colour": {"red": 3}, "values": [None, "???", b"x", 1.0],
        "path": Path("/a/b"), "ref": "${colour}", "missing": "???",
    }  # fmt: skip
    assert plain(OmegaConf.create([])) == [] and plain(OmegaConf.create({})) == {}


def test_yaml_of_a_list_and_of_nothing():
    parts = YamlParts()
    for cfg in (OmegaConf.create(["seed=1", "a b"]), OmegaConf.create({}),
                OmegaConf.create([])):  # fmt: skip
        assert parts.to_yaml(cfg) == OmegaConf.to_yaml(cfg)


@dataclass
class Inner:
    n: int = 1
    names: list = field(default_factory=lambda: ["a"])


@dataclass
class Schema:
    inner: Inner = field(default_factory=Inner)
    lr: float = 0.1
    ref: str = "${lr}"


def test_a_pickle_copy_is_a_deep_copy_with_the_same_types_and_flags():
    cfg = OmegaConf.structured(Schema)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_readonly(cfg.inner, True)
    copy_ = copied(cfg)
    deep = copy.deepcopy(cfg)
    assert OmegaConf.to_yaml(copy_) == OmegaConf.to_yaml(deep)
    assert copy_ is not cfg and copy_.inner is not cfg.inner
    assert OmegaConf.get_type(copy_, "inner") is Inner
    assert OmegaConf.is_struct(copy_) and OmegaConf.is_readonly(copy_.inner)
    assert copy_.ref == deep.ref == "0.1"  # still an interpolation (typed str)
    with pytest.raises(ValidationError):
        copy_.lr = "not a number"  # the schema's types hold
    with pytest.raises(ConfigAttributeError):
        copy_.new_key = 1  # struct
    copy_.lr = 0.5
    assert cfg.lr == 0.1 and copy_.ref == "0.5"  # apart from the original


def test_a_config_pickle_refuses_is_deep_copied():
    cfg = OmegaConf.create({"a": 1, "hydra": {"b": 2}}, flags={"allow_objects": True})
    cfg.fn = lambda: 1  # (a local function: pickle cannot write it)
    copy_ = copied(cfg)
    assert copy_.fn is cfg.fn and copy_.a == 1 and copy_ is not cfg
    task = task_config(cfg)
    assert list(task) == ["a", "fn"] and task.fn is cfg.fn
    assert list(cfg) == ["a", "hydra", "fn"]  # the config as it was


def test_the_task_config_is_a_copy_without_hydra(hydra_conf, tmp_path):
    loaders = Loaders(["seed=1,2"], tmp_path / "sweep")
    cfg = loaders.once.load_sweep_config(loaders.master, loaders.jobs[0])
    keys = list(cfg)
    task = task_config(cfg)
    assert "hydra" not in task and list(cfg) == keys  # (the same order)
    deep = copy.deepcopy(cfg)
    OmegaConf.set_struct(deep, False)
    del deep["hydra"]
    OmegaConf.set_struct(deep, True)
    assert OmegaConf.to_yaml(task) == OmegaConf.to_yaml(deep)
    assert OmegaConf.is_struct(task) and task.seed == 1


class Recorder(Callbacks):
    """Hydra's callbacks, recording what each job's start and end were given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list = []

    def on_job_start(self, config, **kwargs) -> None:
        self.calls.append(
            ("start", OmegaConf.to_yaml(config), kwargs["task_function"].__name__)
        )

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self.calls.append(("end", OmegaConf.to_yaml(config), job_return.status))


@pytest.mark.parametrize(
    "arguments",
    [
        ["seed=1,2", "hydra.job.chdir=true"],  # runs in its dir; the cwd is restored
        ["seed=1,2", "hydra.output_subdir=null"],  # no .hydra/
        ["seed=1,2", "hydra.sweep.subdir=s${seed}_${hydra.job.num}"],  # into the job
        ["seed=1,2", "++hydra.job.env_set.FASHIONBN_TEST_ENV=x${hydra:job.num}"],
        ["seed=1,2", "++hydra.job.env_set.FASHIONBN_TEST_ENV=x${seed}"],  # fails
        ["seed=1,2", "hydra.job.chdir=${seed}"],  # fails too (as a run_job's would)
        ["optim.lr=0.1,0.2", "hydra.output_subdir=meta", "hydra.job.name=named"],
    ],
)  # fmt: skip
def test_odd_jobs_are_set_up_as_run_job_sets_them_up(arguments, hydra_conf, tmp_path):
    loaders = Loaders(arguments, tmp_path / "sweep")
    parts, cwd = YamlParts(), os.getcwd()
    for num, job in enumerate(loaders.jobs):
        plain, once = loaders.both(job)
        outcomes = []
        for run, kw in ((run_job, {}), (run_job_lean, {"yaml_parts": parts})):
            recorder = Recorder()
            context = HydraContext(config_loader=loaders.hydra, callbacks=recorder)
            config = plain if run is run_job else once
            outcomes.append((job_outcome(run, config, num, context, **kw),
                             recorder.calls))  # fmt: skip
            assert os.getcwd() == cwd
        hydras, ours = outcomes
        assert ours == hydras, job
        failed = "raised" in ours[0]
        assert [call[0] for call in ours[1]] == ([] if failed else ["start", "end"])
        if "env_set" in arguments[-1] and "hydra:" in arguments[-1]:
            assert ours[0]["seen"]["env"] == f"x{num}"
        if arguments[-1].endswith("${seed}"):
            assert ours[0]["raised"][0].__name__ == "InterpolationKeyError"
        if arguments[-1] == "hydra.job.chdir=true":
            assert ours[0]["seen"]["cwd"] == ours[0]["returned"]["working_dir"] != cwd
    assert "FASHIONBN_TEST_ENV" not in os.environ


def test_a_relative_sweep_dir_is_set_up_as_run_job_sets_it_up(
    hydra_conf, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    loaders = Loaders(["seed=1,2"], Path("sweep"))
    context = HydraContext(config_loader=loaders.hydra, callbacks=Callbacks())
    plain, once = loaders.both(loaders.jobs[1])
    hydras = job_outcome(run_job, plain, 1, context)
    ours = job_outcome(run_job_lean, once, 1, context, yaml_parts=YamlParts())
    assert ours == hydras
    assert f"output_dir: {tmp_path}/sweep/seed=2" in ours["returned"]["hydra_cfg"]


def test_a_failing_task_fails_its_job_as_under_run_job(hydra_conf, tmp_path):
    loaders = Loaders(["seed=1,2"], tmp_path / "sweep")
    _, once = loaders.both(loaders.jobs[1])
    problem = ValueError("no")

    def task(cfg):
        raise problem

    ret = run_job_lean(
        task_function=task, config=once, job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
        hydra_context=HydraContext(config_loader=loaders.hydra, callbacks=Callbacks()),
        yaml_parts=YamlParts(), configure_logging=False,
    )  # fmt: skip
    assert ret.status is JobStatus.FAILED and ret._return_value is problem
    assert Path(ret.hydra_cfg.hydra.runtime.output_dir, ".hydra/config.yaml").is_file()
    with pytest.raises(ValueError):
        ret.return_value  # noqa: B018 - reading it raises it (Hydra's rule)
