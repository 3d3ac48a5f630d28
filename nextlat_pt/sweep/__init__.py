"""Sweeps: a grid of config values × seeds, run here one after another or as a Slurm array."""
