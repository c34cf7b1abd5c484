"""A run's settings, resolved once from its Hydra config and passed as plain values.

`run_settings(cfg)` checks the config (fashionbn.config.validation, one line for a
value that cannot work) and reads everything training needs into frozen dataclasses:
plain ints, floats, bools and tuples, with the schema's defaults applied once here
(`drop_last` is `settings.drop_last`, not `cfg.data.get("drop_last", False)` in four
places). The run's identity is computed here too. Only the two plug-in specs stay
config nodes, because Hydra instantiates them: `model` (the built-in MLP's options or
a `_target_`) and `data` (where FashionMNIST lives, or a data source's `_target_`),
read-only, as is `logger` (which sinks, handed to fashionbn.jobs.loggers).

The two entry points resolve a config once — fashionbn.jobs.job.run_job (a job dir)
and fashionbn.core.train.train_and_evaluate (in memory), and the batched launcher
when a job joins a cohort; everything below them takes a RunSettings.
"""

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import OmegaConf

from fashionbn.config.identity import normalise_identity


@dataclass(frozen=True)
class OptimSettings:
    """The optimizer: optim.name's schema, its defaults filled (SGD has no betas,
    Adam no momentum: the unused ones keep their defaults and are never read)."""

    name: str
    lr: float
    weight_decay: float
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class DiagnosticsSettings:
    enabled: bool
    every_steps: Optional[int]  # None: a 50th of the run's steps
    probe_size: int
    step_sizes: tuple[float, ...]
    ics: bool


@dataclass(frozen=True, eq=False)
class RunSettings:
    """Everything a run's training, evaluation and job dir read from its config."""

    seed: int
    epochs: int
    batch_size: int
    drop_last: bool
    eval_batch_size: int
    precise_bn: bool
    divergence_loss: float
    device: str
    threads: Optional[int]
    force: bool
    extend: bool
    optim: OptimSettings
    diagnostics: DiagnosticsSettings
    identity: dict  # what determines the run's numbers (config.identity)
    model: Any  # the model's spec: a read-only config node (core.model.build_model)
    data: Any  # the data's spec: a read-only config node (core.data.load_dataset)
    logger: Any  # which loggers: a read-only config node (jobs.loggers)


def run_settings(cfg) -> RunSettings:
    """cfg (a composed config) checked and resolved into a RunSettings; ConfigError
    (one line naming the key) for a value that cannot work."""
    from fashionbn.config.validation import Values, check_config

    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    check_config(cfg, resolved)
    values = Values(resolved)  # (read at a dict's cost, not a config node's)
    optim, diagnostics = values.optim, values.diagnostics
    every = diagnostics.every_steps
    return RunSettings(
        seed=int(values.seed),
        epochs=int(values.epochs),
        batch_size=int(values.batch_size),
        drop_last=bool(values.data.drop_last),
        eval_batch_size=int(values.data.eval_batch_size),
        precise_bn=bool(values.precise_bn),
        divergence_loss=float(values.divergence_loss),
        device=str(values.device),
        threads=None if values.threads is None else int(values.threads),
        force=bool(values.force),
        extend=bool(values.extend),
        optim=OptimSettings(
            name=str(optim.name),
            lr=float(optim.lr),
            weight_decay=float(optim.weight_decay),
            **{
                key: kind(optim[key])
                for key, kind in (
                    ("momentum", float),
                    ("nesterov", bool),
                    ("betas", lambda b: tuple(float(x) for x in b)),
                    ("eps", float),
                )
                if key in optim
            },
        ),
        diagnostics=DiagnosticsSettings(
            enabled=bool(diagnostics.enabled),
            every_steps=None if every is None else int(every),
            probe_size=int(diagnostics.probe_size),
            step_sizes=tuple(float(s) for s in diagnostics.step_sizes),
            ics=bool(diagnostics.ics),
        ),
        identity=normalise_identity(resolved),
        model=read_only(cfg.model),
        data=read_only(cfg.data),
        logger=read_only(cfg.logger),
    )


def run_identity(cfg) -> dict:
    """What determines a run's numbers: the resolved config minus where/how it runs."""
    return normalise_identity(
        OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    )


def read_only(node):
    """A resolved, read-only copy of a config node (interpolations fixed now: a
    spec handed on never changes under its holder). Equal specs (the same resolved
    values, compared by repr: 1 is not 1.0 or True) share one copy: it cannot
    change, and a sweep's jobs mostly have the same model, data and loggers."""
    values = OmegaConf.to_container(node, resolve=True)
    key = repr(values)
    copy = _READ_ONLY.get(key)
    if copy is None:
        if len(_READ_ONLY) >= 256:
            _READ_ONLY.clear()
        copy = _READ_ONLY[key] = OmegaConf.create(values)
        OmegaConf.set_readonly(copy, True)
    return copy


_READ_ONLY: dict = {}  # read_only's copies, by the repr of their values
