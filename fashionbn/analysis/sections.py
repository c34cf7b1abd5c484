"""The report's sections beyond the observations: how sure (every comparison's
statistics), the tuned comparison (each model at its best setting), and why (what the
diagnostics measured)."""

import math

import pandas as pd

from fashionbn.analysis.markdown import (
    group_label,
    interval,
    mean_std,
    p_text,
    robust_cell,
    signed,
    table_row,
    tail_note,
)
from fashionbn.analysis.protocol import statistics_word
from fashionbn.analysis.robustness import describe_cell
from fashionbn.analysis.stats import (
    FAR_OUT_IQRS,
    HEAVY_KURTOSIS,
    LEVEL,
    MIN_BOOTSTRAP_PAIRS,
)


def comparisons_section(table: pd.DataFrame, keys: list[str], precision: float):
    """The statistics of every gap the report states, as a table with its legend."""
    if table.empty:
        return []
    facet_keys = [k for k in keys if k != "model"]
    lines = [
        "## How sure: paired comparisons",
        "",
        "| comparison | where | epoch | n | mean gap | 95 % t-interval | 95 % BCa "
        "bootstrap | IQM [95 % bootstrap] | median [95 % bootstrap] | tails | "
        "P(improvement) [95 % Wilson] | p (paired t) | p (Holm) | "
        f"seeds for ±{precision:g} (robust) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        where = ", ".join(
            f"{k}={row[k]}" for k in facet_keys if k in row and pd.notna(row[k])
        )
        epoch = int(row.epoch)
        if int(row.epoch_reference) != epoch:
            epoch = f"{epoch} (reference: {int(row.epoch_reference)})"
        p_value = p_text(row.p_value) + ("†" if row.p_test == "sign-flip" else "")
        seeds = seeds_text(row)
        share = (
            f"{row.p_improve:.2f} "
            f"{interval(row.p_improve_low, row.p_improve_high, '.2f')}"
        )
        cells = [
            row.comparison, where or "—", epoch, int(row.n),
            signed(row["mean"]), interval(row.ci_low, row.ci_high),
            interval(row.boot_low, row.boot_high), robust_cell(row, "iqm"),
            robust_cell(row, "median"), tail_note(row),
            share, p_value, p_text(row.p_holm), seeds,
        ]  # fmt: skip
        lines.append(table_row(cells))
    family = int(table["p_value"].notna().sum())
    lines += [
        "",
        f"Pairs are seeds (and every other parameter) shared by both models. "
        f"t-interval: Student t over the pairs' gaps. Bootstrap: BCa interval of the "
        f"mean gap (9,999 resamples, fixed random state), given from "
        f"{MIN_BOOTSTRAP_PAIRS} pairs on. P(improvement): the share of pairs in which "
        "the model beats the reference, ties counting half (rliable's probability of "
        "improvement over matched pairs), with a Wilson score interval. p: two-sided "
        "paired t-test of a zero mean gap (†: every pair had the same gap, where t is "
        "undefined: the exact sign-flip permutation p-value, 2/2ⁿ for n equal "
        f"non-zero gaps); Holm: corrected for the {family} "
        "comparisons of this report. IQM: the interquartile mean (the mean of the "
        "middle half of the gaps), median: the middle gap, each with a percentile "
        "bootstrap interval (9,999 resamples of the pairs, fixed random state) from "
        f"{MIN_BOOTSTRAP_PAIRS} pairs on; they do not move with a few collapsed "
        "seeds, the mean does. Tails: heavy where the gaps' excess kurtosis is above "
        f"{HEAVY_KURTOSIS:g} or a gap lies more than {FAR_OUT_IQRS:g} interquartile "
        "ranges beyond a quartile (from 4 pairs on); there, or where mean and IQM "
        "differ in sign, the mean alone is not the answer. Seeds: the pairs the "
        f"observed spread of the gap would need for the {LEVEL:.0%} t-interval to be "
        f"at most ±{precision:g} wide (in brackets: with the spread estimated "
        "robustly, IQR / 1.349, which a few collapsed seeds do not inflate).",
        "",
    ]
    return lines


def seeds_text(row: pd.Series) -> str:
    """'24 (12)': seed pairs for the interval from the observed and the robust
    spread ('—' where unknown)."""

    def count(value) -> str:
        return "—" if not math.isfinite(value) else str(int(value))

    robust = row.get("seeds_needed_robust", math.nan)
    extra = f" ({count(robust)})" if math.isfinite(robust) else ""
    return count(row.seeds_needed) + extra


