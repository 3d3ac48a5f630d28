"""The one error type for checkpoints that cannot be used."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason and what to do."""
