"""The protocol choices an analysis is made under, applied to a read sweep: which
evaluation of BatchNorm (its running statistics, or precise ones), at which budget
(epoch), and which runs collapsed at evaluation.

- evaluated(): the tables with test/val metrics of the chosen evaluation. With
  "precise", BatchNorm runs take their *_precise columns; models without BatchNorm
  have nothing to recompute and keep theirs.
- at_budget(): the sweep as if every run had been asked for `epoch` epochs: longer
  runs are cut there (the learning rate is constant, so their first epochs *are* the
  shorter run), runs that diverged later count with their epochs before it, shorter
  runs are left out; the same run seen twice counts once.
- collapses(): runs whose evaluated accuracy falls far below their own training
  accuracy at the same epoch.
"""

import dataclasses

import pandas as pd

from fashionbn.analysis.arms import grouping_keys
from fashionbn.analysis.markdown import plural
from fashionbn.analysis.table import BUILT_IN, AggregateError, Sweep, _same_numbers
from fashionbn.jobs.files import EVALUATED, METRIC_COLUMNS

EVALUATIONS = ("default", "precise")
# train − evaluated accuracy above this at the evaluated epoch is a collapse (healthy
# runs here stay within a few points: the largest seen at lr <= 0.3 is about 0.05)
COLLAPSE_MARGIN = 0.2
TRAIN_SET = 60_000  # training samples of FashionMNIST and of MNIST alike


def statistics_word(evaluation: str) -> str:
    """Which statistics BatchNorm evaluates with under `evaluation`."""
    return "precise" if evaluation == "precise" else "running"


def describe_evaluation(evaluation: str) -> str:
    if evaluation == "precise":
        return (
            "precise BatchNorm statistics (each BatchNorm layer's mean and variance "
            "recomputed over the training samples before each evaluation; models "
            "without BatchNorm are evaluated as usual)"
        )
    return (
        "the default: BatchNorm evaluates with its running statistics (an average over "
        "the last training steps, momentum model.bn_momentum)"
    )


def batch_norm_runs(frame: pd.DataFrame) -> pd.Series:
    """Which rows are of runs whose model has BatchNorm: model.norm=batchnorm, a
    plug-in whose target names a BatchNorm (torch.nn.BatchNorm1d, a user's
    MyBatchNorm), or any run that recorded precise statistics (only a model with
    BatchNorm does)."""
    absent = pd.Series(None, index=frame.index, dtype=object)
    built_in = frame.get("model.norm", absent) == "batchnorm"
    plugin = frame.get("model.norm._target_", absent).map(
        lambda target: (
            isinstance(target, str) and "BatchNorm" in target.rsplit(".", 1)[-1]
        )
    )
    precise = frame.get("test_acc_precise", absent).notna()
    return built_in | plugin.astype(bool) | precise


def evaluated(frame: pd.DataFrame, evaluation: str) -> pd.DataFrame:
    """`frame` (results rows) with test/val metrics of `evaluation`; raises
    AggregateError when BatchNorm runs did not record precise statistics."""
    if evaluation == "default" or frame.empty:
        return frame
    batch_norm = batch_norm_runs(frame)
    missing = frame.loc[batch_norm & frame["test_acc_precise"].isna(), "run"].unique()
    if len(missing):
        raise AggregateError(
            f"--metric precise: {plural(len(missing), 'BatchNorm run')} did not record "
            f"precise statistics (e.g. {missing[0]}); run them with precise_bn=true"
        )
    frame = frame.copy()
    for column in EVALUATED:
        frame.loc[batch_norm, column] = frame.loc[batch_norm, f"{column}_precise"]
    return frame


def precise_available(sweep: Sweep) -> bool:
    """Whether every BatchNorm run recorded precise statistics (and there is one)."""
    results = sweep.results
    batch_norm = batch_norm_runs(results)
    return bool(
        batch_norm.any() and results.loc[batch_norm, "test_acc_precise"].notna().all()
    )


