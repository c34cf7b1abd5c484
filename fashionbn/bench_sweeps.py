"""`python -m fashionbn.bench --sweep | --launchers | --overhead`: sweeps timed as
whole processes, what a user waits for, start-up included, each in a fresh sweep
dir, in one invocation so that the machine's noise hits every variant alike
(compare ratios measured in one run, not figures from different days). Part of the
bench command (fashionbn.bench holds its options).
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fashionbn.api import compose_config
from fashionbn.config import register_configs
from fashionbn.core.data import dataset_name, ensure_dataset


def process_seconds(command: list[str]) -> float:
    """Wall time of a whole process (start-up included); it must succeed."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def whole_sweep(args) -> None:
    """Time, as whole processes, the default sweep with fashionbn.run -m (the basic
    launcher, and local_parallel: 2 jobs x 1 thread) against the notebook's pipeline
    doing the same runs (one process: a notebook's loop)."""
    python = [sys.executable, "-m"]
    register_configs()
    cfg = compose_config(args.overrides)
    ensure_dataset(cfg.data.root, cfg.data.system_dir, cfg.data.download,
                   dataset_name(cfg.data))  # fmt: skip
    runs = f"{len(args.models)} models x {args.seeds} seeds, {args.epochs} epochs"
    print(f"whole sweep as processes ({runs}), {args.repeats} repeat(s) (median)")
    launchers = {"fashionbn": [], "fashionbn, local_parallel": [
        "hydra/launcher=local_parallel"]}  # fmt: skip
    seconds: dict = {name: [] for name in ["reference", *launchers]}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            reference = [*python, "fashionbn.bench", "--reference-sweep",
                         "--models", *args.models, "--seeds", str(args.seeds),
                         "--epochs", str(args.epochs), *args.overrides]  # fmt: skip
            seconds["reference"].append(process_seconds(reference))
            for name, launcher in launchers.items():
                sweep_dir = f"{tmp}/{len(launcher)}-{repeat}"  # a fresh one each time
                sweep = [*python, "fashionbn.run", "-m",
                         f"model={','.join(args.models)}",
                         f"seed={','.join(map(str, range(args.seeds)))}",
                         f"epochs={args.epochs}", f"hydra.sweep.dir={sweep_dir}",
                         *launcher, *args.overrides]  # fmt: skip
                seconds[name].append(process_seconds(sweep))
    median = {name: statistics.median(times) for name, times in seconds.items()}
    print(f"{'pipeline':<26} {'seconds':>8} {'ratio':>6}")
    for name, value in median.items():
        print(f"{name:<26} {value:>8.1f} {median['reference'] / value:>5.1f}x")
    startup(python)


# the sweeps --launchers times: the default one and the fair_lr preset
LAUNCHER_SWEEPS = {
    "default": ["model=baseline,batchnorm", "seed=0,1,2"],  # 6 runs
    "fair_lr": ["experiment=fair_lr"],  # 60 runs
}


def announce(overrides: list[str]) -> None:
    """The dataset the overrides name made ready (before any timing), and a line
    saying what runs where."""
    register_configs()
    cfg = compose_config(overrides)
    ensure_dataset(cfg.data.root, cfg.data.system_dir, cfg.data.download,
                   dataset_name(cfg.data))  # fmt: skip
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    print(f"torch {torch.__version__}; {cuda}; overrides: {' '.join(overrides)}")


