"""The few functions a notebook needs, without the command line:

    from fashionbn import api
    cfg = api.config(["model=batchnorm", "epochs=2"])   # composed like the CLI
    records = api.train(cfg)                            # in memory, or job_dir=...
    api.sweep(["model=baseline,batchnorm", "seed=0,1,2"], "multirun/sweep")  # -m
    sweep = api.load_sweep("multirun/sweep")            # tables the report is made of
    model = api.load_model("multirun/sweep/model=batchnorm,seed=0")

Nothing here changes process-wide state behind the caller's back: train() puts torch's
thread count back as it found it.
"""

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fashionbn.config import (
    FashionbnError,
    is_plugin,
    normalise_identity,
    register_configs,
)
from fashionbn.config.validation import check_config
from fashionbn.core.atomic import atomic_write
from fashionbn.core.data import data_facts
from fashionbn.core.model import build_model
from fashionbn.jobs.untrusted import entry_problem

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
HYDRA_CONFIG = ".hydra/config.yaml"  # what the aggregate finds a job dir by


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
    aggregate find it — written only once the dir is accepted, so a refused dir is
    left as it was. Returns one record per epoch (the columns of metrics.csv).
    torch's thread count is put back afterwards, whatever cfg.threads says."""
    from fashionbn.core.train import train_and_evaluate
    from fashionbn.jobs.job import JobDirError, run_job

    if job_dir is None:
        return train_and_evaluate(cfg)
    job_dir = Path(job_dir)
    hydra_config = HYDRA_CONFIG
    problem = entry_problem(job_dir, hydra_config)
    if problem:
        raise JobDirError(f"{job_dir}: {problem}; move it away")

    def write_hydra_config() -> None:  # what Hydra writes for a job of the CLI
        (job_dir / ".hydra").mkdir(exist_ok=True)
        text = OmegaConf.to_yaml(cfg)
        atomic_write(job_dir / hydra_config, lambda f: f.write(text))

    records = run_job(cfg, job_dir, on_ready=write_hydra_config)
    if not (job_dir / hydra_config).exists():  # a finished run of an older api
        write_hydra_config()
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
    # every job dir left out of the tables and why: run, kind (skipped, diverged,
    # duplicate, shorter: the start of a longer run), reason
    skipped: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)  # what else the report would say
    # profile.csv: per model, the share of its seeds at or above each test accuracy
    profile: Optional[pd.DataFrame] = None


# what Hydra's override grammar reads as syntax in a value
HYDRA_SYNTAX = ",'\"=[]{}()$\\"


class SweepFailed(FashionbnError):
    """A sweep started by api.sweep ended with failed jobs (or did not start)."""


def sweep(
    overrides: Sequence[str],
    sweep_dir: str | Path,
    launcher: str = "batched",
    echo: bool = True,
) -> "LoadedSweep":
    """Run the multirun `python -m fashionbn.run -m <overrides>
    hydra/launcher=<launcher> hydra.sweep.dir=<sweep_dir>` — the same command, in
    its own process (a Hydra multirun owns its process's logging) — and return
    load_sweep(sweep_dir). Same job dirs as from the shell: finished jobs are
    skipped and interrupted ones continue when it is called again. `launcher`:
    batched (cohorts: a notebook's sweep at the command's speed), basic,
    local_parallel or slurm. The command's lines are printed as they come (echo);
    SweepFailed (its `error:` lines) when a job fails; an interrupt (Kernel ->
    Interrupt) stops the sweep as Ctrl-C does, its finished epochs saved."""
    if isinstance(overrides, (str, bytes)) or not all(
        isinstance(o, str)
        for o in (overrides if isinstance(overrides, Sequence) else [None])  # fmt: skip
    ):
        raise TypeError(
            "api.sweep(): overrides is a list of strings, one per override "
            '(["model=baseline,batchnorm", "seed=0,1,2"]), not '
            f"{overrides!r}"[:200]
        )
    where = Path(sweep_dir).expanduser().resolve()
    odd = sorted(set(str(where)) & set(HYDRA_SYNTAX))
    if odd:
        raise ValueError(
            f"api.sweep(): sweep_dir {str(where)!r} has characters Hydra's command "
            f"line reads as syntax ({' '.join(odd)}): choose a dir without them"
        )
    command = [sys.executable, "-m", "fashionbn.run", "-m", *overrides,
               f"hydra/launcher={launcher}", f"hydra.sweep.dir={where}"]  # fmt: skip
    lines = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if echo:
                print(line, end="", flush=True)
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()  # SIGTERM: the command stops its jobs as on Ctrl-C
        process.wait()
        raise
    if code != 0:
        said = [line.strip() for line in lines if line.strip()
                and "HYDRA_FULL_ERROR" not in line]  # fmt: skip
        # fashionbn's `error:` lines and exceptions; else Hydra's own message, which
        # comes first, before any log line
        errors = [line for line in said if "error" in line.lower()] or [
            line for line in said if not line.startswith("[")][:2]  # fmt: skip
        raise SweepFailed(
            f"the sweep ended with exit code {code}: " + " | ".join(errors[-5:])
        )
    return load_sweep(sweep_dir)


