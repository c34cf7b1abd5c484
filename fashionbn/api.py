"""The few functions a notebook needs, without the command line:

    from fashionbn import api
    cfg = api.config(["model=batchnorm", "epochs=2"])   # composed like the CLI
    records = api.train(cfg)                            # in memory, or job_dir=...
    sweep = api.load_sweep("multirun/sweep")            # tables the report is made of
    model = api.load_model("multirun/sweep/model=batchnorm,seed=0")

Nothing here changes process-wide state behind the caller's back: train() puts torch's
thread count back as it found it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fashionbn.config import FashionbnError, register_configs
from fashionbn.config.validation import check_config
from fashionbn.core.model import build_model
from fashionbn.jobs.checkpoint import load_checkpoint

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/ composed with `overrides` exactly as `python -m fashionbn.run` composes
    it (the schemas check keys and types), not yet checked for values that cannot
    work (config() does that)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def config(overrides: Sequence[str] = ()) -> DictConfig:
    """A run's config from overrides such as "model=batchnorm" or "optim.lr=0.1",
    composed like the CLI and validated
    (fashionbn.config.validation: one clear error)."""
    cfg = compose_config(overrides)
    check_config(cfg)
    return cfg


def train(cfg: DictConfig, job_dir: Optional[str | Path] = None) -> list[dict]:
    """Train `cfg`: in memory (job_dir None: nothing is written), or into `job_dir`
    with every rule of a job dir (resume, skip when finished, refuse another config);
    the dir gets `.hydra/config.yaml` as under the CLI, so load_sweep and the
    aggregate find it. Returns one record per epoch (the columns of metrics.csv).
    torch's thread count is put back afterwards, whatever cfg.threads says."""
    from fashionbn.core.train import train_and_evaluate
    from fashionbn.jobs.job import run_job

    if job_dir is None:
        return train_and_evaluate(cfg)
    hydra_config = Path(job_dir) / ".hydra" / "config.yaml"
    if not hydra_config.exists():  # what Hydra writes for a job of the CLI
        hydra_config.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, hydra_config)
    records = run_job(cfg, Path(job_dir))
    OmegaConf.save(cfg, hydra_config)  # the dir holds this config's run (extended)
    return records


@dataclass
class LoadedSweep:
    """The tables a report is made of (the aggregate writes them as csv files)."""

    results: pd.DataFrame  # results.csv: one row per (run, epoch)
    summary: pd.DataFrame  # summary.csv: per group and epoch, n, mean, std
    comparisons: pd.DataFrame  # comparisons.csv: every gap and its statistics
    selection: Optional[pd.DataFrame]  # selection.csv, when there is a selection
    diagnostics: Optional[pd.DataFrame]  # diagnostics_summary.csv, with diagnostics
    group_keys: list[str]  # what the groups differ in ("model" first)


def load_sweep(
    *sweep_dirs: str | Path,
    select_by: str = "val_acc",
    baseline: str = "baseline",
    metric: str = "default",
    at_epoch: Optional[int] = None,
    precision: float = 0.01,
) -> LoadedSweep:
    """Read the job dirs under `sweep_dirs` (nothing is written) into the tables of
    `python -m fashionbn.aggregate` with the same options."""
    from fashionbn.analysis.protocol import at_budget
    from fashionbn.analysis.summary import analyse
    from fashionbn.analysis.table import read_sweep

    sweep = read_sweep([Path(d) for d in sweep_dirs])
    if at_epoch is not None:
        sweep = at_budget(sweep, at_epoch)
    analysis = analyse(sweep, 0.7, precision, select_by, baseline, metric)
    return LoadedSweep(
        results=sweep.results,
        summary=analysis.summary,
        comparisons=analysis.comparisons,
        selection=analysis.selection.table if analysis.selection else None,
        diagnostics=analysis.diagnostics,
        group_keys=sweep.group_keys,
    )


def load_model(job_dir: str | Path) -> nn.Module:
    """The trained network of a job dir, in evaluation mode, with the weights (and
    BatchNorm statistics) of its last finished epoch, from its verified checkpoint
    (digest checked, loaded without pickle). Raises FashionbnError saying why not."""
    checkpoint, problem = load_checkpoint(Path(job_dir))
    if checkpoint is None:
        raise FashionbnError(f"{job_dir}: {problem}")
    model = build_model(OmegaConf.create(checkpoint.identity["model"]))
    model.load_state_dict(checkpoint.state["model"])
    return model.eval()
