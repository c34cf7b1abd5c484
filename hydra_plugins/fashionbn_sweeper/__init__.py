"""hydra/sweeper=fashionbn: Hydra's basic sweeper, jobs composed once (see sweeper)."""