def load_sweep(
    *sweep_dirs: str | Path,
    select_by: str = "val_acc",
    baseline: str = "baseline",
    metric: str = "default",
    at_epoch: Optional[int] = None,
    precision: float = 0.01,
    select_stat: str = "mean",
) -> LoadedSweep:
    """Read the job dirs under `sweep_dirs` (nothing is written) into the tables of
    `python -m fashionbn.aggregate` with the same options, checked as the command
    checks them (fashionbn.analysis.options: a value it refuses is an error here
    too). `skipped` lists every dir left out and why."""
    from fashionbn.analysis.options import OptionError, check_baseline, checked
    from fashionbn.analysis.protocol import at_budget
    from fashionbn.analysis.summary import analyse
    from fashionbn.analysis.table import read_sweep

    options = checked(0.7, precision, select_by, baseline, metric, at_epoch,
                      select_stat=select_stat)  # fmt: skip
    if len(sweep_dirs) == 1 and isinstance(sweep_dirs[0], (list, tuple)):
        sweep_dirs = tuple(sweep_dirs[0])  # load_sweep([a, b]) as load_sweep(a, b)
    if not sweep_dirs:
        raise OptionError("load_sweep(): give one or more sweep dirs")
    at_epoch = options.at_epoch
    sweep = read_sweep([Path(d) for d in sweep_dirs], at_epoch)
    if at_epoch is not None:
        sweep = at_budget(sweep, at_epoch)
    check_baseline(sweep, None if baseline == "baseline" else baseline)
    analysis = analyse(sweep, options.threshold, options.precision, select_by,
                       baseline, metric, select_stat)  # fmt: skip
    left_out = [
        *[(run, "skipped", why) for run, why in sweep.skipped],
        *[(run, "diverged", how) for run, how in sweep.diverged],
        *[(run, "duplicate", f"same run as {kept}") for run, kept in sweep.duplicates],
        *[(run, "shorter", f"the first epochs of {longer}")
          for run, longer in sweep.extended],
    ]  # fmt: skip
    return LoadedSweep(
        results=sweep.results,
        summary=analysis.summary,
        comparisons=analysis.comparisons,
        selection=analysis.selection.table if analysis.selection else None,
        diagnostics=analysis.diagnostics,
        group_keys=sweep.group_keys,
        skipped=pd.DataFrame(left_out, columns=["run", "kind", "reason"]),
        notes=list(sweep.notes),
        profile=analysis.profile,
    )


def untrusted_plugin(norm: dict) -> Optional[str]:
    """Why building this plug-in (read from a job dir) could run code the dir
    chooses, or None: only a torch.nn class with plain values as arguments is
    built without trust_plugins — no nested _target_ (Hydra instantiates those
    too), no _args_ or other Hydra keys."""
    target = norm["_target_"]
    if not (
        isinstance(target, str) and re.fullmatch(r"torch\.nn\.[A-Za-z]\w*", target)
    ):
        return f"is {str(target)!r:.80}, not a torch.nn class"
    found = getattr(nn, target.rsplit(".", 1)[1], None)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        return f"is {target!r:.80}, not a torch.nn module class"
    for key, value in norm.items():
        if key != "_target_" and (str(key).startswith("_") or not _plain(value)):
            return f"passes {str(key)!r:.40}={str(value)!r:.60} to {target}"
    return None


# model factories fashionbn ships, built from a job dir without trust_plugins
SHIPPED_MODELS = ("fashionbn.core.cnn.small_cnn",)


def untrusted_model(model_cfg: dict) -> Optional[str]:
    """Why building this model (read from a job dir) could run code the dir
    chooses, or None: its factory must be one fashionbn ships, with plain
    arguments, and its normalisation a torch.nn class (untrusted_plugin)."""
    if why := _unshipped("model", model_cfg, SHIPPED_MODELS, "a model"):
        return why
    norm = model_cfg.get("norm")
    if is_plugin(norm) and (why := untrusted_plugin(norm)):
        return f"model's normalisation {why}"
    return None


