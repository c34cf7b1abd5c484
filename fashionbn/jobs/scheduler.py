"""hydra/launcher=slurm on a cluster without accounting: submitit asks `sacct` for its
jobs' states, and where sacct does not answer (no slurmdbd: many small clusters, and
the one-node cluster of .ci/slurm-up) it warns at every poll that "status may be
inaccurate". ask_squeue_without_accounting makes it ask `squeue` instead there (the
jobs the controller still holds, finished ones included for MinJobAge), in sacct's
parsable format; with accounting nothing changes."""

import functools
import os
import subprocess
from typing import Optional


@functools.cache
def accounting() -> bool:
    """Whether sacct answers on this machine (asked once)."""
    try:
        done = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True,
                              timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def squeue_command(job_ids: list[str]) -> list[str]:
    """A command printing what `sacct -o JobID,State,NodeList --parsable2 -j ...`
    prints for these jobs, from squeue (ids passed as an argument, never parsed by
    the shell)."""
    script = "echo 'JobID|State|NodeList'; squeue -h -t all -o '%i|%T|%N' -j \"$1\""
    return ["sh", "-c", script, "squeue-as-sacct", ",".join(sorted(job_ids))]


def ask_squeue_without_accounting() -> None:
    """Make submitit's SLURM watcher ask squeue where sacct does not answer (once per
    process; a no-op without submitit)."""
    try:
        from submitit.slurm.slurm import SlurmInfoWatcher
    except ImportError:
        return
    original = SlurmInfoWatcher._make_command
    if getattr(original, "asks_squeue", False):
        return

    def make_command(self):
        command = original(self)
        if command is None or command[:1] != ["sacct"] or accounting():
            return command
        ids = [command[i + 1] for i, word in enumerate(command[:-1]) if word == "-j"]
        return squeue_command(ids)

    make_command.asks_squeue = True  # type: ignore[attr-defined]
    SlurmInfoWatcher._make_command = make_command


def slurm_job_id() -> Optional[str]:
    """The SLURM job this process runs in, as squeue shows it (`54_1` for a task of
    a job array), or None outside SLURM."""
    array, task = (
        os.environ.get("SLURM_ARRAY_JOB_ID"),
        os.environ.get("SLURM_ARRAY_TASK_ID"),
    )
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
