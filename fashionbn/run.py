"""`python -m fashionbn.run [-m] [overrides]`: train one configuration per job."""

import logging
import os
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from fashionbn.config import register_configs
from fashionbn.results import METRICS_FILE
from fashionbn.train import train_and_evaluate

log = logging.getLogger(__name__)

register_configs()


def threads_per_job(launcher_cfg: DictConfig) -> Optional[int]:
    """Torch threads for one job, so that parallel jobs share the cores, not fight.

    joblib (hydra/launcher=local_parallel): cores // n_jobs; submitit (slurm): the
    job's cpus_per_task; the basic launcher runs one job at a time: None (all cores).
    """
    n_jobs = launcher_cfg.get("n_jobs")
    if n_jobs is not None:
        cores = len(os.sched_getaffinity(0))
        return 1 if n_jobs < 0 else max(1, cores // n_jobs)
    return launcher_cfg.get("cpus_per_task")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Train cfg's model, write metrics.csv into the job dir, return test_acc."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    cfg.data.root = to_absolute_path(cfg.data.root)  # jobs may run from another cwd
    if cfg.threads is None:
        cfg.threads = threads_per_job(hydra_cfg.launcher)
    records = train_and_evaluate(cfg, out_dir)
    log.info("metrics written to %s", out_dir / METRICS_FILE)
    return records[-1]["test_acc"]


if __name__ == "__main__":
    main()