def launchers(args) -> None:
    """Time, as whole processes in this one invocation, each sweep of
    LAUNCHER_SWEEPS under the basic launcher and the batched one, on the device the
    overrides choose (device=auto: CUDA where there is one). Also the training and
    evaluation seconds the runs record (metrics.csv's `seconds`, summed)."""
    import pandas as pd

    python = [sys.executable, "-m"]
    announce(args.overrides)
    print(f"{'sweep':<30} {'launcher':<8} {'wall s':>7} {'epochs s':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sweeps:
            if name not in LAUNCHER_SWEEPS:
                raise SystemExit(f"--sweeps {name}: one of {list(LAUNCHER_SWEEPS)}")
            sweep, wall = LAUNCHER_SWEEPS[name], {}
            for launcher in ("basic", "batched"):
                sweep_dir = Path(tmp) / f"{len(wall)}-{name}"
                command = [*python, "fashionbn.run", "-m", *sweep,
                           f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}",
                           *args.overrides]  # fmt: skip
                wall[launcher] = process_seconds(command)
                epochs = sum(
                    pd.read_csv(path)["seconds"].sum()
                    for path in sweep_dir.glob("*/metrics.csv")
                )
                ratio = wall["basic"] / wall[launcher]
                runs = len(list(sweep_dir.glob("*/metrics.csv")))
                label = f"{name} ({runs} runs)"
                print(f"{label:<30} {launcher:<8} {wall[launcher]:>7.1f} "
                      f"{epochs:>9.1f} {ratio:>5.1f}x")  # fmt: skip


def startup(python: list[str]) -> None:
    """What starting a process costs, and where it goes."""
    with tempfile.TemporaryDirectory() as tmp:
        parts = {
            "python -c 'import torch'": [python[0], "-c", "import torch"],
            "python -c 'import fashionbn.run' (torch, hydra, fashionbn)": [
                python[0], "-c", "import fashionbn.run"],
            "python -m fashionbn.run, 1 epoch on 64 samples": [
                *python, "fashionbn.run", "epochs=1", "data.train_size=64",
                "data.test_size=64", f"hydra.run.dir={tmp}/run"],
        }  # fmt: skip
        print("process start-up, median of 3:")
        for name, command in parts.items():
            value = statistics.median(process_seconds(command) for _ in range(3))
            print(f"  {value:5.2f} s  {name}")


# --overhead: a tiny job (its training a few ms), and the runs of the cohort sweep
TINY_JOB = ["epochs=1", "data.train_size=640", "data.test_size=1000"]
COHORT_SWEEP = ["model=baseline", "optim.lr=0.1", "epochs=1", "data.val_size=10000"]


# --overhead: a run-epoch's files as the MLP writes them (checkpoint, metrics, status)
RUN_EPOCH_FILES = {"checkpoint.pt": 240_000, "metrics.csv": 600, "status.json": 1_300}


