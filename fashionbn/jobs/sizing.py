"""How many runs train as one cohort: on CUDA what half the free memory holds, on
the CPU what the largest CPU cache holds (measured: docs/launchers.md), split into
cohorts of even size; hydra.launcher.max_cohort overrides it.
"""

from pathlib import Path

import torch

from fashionbn.config.settings import RunSettings
from fashionbn.core.stacking import footprint


def cohort_limit(run: RunSettings, device: torch.device) -> int:
    """Runs per cohort. On CUDA as many as half the free memory holds, at a
    generous estimate per run (weights, gradients, momentum and the activations of
    a batch, four times over). On the CPU as many as the largest CPU cache holds
    once (the same working set, counted once): measured on a 2-core EPYC with a
    32 MiB L3 (docs/launchers.md), 150 one-epoch MLP runs took 87 s in one cohort,
    65 s in cohorts of 32 or 64, 71 s of 16 and 94 s of 4; this rule gives ~29."""
    weights, activations = footprint(run)  # numbers of float32 values
    per_run = 4 * (3 * weights + run.batch_size * activations)  # bytes
    if device.type != "cuda":
        return max(1, cpu_cache_bytes() // per_run)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(free * 0.5 // (4 * per_run)))


def cohort_size(run: RunSettings, device: torch.device, max_cohort) -> int:
    """Runs per cohort: max_cohort where it is set, else cohort_limit; 1 where the
    run's model or data cannot be built to be measured (each such job then fails
    on its own, with its own line, where its cohort is set up)."""
    if max_cohort:
        return max_cohort
    try:
        return cohort_limit(run, device)
    except Exception:  # noqa: BLE001 - the job's own error comes where it is built
        return 1


def cpu_cache_bytes(cpu: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The size of the CPU's largest (last-level) cache, from Linux's sysfs; 8 MiB
    where it cannot be read."""
    sizes = []
    for index in cpu.glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        if text[-1:].upper() in units and text[:-1].isdigit():
            sizes.append(int(text[:-1]) * units[text[-1].upper()])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=8 * 2**20)


def split(members: list, limit: int, even: bool) -> list[list]:
    """members in cohorts of at most `limit`; `even`: as few cohorts as that allows,
    of sizes differing by one at most (150 runs at 29 a cohort: 6 of 25, not five
    of 29 and one of 5), else `limit` each and the rest last (max_cohort as set)."""
    if not even:
        return [members[i : i + limit] for i in range(0, len(members), limit)]
    count = -(-len(members) // limit)  # ceil
    base, extra = divmod(len(members), count)
    cohorts, start = [], 0
    for k in range(count):
        size = base + (k < extra)
        cohorts.append(members[start : start + size])
        start += size
    return cohorts
