"""The machine learning: data -> tensors, the model, the training loop, evaluation,
precise BatchNorm statistics and the diagnostics of the mechanism.

Pure computation: it reads the dataset (and writes its prepared copy, atomically) but no
job-dir files, and it changes no process-wide state. May import fashionbn.config only.
`data` (the dataset; `sources`: data plug-ins, `order`: the samples' order), `model`
(the MLP, model and normalisation plug-ins), `cnn` (the small CNN shipped as a model
plug-in), `train` (the loop), `batched` (a cohort of runs trained at once), `stacking`
(which runs share a cohort and how a model is stacked for it), `evaluation`,
`precise_bn`, `diagnostics`; `records` names what the loop produces (one record per
epoch, a status); `atomic` is how any file of fashionbn is written.
"""