def durable_writes(cohorts: tuple[int, ...] = (1, 16, 150), epochs: int = 3) -> None:
    """Milliseconds per run-epoch to write a run's files (the MLP's sizes) as a
    cohort of each size writes them: each file synced and renamed at once, and
    every run's files of an epoch made durable together (two syncs)."""
    from fashionbn.core.atomic import atomic_write, durable_together, one_by_one

    print(f"durable writes, ms per run-epoch ({', '.join(RUN_EPOCH_FILES)}; "
          f"{epochs} epochs)")  # fmt: skip
    print(f"{'runs':>5} {'one by one':>11} {'together':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # the disk job dirs are on
        for runs in cohorts:
            dirs = [Path(tmp) / f"{runs}-{k}" for k in range(runs)]
            for directory in dirs:
                directory.mkdir()
            seconds = {}
            for name, block in (("one by one", one_by_one),
                                ("together", durable_together)):  # fmt: skip
                start = time.perf_counter()
                for _ in range(epochs):
                    with block():
                        for directory in dirs:
                            for file, size in RUN_EPOCH_FILES.items():
                                data = bytes(size)
                                atomic_write(directory / file,
                                             lambda f: f.write(data), "wb")  # fmt: skip
                seconds[name] = (time.perf_counter() - start) / (runs * epochs)
            apart, together = seconds["one by one"], seconds["together"]
            print(f"{runs:>5} {apart * 1000:>11.2f} {together * 1000:>9.2f} "
                  f"{apart / together:>5.1f}x")  # fmt: skip


def overhead(args) -> None:
    """What a sweep costs beyond its training, as whole processes under the batched
    launcher: 1 tiny job against `--jobs` of them (the cost per job, with jobs
    composed once per config-group choice and set up without run_job's copies,
    and composed and set up by Hydra for every job; --repeats, median), then
    `--runs` runs of one epoch under the basic launcher and in cohorts of each
    `--cohorts` size (and the default size, named by the runs' status.json)."""
    python = [sys.executable, "-m"]
    announce(args.overrides)
    compile_sources()
    durable_writes()
    with tempfile.TemporaryDirectory() as tmp:

        def sweep(name: str, overrides: list[str]) -> tuple[float, Path]:
            sweep_dir = Path(tmp) / name
            command = [*python, "fashionbn.run", "-m", *overrides,
                       f"hydra.sweep.dir={sweep_dir}", *args.overrides]  # fmt: skip
            return process_seconds(command), sweep_dir

        repeats = args.repeats or 3
        print(f"per job, batched launcher, a tiny job: {' '.join(TINY_JOB)} "
              f"({repeats} repeats, alternating; median)")  # fmt: skip
        print(f"{'jobs set up':<22} {'1 job s':>8} {f'{args.jobs} jobs s':>10} "
              f"{'ratio':>6} {'per job ms':>11}")  # fmt: skip
        setups = (("once, lean (default)", "true"), ("by Hydra, every job", "false"))
        for name, setting in setups:
            launcher = [
                "hydra/launcher=batched",
                f"hydra.launcher.compose_once={setting}",
                *TINY_JOB,
            ]
            times: dict[int, list[float]] = {1: [], args.jobs: []}
            for repeat in range(repeats):
                for jobs in times:
                    seeds = f"seed=range(0,{jobs})"
                    wall, _ = sweep(f"{setting}-{jobs}-{repeat}", [*launcher, seeds])
                    times[jobs].append(wall)
            one = statistics.median(times[1])
            many = statistics.median(times[args.jobs])
            per_job = (many - one) / (args.jobs - 1) * 1000
            print(f"{name:<22} {one:>8.2f} {many:>10.2f} {many / one:>5.2f}x "
                  f"{per_job:>11.1f}")  # fmt: skip
        runs = [*COHORT_SWEEP, f"seed=range(0,{args.runs})"]
        print(f"{args.runs} runs x 1 epoch: {' '.join(COHORT_SWEEP)}")
        print(f"{'launcher':<10} {'cohort':>7} {'wall s':>7} {'ratio':>6}")
        basic, _ = sweep("basic", [*runs, "hydra/launcher=basic"])
        print(f"{'basic':<10} {'-':>7} {basic:>7.1f} {1:>5.1f}x")
        for size in [None, *args.cohorts]:
            setting = "null" if size is None else str(size)
            wall, sweep_dir = sweep(f"cohort-{setting}", [
                *runs, "hydra/launcher=batched", f"hydra.launcher.max_cohort={setting}",
            ])  # fmt: skip
            label = str(size) if size else f"auto {largest_cohort(sweep_dir)}"
            print(f"{'batched':<10} {label:>7} {wall:>7.1f} {basic / wall:>5.1f}x")


def compile_sources() -> None:
    """fashionbn's and its Hydra plug-ins' bytecode written before anything is
    timed: where it is stale and cannot be written (PYTHONDONTWRITEBYTECODE), every
    process would compile them again at start-up, which lengthens a one-job run and
    so flatters the per-job ratio."""
    import fashionbn
    import hydra_plugins

    plugins = ("fashionbn_batched_launcher", "fashionbn_slurm_launcher",
               "fashionbn_sweeper")  # fmt: skip
    dirs = [str(Path(fashionbn.__file__).resolve().parent)]
    for path in hydra_plugins.__path__:  # (a namespace: a dir may be there twice)
        for name in plugins:
            plugin = Path(path).resolve() / name
            if plugin.is_dir() and str(plugin) not in dirs:
                dirs.append(str(plugin))
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=False)
    print("bytecode compiled first: " + ", ".join(Path(d).name for d in dirs))


def largest_cohort(sweep_dir: Path) -> int:
    """The largest cohort a sweep's runs were trained in (their status.json)."""
    import json

    sizes = [
        execution.get("cohort", 1)
        for path in sweep_dir.glob("*/status.json")
        for execution in json.loads(path.read_text()).get("execution", [])
    ]
    return max(sizes, default=0)
