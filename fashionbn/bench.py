"""`python -m fashionbn.bench`: fashionbn's training path vs the notebook's pipeline.

Both train the same model with the same optimizer on the real FashionMNIST, one after
the other in this process (alternating, several repeats); the median is reported.
- reference: torchvision FashionMNIST with transform=ToTensor() and
  DataLoader(batch_size=64, shuffle=True), the loop of the original notebook;
- fashionbn: fashionbn.jobs.job.run_job, exactly what fashionbn.run calls.
Timings include loading the data, training and the per-epoch test evaluation.
`--sweep` times whole processes instead: the default sweep (`fashionbn.run -m`, cold
start, fresh sweep dir) against one process running the notebook's pipeline for the
same runs, and then what a process's start-up costs.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from fashionbn.api import compose_config
from fashionbn.bench_sweeps import (
    LAUNCHER_SWEEPS,
    launchers,
    overhead,
    whole_sweep,
)
from fashionbn.config import register_configs
from fashionbn.core.data import clear_cache, dataset_name, ensure_dataset
from fashionbn.core.model import build_model
from fashionbn.core.train import seed_everything
from fashionbn.jobs.job import run_job


def reference_run(cfg) -> float:
    """The notebook's pipeline: PIL images through ToTensor per sample, every epoch."""
    seed_everything(cfg.seed)
    train_set = FashionMNIST(cfg.data.root, train=True, transform=transforms.ToTensor())
    test_set = FashionMNIST(cfg.data.root, train=False, transform=transforms.ToTensor())
    if cfg.data.train_size:  # the same first-N subsets as fashionbn.core.data
        train_set = Subset(train_set, range(cfg.data.train_size))
    if cfg.data.test_size:
        test_set = Subset(test_set, range(cfg.data.test_size))
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=cfg.batch_size, shuffle=False)
    model = build_model(cfg.model)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    test_acc = 0.0
    for _ in range(cfg.epochs):
        model.train()
        running_loss = 0.0
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                correct += (model(images).argmax(dim=1) == labels).sum().item()
        test_acc = correct / len(test_set)
    return test_acc


def fashionbn_run(cfg) -> float:
    """fashionbn's own path, writing metrics.csv to a throwaway dir like a real job.

    The in-process data cache is cleared first: each run pays for loading the data,
    like a single `python -m fashionbn.run` (and like the reference).
    """
    clear_cache()
    with tempfile.TemporaryDirectory() as out_dir:
        return run_job(cfg, Path(out_dir))[-1]["test_acc"]


PIPELINES = {"reference": reference_run, "fashionbn": fashionbn_run}