def at_budget(sweep: Sweep, epoch: int) -> Sweep:
    """The sweep at `epoch` epochs (see the module docstring)."""
    results, diverged = sweep.results, sweep.diverged_results
    lasted = results.groupby("run")["epoch"].transform("max")
    short = sorted(results.loc[lasted < epoch, "run"].unique())
    kept = results[(lasted >= epoch) & (results["epoch"] <= epoch)]
    if not diverged.empty:  # diverged after the budget: fine up to it
        went = diverged.groupby("run")["epoch"].transform("max")
        later = diverged[(went > epoch) & (diverged["epoch"] <= epoch)]
        kept = pd.concat([kept, later], ignore_index=True)
        still = sorted(set(diverged.loc[went <= epoch, "run"]))
    else:
        still = []
    if kept.empty:
        raise AggregateError(f"--at-epoch {epoch}: no run lasted {epoch} epochs")
    kept, same = once(kept.assign(epochs=epoch), sweep.params)
    notes = list(sweep.notes)
    if short:
        notes.append(
            f"at epoch {epoch}: {plural(len(short), 'run')} ended earlier and "
            f"{'is' if len(short) == 1 else 'are'} left out (e.g. {short[0]})"
        )
    params = sweep.diverged_params
    return dataclasses.replace(
        sweep,
        results=kept,
        group_keys=grouping_keys(kept, sweep.params),
        diverged=[(run, how) for run, how in sweep.diverged if run in still],
        diverged_params=params[params["run"].isin(still)] if len(params) else params,
        diagnostics=sweep.diagnostics[sweep.diagnostics["epoch"] <= epoch]
        if not sweep.diagnostics.empty
        else sweep.diagnostics,
        duplicates=[*sweep.duplicates, *same],
        notes=notes,
    )


def once(
    frame: pd.DataFrame, params: list[str]
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Each run once: runs with every parameter equal (a 5-epoch run and the first 5
    epochs of a 20-epoch one) must agree, and count once (the one that measured
    precise statistics, if one did). Also returns (run left out, run kept) pairs."""
    keys = [p for p in params if p in frame]
    precise = frame.groupby("run")["test_acc_precise"].transform(
        lambda column: column.notna().any()
    )
    order = frame.assign(_precise=precise).sort_values(
        ["_precise", "run", "epoch"], ascending=[False, True, True]
    )
    kept: dict[tuple, pd.DataFrame] = {}
    same = []
    for run, rows in order.groupby("run", sort=False):
        key = tuple(str(rows[k].iloc[0]) for k in keys)
        if key not in kept:
            kept[key] = rows
            continue
        first = kept[key][METRIC_COLUMNS].reset_index(drop=True)
        difference = _same_numbers(first, rows[METRIC_COLUMNS].reset_index(drop=True))
        if difference:
            raise AggregateError(
                f"{kept[key]['run'].iloc[0]} and {run} are the same run up to this "
                f"epoch but differ ({difference}): refusing to count either"
            )
        same.append((run, kept[key]["run"].iloc[0]))
    return pd.concat(kept.values(), ignore_index=True).drop(columns="_precise"), same


def collapses(frame: pd.DataFrame, margin: float = COLLAPSE_MARGIN) -> pd.DataFrame:
    """Runs whose test or validation accuracy at their last epoch in `frame` falls
    more than `margin` below their training accuracy of that epoch: run, model, epoch,
    train_acc, test_acc, val_acc (one row per run)."""
    last = frame[frame["epoch"] == frame.groupby("run")["epoch"].transform("max")]
    worst = last[["test_acc", "val_acc"]].min(axis=1, skipna=True)
    return last[last["train_acc"] - worst > margin]


def why_collapsed(row: pd.Series) -> str:
    """The likely cause of one collapse (a results row with its parameters), and what
    to try."""
    causes = []
    if bool(batch_norm_runs(row.to_frame().T).iloc[0]):
        causes.append(
            "BatchNorm evaluates with running statistics that lag weights moving this "
            "fast"
        )
    size, source = row.get("data.train_size"), row.get("data._target_")
    if pd.isna(size) and isinstance(source, str) and source != BUILT_IN:
        left = 0  # a data plug-in's train set: its size is not in the results
    else:
        samples = (TRAIN_SET if pd.isna(size) else int(size)) - int(
            row.get("data.val_size") or 0
        )
        left = samples % int(row.get("batch_size", 64))
    if left and not row.get("data.drop_last"):
        causes.append(
            f"the epoch ended on an incomplete batch of {left} samples, one noisy step "
            "just before the evaluation"
        )
    cause = "; ".join(causes) or "one noisy last step before the evaluation"
    tries = "data.drop_last=true, precise_bn=true (then --metric precise), a smaller "
    return f"likely {cause}; try {tries}optim.lr"
