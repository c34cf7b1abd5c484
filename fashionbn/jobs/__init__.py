"""A job dir's life cycle: its files (written atomically), the lock, resume and
checkpoint, the run's identity check, and the loggers derived from metrics.csv.

`files` is the job-dir format, the interface between training and analysis (what
fashionbn.analysis may import from here, with `reading`, which reads and verifies one
job dir, and `untrusted`, the one place a job dir is opened: a dir is untrusted input);
`job` runs one job into its dir, `cohort` a sweep's jobs in cohorts (`cluster`: as
SLURM jobs, one per cohort; `launching`: what a launcher and a job agree on;
`composing`: a sweep's jobs composed once per config-group choice, `setting_up`:
each set up in its Hydra job context as run_job does it, cheaper; `sizing`: how many
runs a cohort holds), `writer` writes a run's files after
every epoch, `resume` decides what a dir's contents allow (`previous`: what it found,
`extension`: continuing a finished run to more epochs), `checkpoint` reads and writes
the state, `preflight` refuses dirs Hydra would write through a link, `loggers` (a
package, one module per sink) and `progress` report; `scheduler` asks SLURM (job
states where its accounting does not answer. May import fashionbn.config and
fashionbn.core.
"""
