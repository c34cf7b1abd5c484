"""`python -m fashionbn.run [-m] [overrides]`: train one configuration per job."""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from fashionbn.config import register_configs
from fashionbn.results import METRICS_FILE
from fashionbn.train import train_and_evaluate

log = logging.getLogger(__name__)

register_configs()
# job dir names come from overrides; a '/' in a value must not create nested dirs
OmegaConf.register_new_resolver(
    "fashionbn_dirname", lambda name: name.replace("/", "_"), replace=True
)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Train cfg's model, write metrics.csv into the job dir, return test_acc."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg.data.root = to_absolute_path(cfg.data.root)  # jobs may run from another cwd
    records = train_and_evaluate(cfg, out_dir)
    log.info("metrics written to %s", out_dir / METRICS_FILE)
    return records[-1]["test_acc"]


if __name__ == "__main__":
    main()
