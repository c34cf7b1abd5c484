"""hydra/launcher=slurm against a real one-node SLURM cluster (`.ci/slurm-up`, which
`.ci/run` starts before the tests): the sweep's numbers equal the basic launcher's, and
no stream of sacct warnings on a cluster without accounting. Skipped, with the command
that starts a cluster, where none answers; FASHIONBN_REQUIRE_SLURM=1 (set by .ci/run)
turns the skip into a failure."""

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from fashionbn.jobs.scheduler import accounting, squeue_command
from tests.conftest import REPO, run_module


def cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                              text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


UP = cluster_answers()
if not UP and os.environ.get("FASHIONBN_REQUIRE_SLURM") == "1":
    raise RuntimeError("FASHIONBN_REQUIRE_SLURM=1 but no SLURM cluster answers sinfo")
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not UP,
        reason="no SLURM cluster answers sinfo: start one "
        "with `sudo bash .ci/slurm-up`",
    ),  # fmt: skip
]

SLURM = ["hydra/launcher=slurm", "hydra.launcher.mem_gb=1",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]  # fmt: skip


def metrics(sweep: Path) -> dict[str, list[dict]]:
    """Each job dir's metrics.csv without the timings, by dir name (empty cells as
    None, so that two empty cells compare equal)."""
    tables = {}
    for job in sorted(sweep.iterdir()):
        if (job / "metrics.csv").is_file():
            frame = pd.read_csv(job / "metrics.csv").drop(columns="seconds")
            tables[job.name] = (
                frame.astype(object).where(frame.notna(), None).to_dict("records")
            )
    return tables


def test_a_sweep_through_slurm_equals_the_basic_launchers(real_data_root, tmp_path):
    common = ["model=baseline,batchnorm", "seed=0", "epochs=2", "threads=1",
              f"data.root={real_data_root}", "data.train_size=600",
              "data.test_size=500", "device=cpu"]  # fmt: skip
    through = run_module(["fashionbn.run", "-m", *common, *SLURM,
                          f"hydra.sweep.dir={tmp_path / 'slurm'}"], REPO)  # fmt: skip
    assert through.returncode == 0, through.stderr[-3000:]
    alone = run_module(["fashionbn.run", "-m", *common,
                        f"hydra.sweep.dir={tmp_path / 'basic'}"], REPO)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    got, expected = metrics(tmp_path / "slurm"), metrics(tmp_path / "basic")
    assert len(got) == 2 and got == expected
    if not accounting():  # the one-node cluster has none: no warning per poll
        assert "sacct" not in through.stdout + through.stderr


def test_squeue_answers_as_sacct_would(tmp_path) -> None:
    """The command submitit asks where sacct does not answer: a job submitted here
    is found by id with its state, in sacct's parsable format, read by submitit."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    job = subprocess.run(["sbatch", "--parsable", "--mem=100M", f"--chdir={tmp_path}",
                          "--wrap", "true"], capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    subprocess.run(["srun", "--mem=100M", "true"], check=True, timeout=120)
    output = subprocess.check_output(squeue_command([job]), text=True)
    assert output.splitlines()[0] == "JobID|State|NodeList"
    info = SlurmInfoWatcher().read_info(output)
    assert info[job]["State"] in {"PENDING", "RUNNING", "COMPLETING", "COMPLETED"}
