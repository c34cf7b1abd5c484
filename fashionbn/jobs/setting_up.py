"""A sweep's job run in its Hydra job context as hydra.core.utils.run_job runs it,
without the copies that make run_job cost milliseconds a job (hydra/launcher=batched,
with compose_once).

run_job sets the job's Hydra config twice (each a deep copy of the `hydra` node),
deep-copies the whole config for the task and the `hydra` node again for the
JobReturn, and writes `.hydra/`'s three files with PyYAML's pure-Python emitter:
~25 ms a job on a small CPU, ten times a tiny job's training. `run_job_lean` does
the same steps in the same order, with the same results:

- the Hydra config is set once and holds the job config's own `hydra` node
  (`set_hydra_config`); the job's output dir is then written into that node
  (run_job's second set_config copies that one value);
- the task's config is a pickle copy of the others (`task_config`: same nodes,
  types and flags as copy.deepcopy makes them);
- the JobReturn's Hydra config is the one the job ran with, its `hydra` node's
  parent its own root after the job, as in the copy run_job hands out; where
  run_job reads that copy (`chdir`, `env_set`), the node is parented so too, so an
  interpolation into the job's config fails as it fails there;
- `.hydra/*.yaml` are OmegaConf.to_yaml's text (`YamlParts`), made from the parts
  of the config that earlier jobs of the sweep already wrote.

tests/test_composing.py runs every job of every preset through Hydra's run_job and
through this, tests/test_setting_up.py odd settings, failing tasks and callbacks;
both compare the `.hydra/` files byte for byte, the JobReturns and what the task
saw.
"""

import copy
import os
import pickle
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml
from hydra import version
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,  # run_job's own step
    configure_log,
    deprecation_warning,  # (run_job's own, as hydra.core.utils has it)
    env_override,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, flag_override, open_dict, read_write
from omegaconf._utils import get_omega_conf_dumper  # OmegaConf.to_yaml's own dumper

from fashionbn.config.schema import job_subdir


def pickled(config: DictConfig) -> Callable[[], DictConfig]:
    """A maker of deep copies of a root config as it is now, equal to what
    copy.deepcopy makes (nodes, types, flags, interpolations): unpickled from bytes
    pickled once, about four times faster for Hydra's configs; copy.deepcopy where
    pickle refuses (a value of a local class)."""
    try:
        data = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - anything pickle refuses: the slow copy
        kept = copy.deepcopy(config)
        return lambda: copy.deepcopy(kept)
    return lambda: pickle.loads(data)


def copied(config: DictConfig) -> DictConfig:
    """A deep copy of a root config (`pickled`)."""
    return pickled(config)()


def task_config(config: DictConfig) -> DictConfig:
    """run_job's task config: a copy of the job's config without its `hydra` node.
    The node is not copied at all: for the copy, the root's children are the
    others (its `_content`, which OmegaConf's own deepcopy reads too), then the
    root has them all again."""
    content = config.__dict__["_content"]
    config.__dict__["_content"] = {k: v for k, v in content.items() if k != "hydra"}
    try:
        return copied(config)
    finally:
        config.__dict__["_content"] = content


def set_hydra_config(config: DictConfig) -> DictConfig:
    """HydraConfig.instance().set_config(config) without its copy: the root it
    makes (and returns) holds the job config's own `hydra` node (read only from now
    on; nothing else changes it: the task gets a copy without it), whose parent
    stays `config` (its interpolations into the job's config resolve, as
    set_config has it)."""
    OmegaConf.set_readonly(config.hydra, True)
    assert issubclass(OmegaConf.get_type(config, "hydra"), HydraConf)
    node = config._get_node("hydra")
    root = DictConfig(content={})  # OmegaConf.masked_copy's root
    with flag_override(root, "no_deepcopy_set_nodes", True):  # as Hydra's loader
        root["hydra"] = node
    node._set_parent(config)
    HydraConfig.instance().cfg = root
    return root


@contextmanager
def parented(node: Any, parent: Any) -> Iterator[None]:
    """Within the block, `node`'s parent is `parent` (then the one it had)."""
    before = node._get_parent()
    node._set_parent(parent)
    try:
        yield
    finally:
        node._set_parent(before)


class YamlParts:
    """OmegaConf.to_yaml, made from parts: the YAML of a block mapping is its
    keys' YAML one after another, each key's lines the same wherever the key sits
    among its siblings. So each part of a config (a key's value, down to `DEPTH`
    levels) is dumped once and its text reused for every later config whose value
    there is the same, compared by repr (which tells 1 from 1.0 and True, and
    keeps the order). A sweep's jobs differ in a few values, so most of their
    `.hydra/` text comes from here. A part whose text does not start with its
    ancestors' lines (never seen) makes the whole YAML be dumped at once."""

    DEPTH = 3  # levels split into parts (hydra.job.num: 3)
    LIMIT = 4096  # texts kept; the cache starts again beyond it

    def __init__(self) -> None:
        self.dumper = get_omega_conf_dumper()
        self.texts: dict[tuple, str] = {}
        self.heads: dict[tuple, str] = {(): ""}

    def to_yaml(self, node: Any) -> str:
        """OmegaConf.to_yaml(node)."""
        container = plain(node)
        if not _splits(container):
            return self._dump(container)
        try:
            return "".join(
                self._part((key,), value) for key, value in container.items()
            )
        except _NotParts:
            return self._dump(container)

    def _part(self, path: tuple, value: Any) -> str:
        """The lines of the key at `path` (its value `value`): the YAML of the
        mapping that holds only that path, without its ancestors' lines."""
        if len(path) < self.DEPTH and _splits(value):
            line = self._head(path)[len(self._head(path[:-1])) :]
            return line + "".join(self._part((*path, k), v) for k, v in value.items())
        cache_key = (path, repr(value))
        text = self.texts.get(cache_key)
        if text is None:
            above = self._head(path[:-1])
            whole = self._dump(_nested(path, value))
            if not whole.startswith(above):
                raise _NotParts
            if len(self.texts) >= self.LIMIT:
                self.texts.clear()
            text = self.texts[cache_key] = whole[len(above) :]
        return text

    def _head(self, path: tuple) -> str:
        """The lines of the keys along `path` (each a mapping's key)."""
        head = self.heads.get(path)
        if head is None:
            probe = self._dump(_nested(path, {"x": None}))
            head = probe[: probe.rstrip("\n").rfind("\n") + 1]
            if not head.startswith(self._head(path[:-1])):
                raise _NotParts
            self.heads[path] = head
        return head

    def _dump(self, container: Any) -> str:
        return yaml.dump(  # exactly OmegaConf.to_yaml's call
            container,
            default_flow_style=False,
            allow_unicode=True,
            sort_keys=False,
            Dumper=self.dumper,
        )