def timed(runs: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds and last result of every run, alternating them repeats times
    (the machine's noise then hits all of them alike)."""
    seconds: dict = {name: [] for name in runs}
    results = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in seconds.items()}, results


def reference_sweep(args) -> None:
    """The notebook's pipeline doing the default sweep's runs, in this one process."""
    register_configs()
    for model in args.models:
        for seed in range(args.seeds):
            overrides = [f"model={model}", f"epochs={args.epochs}", f"seed={seed}"]
            reference_run(compose_config([*overrides, *args.overrides]))


# --agreement: model kinds (overrides) trained alone and in a cohort of four
AGREEMENT_KINDS = {
    "baseline": ["model=baseline"],
    "batchnorm": ["model=batchnorm"],
    "batchnorm+momentum+val+precise": ["model=batchnorm", "optim.momentum=0.9",
                                       "data.val_size=1000", "precise_bn=true"],
    "layernorm": ["model=layernorm"],
}  # fmt: skip


def agreement(args) -> None:
    """Train each of AGREEMENT_KINDS with optim.lr 0.01, 0.1 x seeds 0, 1 alone (the
    single-run path) and as one cohort, on the device the overrides choose, and
    print the largest difference of every metric over the runs and epochs."""
    from fashionbn.config.settings import run_settings
    from fashionbn.core.batched import train_cohort
    from fashionbn.core.train import (
        checked_data,
        resolve_device,
        start_training,
        train_and_evaluate,
    )

    register_configs()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.epochs} epochs; largest |cohort - alone| per metric")  # fmt: skip
    for kind, extra in AGREEMENT_KINDS.items():
        cfgs = [
            compose_config(
                [
                    *extra,
                    f"epochs={args.epochs}",
                    f"optim.lr={lr}",
                    f"seed={seed}",
                    *args.overrides,
                ]
            )  # fmt: skip
            for lr in (0.01, 0.1)
            for seed in (0, 1)
        ]
        runs = [run_settings(cfg) for cfg in cfgs]
        device = resolve_device(runs[0].device, batched=True)
        alone = [train_and_evaluate(cfg) for cfg in cfgs]
        data = checked_data(runs[0], None, device)
        together = [[] for _ in cfgs]
        trainings = [start_training(run, device) for run in runs]
        train_cohort(runs, trainings, data, together)
        largest: dict = {}
        for runs in zip(alone, together):
            for a, b in zip(*runs):
                for key, value in a.items():
                    if key not in ("epoch", "seconds") and value is not None:
                        largest[key] = max(largest.get(key, 0.0), abs(value - b[key]))
        print(f"{kind} on {device}: "
              + ", ".join(f"{k} {v:.1e}" for k, v in largest.items()))  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    """The command's options (the docs' commands are checked against them)."""
    parser = argparse.ArgumentParser(
        prog="python -m fashionbn.bench",
        description="Time fashionbn's training path against the notebook's "
        "DataLoader+ToTensor pipeline on the real FashionMNIST (default config); "
        "with --diagnostics (--precise-bn), time fashionbn with diagnostics=on "
        "(precise_bn=true) against off; with "
        "--sweep, time the whole default sweep as processes against the notebook's "
        "pipeline doing the same runs.",
    )
    parser.add_argument("--models", nargs="+", default=["baseline", "batchnorm"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=None,
                        help="default: 3 (1 with --sweep)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3, help="--sweep: seeds 0..N-1")
    parser.add_argument(
        "--diagnostics", action="store_true",
        help="measure what diagnostics=on (its defaults) costs a run",
    )  # fmt: skip
    parser.add_argument(
        "--precise-bn", action="store_true",
        help="measure what precise_bn=true (a recomputation of BatchNorm's statistics "
        "and a second evaluation, every epoch) costs a run",
    )  # fmt: skip
    parser.add_argument("--sweep", action="store_true",
                        help="time the whole default sweep as processes")  # fmt: skip
    parser.add_argument(
        "--launchers", action="store_true",
        help="time the default sweep and experiment=fair_lr as processes under the "
        "basic and the batched launcher, on the current device",
    )  # fmt: skip
    parser.add_argument(
        "--sweeps", type=lambda text: text.split(","), default=list(LAUNCHER_SWEEPS),
        help=f"--launchers: which of {','.join(LAUNCHER_SWEEPS)} (comma-separated)",
    )  # fmt: skip
    parser.add_argument(
        "--overhead", action="store_true",
        help="time what a sweep costs beyond its training: 1 tiny job against --jobs "
        "of them under the batched launcher, and --runs one-epoch runs under the "
        "basic launcher and in cohorts of each --cohorts size",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=64,
                        help="--overhead: tiny jobs in the sweep (>= 2)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=150,
                        help="--overhead: runs of the cohort sweep")  # fmt: skip
    parser.add_argument(
        "--cohorts", type=lambda text: [int(n) for n in text.split(",")],
        default=[4, 16, 64], help="--overhead: max_cohort sizes (comma-separated)",
    )  # fmt: skip
    parser.add_argument(
        "--agreement", action="store_true",
        help="how far a batched cohort's numbers are from the single-run path's, "
        "per model kind, on the current device",
    )  # fmt: skip
    parser.add_argument("--reference-sweep", action="store_true",
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra Hydra overrides, e.g. threads=1 data.root=...",
    )
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    args = make_parser().parse_args(argv)
    if args.reference_sweep:
        return reference_sweep(args)
    if args.sweep:
        args.repeats = args.repeats or 1
        return whole_sweep(args)
    if args.launchers:
        return launchers(args)
    if args.overhead:
        if args.jobs < 2 or args.runs < 1 or min(args.cohorts, default=1) < 1:
            raise SystemExit("--overhead: --jobs >= 2, --runs >= 1, --cohorts >= 1")
        return overhead(args)
    if args.agreement:
        return agreement(args)
    args.repeats = args.repeats or 3

    register_configs()
    configs = {}
    for model in args.models:
        overrides = [f"model={model}", f"epochs={args.epochs}", f"seed={args.seed}"]
        configs[model] = compose_config([*overrides, *args.overrides])
        if configs[model].threads is not None:  # both pipelines run with it
            torch.set_num_threads(configs[model].threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.epochs} epochs, {args.repeats} repeats (median), seed {args.seed}"
    )
    # a measurement's cost: the same runs with it off and on
    measured = ("diagnostics=on" if args.diagnostics
                else "precise_bn=true" if args.precise_bn else None)  # fmt: skip
    if measured:
        key = measured.split("=")[0]
        print(f"{'model':<10} {key:<12} {'seconds':>8} {'overhead':>9}")
    else:
        print(
            f"{'model':<10} {'pipeline':<10} {'seconds':>8} {'samples/s':>10} "
            f"{'test_acc':>9} {'ratio':>6}"
        )
    for model, cfg in configs.items():
        ensure_dataset(cfg.data.root, cfg.data.system_dir, cfg.data.download,
                       dataset_name(cfg.data))  # fmt: skip
        if measured:
            with_it = compose_config(
                [f"model={model}", f"epochs={args.epochs}", f"seed={args.seed}",
                 *args.overrides, measured]
            )  # fmt: skip
            runs = {
                "off": lambda: fashionbn_run(cfg),
                "on": lambda: fashionbn_run(with_it),
            }
            median, _ = timed(runs, args.repeats)
            for name in runs:
                extra = median[name] / median["off"] - 1
                print(f"{model:<10} {name:<12} {median[name]:>8.2f} {extra:>+8.1%}")
            continue
        median, accuracy = timed(
            {name: (lambda run=run: run(cfg)) for name, run in PIPELINES.items()},
            args.repeats,
        )
        samples = args.epochs * (cfg.data.train_size or 60_000)
        for name in PIPELINES:
            ratio = median["reference"] / median[name]
            rate = samples / median[name]
            print(
                f"{model:<10} {name:<10} {median[name]:>8.2f} {rate:>10,.0f} "
                f"{accuracy[name]:>9.4f} {ratio:>5.1f}x"
            )


if __name__ == "__main__":
    main()
