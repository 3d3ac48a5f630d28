"""The one exception type of the data pipeline.

Every message is one line that names the problem (the file, shard or sample) and the fix, so the
CLI can print it as `nextlat-pt: error: ...` and a training job can fail before it starts.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input, a damaged dataset or a dataset that does not fit the run."""


class CorruptSampleError(DataError):
    """One sample of a prepared dataset cannot be read: its shard is truncated or damaged.

    `shard` is the shard file and `sample` the sample's index in its dataset, so the loader can
    skip exactly this sample when asked to (`on_error="skip"`).
    """

    def __init__(self, message: str, shard: str, sample: int) -> None:
        super().__init__(message)
        self.shard = shard
        self.sample = sample
