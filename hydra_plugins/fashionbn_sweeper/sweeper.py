"""hydra/sweeper=fashionbn (fashionbn's default): Hydra's basic sweeper, with the
sweep's jobs composed once per config-group choice under any launcher.

Hydra composes every job of a sweep twice, each time merging the whole defaults list
into the schema again (~0.2 s a composition on a small CPU): the sweeper's check of a
batch, then the launcher. This sweeper puts fashionbn.jobs.composing.ComposeOnce in
front of Hydra's config loader in the HydraContext the sweeper and its launcher share
(before the launcher is made), then is Hydra's basic sweeper: the same expansion of the
command line and `hydra.sweeper.params` into jobs, batches, checks and
`multirun.yaml`. Jobs that choose the same config groups are then derived from the
first one's composition (tests/test_composing.py: every preset's jobs equal Hydra's
own composition, byte for byte). The basic sweeper is found as Hydra registers it
(`hydra/sweeper=basic` in Hydra's ConfigStore), through Hydra's public API only.
`hydra.sweeper.compose_once=false` (or `hydra/sweeper=basic`) is Hydra's own
composition, but for the batched launcher, which puts ComposeOnce in itself unless
`hydra.launcher.compose_once=false` (which also undoes this sweeper's).
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf


@dataclass
class FashionbnSweeperConf:
    _target_: str = "hydra_plugins.fashionbn_sweeper.sweeper.FashionbnSweeper"
    max_batch_size: Optional[int] = None  # Hydra's basic sweeper's own keys
    params: Optional[Dict[str, str]] = None
    # jobs that choose the same config groups share one composition, their values
    # applied as Hydra applies them (fashionbn.jobs.composing); false: Hydra
    # composes every job itself, twice (the check, then the launcher)
    compose_once: bool = True


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="fashionbn",
    node=FashionbnSweeperConf,
    provider="fashionbn",
)


def basic_sweeper_class() -> type:
    """Hydra's basic sweeper, as Hydra's ConfigStore names it (hydra/sweeper=basic)."""
    node = ConfigStore.instance().load("hydra/sweeper/basic.yaml").node
    return get_class(node["_target_"])


class FashionbnSweeper(Sweeper):
    """Hydra's basic sweeper (held, and asked for everything) with ComposeOnce in
    the HydraContext first."""

    def __init__(
        self,
        max_batch_size: Optional[int] = None,
        params: Optional[Dict[str, str]] = None,
        compose_once: bool = True,
    ) -> None:
        self.basic = basic_sweeper_class()(max_batch_size=max_batch_size, params=params)
        self.compose_once = compose_once

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        from fashionbn.config.validation import missing_line

        for group in ("launcher", "sweeper"):  # (made from them next: one line)
            missing = sorted(OmegaConf.missing_keys(config.hydra[group]))
            if missing:
                raise CompactHydraException(missing_line(missing[0]))
        if self.compose_once:  # before the launcher is made: it shares the context
            from fashionbn.jobs.composing import compose_once

            compose_once(hydra_context)
        self.basic.setup(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:
        return self.basic.sweep(arguments)

    def __getattr__(self, name: str) -> Any:  # anything else of the basic sweeper's
        if name == "basic":
            raise AttributeError(name)
        return getattr(self.basic, name)