def generalisation_line(table: pd.DataFrame, keys: list[str], prefix: str) -> str:
    cells = "; ".join(
        f"{group_label(row, keys)}: {mean_std(row['mean'], row['std'], row.n)}"
        for _, row in table.iterrows()
    )
    return (
        f"- {prefix}: train − test accuracy at the last epoch (train accuracy is the "
        f"running accuracy over the epoch's training batches, in training mode): "
        f"{cells}."
    )


def seeds_behind(row: pd.Series) -> str:
    """'n=3', or 'n=1–3 per step' when the runs measured different steps."""
    if row.n_min == row.n_max:
        return f"n={int(row.n_max)}"
    return (
        f"n={int(row.n_min)}–{int(row.n_max)} per step: its runs measured different "
        "steps (another diagnostics.every_steps or run length), so some points rest "
        f"on {int(row.n_min)} seed{'s' if row.n_min > 1 else ''} only"
    )


def why_section(
    why: pd.DataFrame, keys: list[str], reference: str, figures: list[str]
) -> list[str]:
    """What the diagnostics measured, in sentences: how far each group's last hidden
    layer's input distribution moved, and how smooth the landscape was."""
    lines = [
        "## Why: what the diagnostics measured",
        "",
        "On the fixed probe batch, as training sees it, at step 0 and every "
        "`every_steps` steps (`diagnostics.csv`; values are means across seeds):",
        "",
    ]
    for _, row in why.iterrows():
        lines.append(
            f"- {group_label(row, keys)} ({seeds_behind(row)}): from step "
            f"{int(row.first_step)} to step {int(row.last_step)}, the input to its "
            f"last hidden layer's ({row.layer}) "
            f"activation (unit 0) moved its median from {row.act_in_p50_start:+.3f} "
            f"to {row.act_in_p50_end:+.3f} and its 15th–85th percentile range from "
            f"[{row.act_in_p15_start:+.3f}, {row.act_in_p85_start:+.3f}] to "
            f"[{row.act_in_p15_end:+.3f}, {row.act_in_p85_end:+.3f}]; the layer's "
            f"per-unit standard deviation, averaged over its units, went from "
            f"{row.act_in_std_start:.3f} to {row.act_in_std_end:.3f}."
        )
    lines.append("")
    lines.append(
        "Averaged over the run's measurements: "
        + "; ".join(
            f"{group_label(row, keys)}: effective β-smoothness "
            f"{row.beta_smoothness_mean:.4g}, gradient change "
            f"{row.grad_change_mean:.4g}, loss range {row.loss_range_mean:.4g}"
            + (
                f", internal covariate shift ‖G − G′‖ {row.ics_l2_mean:.4g} "
                f"(cosine {row.ics_cos_mean:.3f})"
                if math.isfinite(row.ics_l2_mean)
                else ""
            )
            for _, row in why.iterrows()
        )
        + "."
    )
    lines += [f"- {ratio}" for ratio in smoothness_ratios(why, keys, reference)]
    lines += ["", *[f"![{name}]({name})" for name in figures], ""]
    return lines


def smoothness_ratios(why: pd.DataFrame, keys: list[str], reference: str) -> list[str]:
    """Every model's mean β-smoothness and gradient change over the reference's, at
    the same values of the other group keys."""
    facet_keys = [k for k in keys if k != "model"]
    ratios = []
    groups = why.groupby(facet_keys, dropna=False) if facet_keys else [((), why)]
    for key, part in groups:
        base = part[part["model"] == reference]
        if base.empty:
            continue
        base = base.iloc[0]
        key = key if isinstance(key, tuple) else (key,)
        where = ", ".join(f"{k}={v}" for k, v in zip(facet_keys, key))
        for _, row in part[part["model"] != reference].iterrows():
            beta = row.beta_smoothness_mean / base.beta_smoothness_mean
            change = row.grad_change_mean / base.grad_change_mean
            ratios.append(
                f"{row.model} / {reference}{f' ({where})' if where else ''}: "
                f"β-smoothness ×{beta:.3g}, gradient change ×{change:.3g}."
            )
    return ratios


