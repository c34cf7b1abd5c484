"""`python -m fashionbn.run [-m] [overrides]`: train one configuration per job."""

import logging
import os
from pathlib import Path
from typing import Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from fashionbn.config import FashionbnError, register_configs
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
    """Train cfg's model into the job dir (or finish / skip it); return test_acc.

    A problem with the input (config values, dataset, a job dir holding another
    config) is logged as one line and, where the job runs in this process (basic
    launcher), ends it with exit code 2 before any training; under parallel launchers
    it fails that job and the launcher reports it.
    """
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    cfg.data.root = to_absolute_path(cfg.data.root)  # jobs may run from another cwd
    if cfg.threads is None:
        threads = threads_per_job(hydra_cfg.launcher)
        if threads is not None:
            torch.set_num_threads(threads)
    try:
        records = train_and_evaluate(cfg, out_dir)
    except FashionbnError as err:
        log.error("error: %s", err)
        if hydra_cfg.launcher._target_.endswith("BasicLauncher"):
            raise SystemExit(2) from None
        raise
    log.info("metrics in %s", out_dir / METRICS_FILE)
    return records[-1]["test_acc"]


if __name__ == "__main__":
    main()