# data sources fashionbn ships, called from a job dir without trust_plugins (a
# model is built for its data's input shape: the source is called to learn it)
SHIPPED_SOURCES = ("fashionbn.core.sources.sklearn_digits",)


def untrusted_data(data_cfg: dict) -> Optional[str]:
    """Why learning this run's input shape (calling the data source a job dir
    names) could run code the dir chooses, or None."""
    return _unshipped("data", data_cfg, SHIPPED_SOURCES, "a source")


def _unshipped(group: str, cfg: dict, shipped: tuple, what: str) -> Optional[str]:
    """Why `group`'s _target_ (with its args) is not one fashionbn ships with plain
    arguments, or None (also when it names none: the built-in)."""
    target = cfg.get("_target_")
    if target is None:
        return None
    if target not in shipped:
        return f"{group}._target_ is {str(target)!r:.80}, not {what} fashionbn ships"
    args = cfg.get("args") or {}
    if not isinstance(args, dict) or not all(
        not str(k).startswith("_") and _plain(v) for k, v in args.items()
    ):
        return f"{group}.args {str(args)!r:.80} are not plain values"
    return None


def _plain(value) -> bool:
    """A number, string, boolean, null, or a list of them."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def load_model(
    job_dir: str | Path,
    allow_unfinished: bool = False,
    allow_diverged: bool = False,
    trust_plugins: bool = False,
) -> nn.Module:
    """The trained network of a job dir, in evaluation mode, with the weights (and
    BatchNorm statistics) of its last finished epoch, from its verified checkpoint
    (digest checked, loaded without pickle). A run that is not complete is refused
    unless asked for: `allow_unfinished=True` for a running, failed or interrupted
    run (its last saved epoch), `allow_diverged=True` for a diverged one (its
    weights may be huge or NaN). A plug-in normalisation is built from the
    `_target_` the job dir names — code a job dir chooses — only when it is under
    torch.nn, a plug-in model or data source only when fashionbn ships it, or any of
    them with `trust_plugins=True` for a dir you trust (your own runs).
    Raises FashionbnError saying why not."""
    from fashionbn.jobs.files import COMPLETE, DIVERGED, read_status
    from fashionbn.jobs.previous import trusted_checkpoint

    job_dir = Path(job_dir)
    status, problem = read_status(job_dir)
    if status is None:
        raise FashionbnError(
            f"{job_dir}: {problem or 'there is no status.json'}: no run to load"
        )
    epochs, done = status["config"].get("epochs"), status["epochs_done"]
    if status["status"] == DIVERGED and not allow_diverged:
        raise FashionbnError(
            f"{job_dir}: its run diverged at epoch {done} (its weights may be huge "
            "or NaN); allow_diverged=True loads them anyway"
        )
    if status["status"] not in (COMPLETE, DIVERGED) and not allow_unfinished:
        raise FashionbnError(
            f"{job_dir}: its run is not finished ({status['status']} after {done} of "
            f"{epochs} epochs); allow_unfinished=True loads its last saved epoch"
        )
    identity = normalise_identity(status["config"])
    try:
        checkpoint, problem = trusted_checkpoint(job_dir, identity, status)
    except FashionbnError as err:
        raise FashionbnError(f"{job_dir}: {err}") from None
    if checkpoint is None:
        raise FashionbnError(f"{job_dir}: {problem}")
    model_cfg = checkpoint.identity.get("model")
    why = untrusted_model(model_cfg) if isinstance(model_cfg, dict) else None
    data_cfg = checkpoint.identity.get("data")
    why = why or (untrusted_data(data_cfg) if isinstance(data_cfg, dict) else None)
    if why and not trust_plugins:
        raise FashionbnError(
            f"{job_dir}: its {why}: code a job dir names (a sweep dir is untrusted "
            "input); trust_plugins=True builds it for a dir you trust"
        )
    try:
        facts = data_facts(OmegaConf.create(checkpoint.identity.get("data") or {}))
        model = build_model(OmegaConf.create(checkpoint.identity["model"]), *facts)
        model.load_state_dict(checkpoint.state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise FashionbnError(
            f"{job_dir}: checkpoint.pt does not hold a network this fashionbn can "
            f"build ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    return model.eval()