def plain(node: Any) -> Any:
    """OmegaConf.to_container(node, resolve=False, enum_to_str=True) of a config
    node, read straight from the nodes' own content (the values as they are held:
    an interpolation or '???' as its string, None, an enum as its name; an enum key
    as its name), without OmegaConf's checks and lookups on every key (four times
    faster: a Hydra config is a few hundred nodes, a job's `.hydra/` three of them).
    tests/test_setting_up.py compares the two on odd configs."""
    attributes = node.__dict__
    if "_content" not in attributes:  # a value node
        value = node._value()
        return value.name if isinstance(value, Enum) else value
    content = attributes["_content"]
    if isinstance(content, dict):
        return {
            (key.name if isinstance(key, Enum) else key): plain(child)
            for key, child in content.items()
        }
    if isinstance(content, list):
        return [plain(child) for child in content]
    return content  # None, '???' or an interpolation: as resolve=False has them


class _NotParts(Exception):
    """A config whose YAML YamlParts does not make from parts."""


def _splits(value: Any) -> bool:
    """Whether `value` is a mapping YamlParts writes key by key: not empty, and its
    keys plain strings PyYAML writes on one line as they are (not as '? key', which
    it does past 128 characters)."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(type(k) is str and len(k) <= 100 and "\n" not in k for k in value)
    )


def _nested(path: tuple, value: Any) -> dict:
    """{path[0]: {path[1]: ... value}}."""
    for key in reversed(path):
        value = {key: value}
    return value


def job_chdir_default() -> bool:
    """hydra.job.chdir when it is null, as run_job decides it (with its warning)."""
    if version.base_at_least("1.2"):
        return False
    url = "https://hydra.cc/docs/1.2/upgrades/1.1_to_1.2/changes_to_job_working_dir/"
    deprecation_warning(
        message="Future Hydra versions will no longer change working directory at "
        f"job runtime by default.\nSee {url} for more information.",
        stacklevel=3,
    )
    return True


def run_job_lean(
    task_function: TaskFunction,
    config: DictConfig,
    job_dir_key: str,
    job_subdir_key: Optional[str],
    hydra_context: HydraContext,
    yaml_parts: YamlParts,
    configure_logging: bool = True,
) -> JobReturn:
    """hydra.core.utils.run_job(task_function, config, job_dir_key, job_subdir_key,
    hydra_context, configure_logging), step by step, without its copies (the
    module's docstring). `config` is the job's own: it is changed, as run_job
    changes it."""
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    hydra_config = HydraConfig.instance()
    orig_hydra_cfg = hydra_config.cfg
    hydra_cfg = set_hydra_config(config)  # for the output dir's interpolations
    hydra_node = config._get_node("hydra")
    output_dir = str(OmegaConf.select(config, job_dir_key))
    if job_subdir_key is not None:
        if job_subdir_key == "hydra.sweep.subdir":
            subdir = job_subdir(config)  # (the same, cheaper)
        else:
            subdir = str(OmegaConf.select(config, job_subdir_key))
        output_dir = os.path.join(output_dir, subdir)
    runtime = config.hydra.runtime  # (the Hydra config's too)
    with read_write(runtime), open_dict(runtime):
        runtime.output_dir = os.path.abspath(output_dir)
    _chdir = None
    try:
        ret = JobReturn()
        task_cfg = task_config(config)
        ret.cfg = task_cfg
        ret.hydra_cfg = hydra_cfg  # (read only; run_job's is a copy of it)
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        ret.overrides = overrides
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        # run_job reads these from its copy, whose `hydra` node's parent is the
        # copy's root (not the job's config: an interpolation into it fails)
        with parented(hydra_node, hydra_cfg):
            _chdir = hydra_cfg.hydra.job.chdir
        if _chdir is None:
            _chdir = job_chdir_default()
        if _chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        if configure_logging:
            configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / Path(
                config.hydra.output_subdir
            )
            hydra_output.mkdir(parents=True, exist_ok=True)
            files = {"config.yaml": task_cfg, "hydra.yaml": hydra_cfg,
                     "overrides.yaml": config.hydra.overrides.task}  # fmt: skip
            for name, node in files.items():
                with open(hydra_output / name, "w", encoding="utf-8") as file:
                    file.write(yaml_parts.to_yaml(node))
        with parented(hydra_node, hydra_cfg):
            env = dict(hydra_cfg.hydra.job.env_set)
        with env_override(env):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:  # noqa: BLE001 - run_job's own rule
                ret.return_value = e
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        hydra_node._set_parent(hydra_cfg)  # the JobReturn's, as run_job's copy
        return ret
    finally:
        hydra_config.cfg = orig_hydra_cfg
        if _chdir:
            os.chdir(old_cwd)
