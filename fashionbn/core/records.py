"""What the loop produces: one record per epoch with these columns, a status per run.

The job-dir files (fashionbn.jobs.files) write exactly these columns; they are defined
here so that the loop names its own output without knowing about files.
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
# evaluation with precise BatchNorm statistics (fashionbn.core.precise_bn)
PRECISE_COLUMNS = ["val_loss_precise", "val_acc_precise", "test_loss_precise",
                   "test_acc_precise"]  # fmt: skip
# format 3: val_loss and val_acc (empty without a validation split), then the four
# *_precise columns (empty unless precise_bn=true and the model has BatchNorm; files
# written before they existed end at val_acc and read as empty)
METRIC_COLUMNS = [*REQUIRED_COLUMNS, "val_loss", "val_acc", *PRECISE_COLUMNS]
DIAGNOSTIC_COLUMNS = ["step", "epoch", "layer", "quantity", "value"]
# how a training run can end (the job-dir format adds "running" and "failed")
COMPLETE, DIVERGED = "complete", "diverged"
# a run of a cohort its caller stopped (its epoch could not be saved): the others go on
STOPPED = "stopped"
