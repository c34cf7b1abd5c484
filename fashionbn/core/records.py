"""What the loop produces: one record per epoch with these columns, a status per run.

The job-dir files (fashionbn.jobs.files) write exactly these columns; they are defined
here so that the loop names its own output without knowing about files, and so that
every per-epoch metric is named once: the loggers log METRIC_COLUMNS, the aggregate
summarises SUMMARISED and evaluates EVALUATED (and their *_precise twins) in the
protocol's cells.
"""

# every results format has these, in this order
REQUIRED_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "seconds",
]
# the metrics an evaluation computes on a split (fashionbn.core.evaluation); each has
# a *_precise twin, the same evaluation with precise BatchNorm statistics
EVALUATED = ["test_acc", "test_loss", "val_acc", "val_loss"]
# evaluation with precise BatchNorm statistics (fashionbn.core.precise_bn)
PRECISE_COLUMNS = ["val_loss_precise", "val_acc_precise", "test_loss_precise",
                   "test_acc_precise"]  # fmt: skip
# format 3: val_loss and val_acc (empty without a validation split), then the four
# *_precise columns (empty unless precise_bn=true and the model has BatchNorm; files
# written before they existed end at val_acc and read as empty)
METRIC_COLUMNS = [*REQUIRED_COLUMNS, "val_loss", "val_acc", *PRECISE_COLUMNS]
# what the aggregate summarises per group and epoch, in summary.csv's order (val_*:
# NaN where runs have no validation split)
SUMMARISED = ["test_acc", "test_loss", "train_acc", "train_loss", "seconds", "val_acc",
              "val_loss"]  # fmt: skip
DIAGNOSTIC_COLUMNS = ["step", "epoch", "layer", "quantity", "value"]
# how a training run can end (the job-dir format adds "running" and "failed")
COMPLETE, DIVERGED = "complete", "diverged"
# a run of a cohort its caller stopped (its epoch could not be saved): the others go on
STOPPED = "stopped"
