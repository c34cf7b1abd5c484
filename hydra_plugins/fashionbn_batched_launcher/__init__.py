"""hydra/launcher=batched: fashionbn's launcher (see batched_launcher)."""