def arm_text(row: pd.Series, prefix: str) -> str:
    """'optim.lr=0.1 (0.8683) → 0.8645': setting (mean validation) → mean test."""
    val = row[f"{prefix}_val"]
    val = f" ({val:.4f})" if pd.notna(val) else ""
    return f"{row[f'{prefix}_setting']}{val} → {row[f'{prefix}_test']:.4f}"


def robustness_section(table: pd.DataFrame, sentences: list[str]) -> list[str]:
    """'Does the answer depend on the protocol?': a row per protocol cell, then the
    verdict."""
    lines = [
        "## Does the answer depend on the protocol?",
        "",
        "Each cell repeats the tuned comparison (each model at its own best setting, "
        "chosen on validation data at that budget and with that evaluation) under one "
        "choice of the protocol: the epoch's last incomplete batch kept or dropped "
        "(`data.drop_last`), BatchNorm evaluated with its running statistics or with "
        "precise ones (recomputed over the training samples; models without "
        "BatchNorm are evaluated as usual in both), and the budget (the runs cut at "
        "that epoch). The cells are separate comparisons of one question: their "
        f"p-values are corrected together (Holm, {len(table)} comparisons). Collapsed "
        "runs: of all the cell's runs (every setting), those whose test or validation "
        "accuracy at that epoch is more than 0.2 below their training accuracy.",
        "",
        "| drop_last | BN statistics | epochs | comparison | model's setting (val) → "
        "test | reference's setting (val) → test | n | mean gap | 95 % t-interval | "
        "95 % BCa bootstrap | IQM [95 % bootstrap] | tails | P(improvement) | "
        "p (Holm) | collapsed runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        statistics = statistics_word(row.evaluation)
        p_value = p_text(row.p_holm) + ("†" if row.p_test == "sign-flip" else "")
        share = (
            f"{row.p_improve:.2f} "
            f"{interval(row.p_improve_low, row.p_improve_high, '.2f')}"
        )
        cells = [
            str(row["data.drop_last"]).lower(), statistics, int(row.budget),
            row.comparison,
            arm_text(row, "model"), arm_text(row, "reference"),
            int(row.n), signed(row["mean"]), interval(row.ci_low, row.ci_high),
            interval(row.boot_low, row.boot_high), robust_cell(row, "iqm"),
            tail_note(row), share, p_value, f"{int(row.collapsed)} of {int(row.runs)}",
        ]  # fmt: skip
        lines.append(table_row(cells))
    warned = table[table["warnings"].fillna("") != ""]
    if not warned.empty:
        lines += ["", "Selection warnings per cell:"]
        lines += [
            f"- {describe_cell(row)}: {row.warnings}." for _, row in warned.iterrows()
        ]
    lines += ["", *[f"**Verdict.** {sentence}" for sentence in sentences], ""]
    lines += ["![robustness.png](robustness.png)", ""]
    return lines


def as_tuple(key) -> tuple:
    """A groupby key as a tuple (one key gives scalars)."""
    return key if isinstance(key, tuple) else (key,)


def collapse_section(
    rows: pd.DataFrame, reasons: list[str], results: pd.DataFrame, keys: list[str]
) -> list[str]:
    """Runs whose evaluated accuracy fell far below their training accuracy, and how
    many of each group's runs did."""
    lines = [
        "## Evaluation collapses",
        "",
        "Runs whose test or validation accuracy at the evaluated epoch is more than "
        "0.2 below their own training accuracy of that epoch. They are part of every "
        "mean above (nothing is dropped), so a mean with one of them is pulled down "
        "by it:",
        "",
    ]
    for (_, row), reason in zip(rows.iterrows(), reasons):
        val = "" if pd.isna(row.val_acc) else f", val {row.val_acc:.4f}"
        lines.append(
            f"- `{row.run}`: epoch {int(row.epoch)}, train {row.train_acc:.4f}, test "
            f"{row.test_acc:.4f}{val} — {reason}."
        )
    runs = results.drop_duplicates("run").groupby(keys, dropna=False).size()
    found = rows.groupby(keys, dropna=False).size()
    counts = "; ".join(
        f"{group_label(pd.Series(dict(zip(keys, as_tuple(key)))), keys)}: {count} "
        f"of {runs[key]} runs"
        for key, count in found.items()
    )
    lines += ["", f"Collapsed runs per group: {counts}.", ""]
    return lines
