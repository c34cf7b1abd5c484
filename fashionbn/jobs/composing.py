"""A sweep's jobs composed once per config-group choice (hydra/launcher=batched).

Hydra composes every job of a sweep twice: the sweeper's validate_batch_is_legal,
then the launcher's load_sweep_config; each composition merges the whole defaults
list into the structured schema again (~0.2 s on a small CPU, most of a tiny job's
cost). Jobs that choose the same config groups differ only in values (lr, seed, …),
so `ComposeOnce`, a ConfigLoader put in front of Hydra's own by the batched
launcher's setup (the sweeper and the launcher share it through their
HydraContext), composes the first job of each choice with Hydra and derives the
others from a copy of it, with Hydra's own steps for what a value override changes:

- the values, by OmegaConf.update(cfg, key, value, merge=True) under struct mode,
  as Hydra applies a plain `key=value` override (its value parsed by Hydra's own
  override parser: types, quoting, null, interpolations);
- hydra.overrides.task, the job's override lines in order;
- hydra.job.override_dirname, as Hydra's get_overrides_dirname writes it (sorted
  lines, kv_sep and item_sep, exclude_keys).

Everything else of a composition depends on the group choices alone (the defaults
list, hydra.runtime.choices, the sources, the config name), which are equal. A job
is derived only when every override that differs from the base job's is a plain
`key=value` of a scalar to a key that is a value of the composed config (not a
config group, not hydra.*, no +/++/~, no package); anything else, or any error, is
composed by Hydra itself (whose error message a bad value then gets). The launcher
`take`s the config the sweeper's check made for a job, not a new one: each config
once (a sweep can hold the same overrides twice; each such job gets its own).
tests/test_composing.py composes every job of every preset both ways and compares
the configs and the `.hydra/` files byte for byte.
"""

import re
from typing import Any, Callable, List, Optional

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, ListConfig, OmegaConf

from fashionbn.config import excluded_from_dirname
from fashionbn.jobs.setting_up import pickled


