"""Job dirs -> one tidy table -> statistics and per-model selection -> report, tables
and figures.

`table` reads finished job dirs into the tidy table (one row per run and epoch),
`arms` says which runs are one arm and what each model is;
`options` checks the options of the command and the API; `pairing`, `stats`,
`selection`, `protocol`, `robustness`, `mechanism` and `seeds` compute; `summary`
gathers what the report states; `report`, `sections`, `tuned`, `markdown`, `plot` and
`outputs` write it.
Reads job-dir files only: may import fashionbn.config and the job-dir format
(fashionbn.jobs.files, fashionbn.jobs.reading, fashionbn.jobs.untrusted), never the
loop (fashionbn.core) or the job runner.
"""
