"""hydra/launcher=slurm: submitit's SLURM launcher as fashionbn runs it."""