class ComposeOnce(ConfigLoader):
    """Hydra's ConfigLoader `loader`, with load_sweep_config composing once per
    config-group choice (the module's docstring says how and when)."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.keep = False  # keep what the sweeper's check made for `take` (batched)
        self.parser = OverridesParser.create()
        self.lines: dict[str, Override] = {}  # parsed override lines (read only)
        self.values: dict[tuple[int, str], bool] = {}  # _is_value's answers
        self.bases: list[tuple[Any, list[Override], DictConfig, Callable]] = []
        self.made: dict[tuple, list[DictConfig]] = {}  # checked, not yet taken
        self.groups: Optional[set[str]] = None  # the top-level config groups
        self.composed = 0  # compositions by Hydra (a benchmark reads it)
        self.derived = 0

    # --- the one method that changes, and what the launcher takes --------------

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: List[str]
    ) -> DictConfig:
        """The job's config (the sweeper's check asks for every job first; a
        launcher without `take` asks again), kept for the launcher's `take` when
        `keep` says so."""
        cfg = self._make(master_config, sweep_overrides)
        if self.keep:
            key = (id(master_config), tuple(sweep_overrides))
            self.made.setdefault(key, []).append(cfg)
        return cfg

    def take(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        """The job's config for the launcher to set the job up with (and change):
        the one the sweeper's check made for these overrides, each handed out once
        (a sweep may hold the same overrides twice: the first made is taken
        first), or a new one."""
        key = (id(master_config), tuple(sweep_overrides))
        made = self.made.get(key)
        if not made:
            return self._make(master_config, sweep_overrides)
        cfg = made.pop(0)
        if not made:
            del self.made[key]
        return cfg

    def _make(
        self, master_config: DictConfig, sweep_overrides: List[str]
    ) -> DictConfig:
        """A new config of the job: derived from the first job of its config-group
        choice, or composed by Hydra (then the base of the jobs after it)."""
        overrides = self._parsed(sweep_overrides)
        cfg = None if overrides is None else self._derived(master_config, overrides)
        if cfg is None:
            cfg = self.loader.load_sweep_config(master_config, sweep_overrides)
            self.composed += 1
            if overrides is not None:
                copies = pickled(cfg)  # (before the launcher changes cfg)
                self.bases.append((master_config, overrides, copies(), copies))
        else:
            self.derived += 1
        return cfg

    def _parsed(self, lines: List[str]) -> Optional[list[Override]]:
        """Hydra's parse of the override lines (each line parsed once a sweep:
        a sweep's jobs share most of theirs), or None where Hydra refuses one."""
        overrides = []
        for line in lines:
            override = self.lines.get(line)
            if override is None:
                try:
                    (override,) = self.parser.parse_overrides([line])
                except Exception:  # noqa: BLE001 - Hydra's own error, from Hydra
                    return None
                if len(self.lines) >= 4096:
                    self.lines.clear()
                self.lines[line] = override
            overrides.append(override)
        return overrides

    def _derived(
        self, master: DictConfig, overrides: list[Override]
    ) -> Optional[DictConfig]:
        """The job's config from a base job of the same group choices, or None."""
        for base_master, base_overrides, base, base_copies in self.bases:
            if base_master is not master:
                continue
            try:
                changed = self._value_changes(base, base_overrides, overrides)
                if changed is not None:
                    return self._apply(base_copies(), overrides, changed, master)
            except Exception:  # noqa: BLE001 - composed by Hydra, with its error
                return None
        return None

    def _value_changes(
        self, base: DictConfig, before: list[Override], after: list[Override]
    ) -> Optional[list[Override]]:
        """The overrides of `after` that differ from `before`, when each is a plain
        scalar value override of a value of `base` (None otherwise)."""
        if len(before) != len(after):
            return None
        changed = []  # (position, override); a line's Override may be there twice
        for position, (old, new) in enumerate(zip(before, after)):
            if old.input_line == new.input_line:
                continue
            if old.key_or_group != new.key_or_group or not self._is_value(base, new):
                return None
            if not self._is_value(base, old):
                return None
            changed.append((position, new))
        # Hydra applies value overrides in order: one that another override of the
        # same key (or a key within it) follows or precedes is not re-applied alone
        for position, override in changed:
            key = override.key_or_group
            for other_position, other in enumerate(after):
                if other_position == position or self._is_group(other.key_or_group):
                    continue
                if _overlap(key, other.key_or_group):
                    return None
        return [override for _, override in changed]

    def _is_group(self, key: str) -> bool:
        if self.groups is None:
            self.groups = set(self.loader.list_groups(""))
        return "/" in key or ("." not in key and key in self.groups)

    def _is_value(self, base: DictConfig, override: Override) -> bool:
        """Whether `override` is a plain scalar override of a value of `base`
        (asked once per base and line: a base is kept, never changed)."""
        memo = (id(base), override.input_line)
        known = self.values.get(memo)
        if known is None:
            if len(self.values) >= 65536:
                self.values.clear()
            known = self.values[memo] = self._is_value_of(base, override)
        return known

    def _is_value_of(self, base: DictConfig, override: Override) -> bool:
        key = override.key_or_group
        if (
            override.type != OverrideType.CHANGE
            or override.package is not None
            or override.is_sweep_override()
            or override.is_hydra_override()
            or self._is_group(key)  # a config group (it may also name a node)
        ):
            return False
        value = override.value()
        if isinstance(value, (dict, list)):
            return False  # merged into the node, not put in its place
        node = OmegaConf.select(base, key, throw_on_missing=False, default=_ABSENT)
        return node is not _ABSENT and not isinstance(node, (DictConfig, ListConfig))

    def _apply(
        self,
        config: DictConfig,
        overrides: list[Override],
        changed: list[Override],
        master: DictConfig,
    ) -> DictConfig:
        """The job's config: `config`, a copy of the base job's, with its values."""
        for override in changed:
            key, value = override.key_or_group, override.value()
            OmegaConf.update(config, key, value, merge=True)
        task = [o.input_line for o in overrides if not o.is_hydra_override()]
        config.hydra.overrides.task = task
        naming = config.hydra.job.config.override_dirname
        config.hydra.job.override_dirname = overrides_dirname(
            [o for o in overrides if not o.is_hydra_override()],
            excluded_from_dirname(naming), naming.item_sep, naming.kv_sep,
        )  # fmt: skip
        OmegaConf.copy_cache(from_config=master, to_config=config)
        return config

    # --- everything else is Hydra's own ----------------------------------------

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> List[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> List[str]:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # anything else of Hydra's loader
        if name == "loader":  # (not set yet: being unpickled)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __reduce__(self) -> tuple:
        """Pickled (a joblib or SLURM launcher sends the context to its workers):
        Hydra's loader in a new, empty ComposeOnce."""
        return (ComposeOnce, (self.loader,))


_ABSENT = object()


def _overlap(key: str, other: str) -> bool:
    """Whether two dotted keys are one, or one lies within the other."""
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def overrides_dirname(
    overrides: list[Override], exclude_keys: list[str], item_sep: str, kv_sep: str
) -> str:
    """hydra.job.override_dirname as Hydra writes it: the override lines not
    excluded, sorted, joined by item_sep, '=' written as kv_sep."""
    lines = sorted(
        o.input_line for o in overrides if o.key_or_group not in exclude_keys
    )
    return re.sub("[=]", kv_sep, item_sep.join(lines))


def compose_once(hydra_context: Any) -> ComposeOnce:
    """Put a ComposeOnce in front of the context's config loader (once)."""
    loader = hydra_context.config_loader
    if not isinstance(loader, ComposeOnce):
        loader = hydra_context.config_loader = ComposeOnce(loader)
    return loader


def compose_by_hydra(hydra_context: Any) -> None:
    """Hydra's own config loader back in the context (hydra.launcher.compose_once
    =false: Hydra composes every job)."""
    loader = hydra_context.config_loader
    if isinstance(loader, ComposeOnce):
        hydra_context.config_loader = loader.loader
