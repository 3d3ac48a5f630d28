"""A world of one process for building our megatron model outside training.

Import and evaluation build a TP=1, PP=1 `NextLatGPT`, which needs megatron's parallel state.
They may run inside another program (a test session, a notebook) that already set it up, and
must not disturb that program's random number streams.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from nextlat_pt.convert.errors import ConvertError


@contextlib.contextmanager
def single_process_world(seed: int) -> Iterator[None]:
    """megatron's parallel state at TP=PP=1 (started if needed), the caller's CPU RNG state
    restored afterwards."""
    from megatron.core import parallel_state

    from nextlat_pt.parallel import distributed

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConvertError("conversion and evaluation run in one process; launch them "
                           "without torchrun")
    with torch.random.fork_rng(devices=[]):
        if not parallel_state.model_parallel_is_initialized():
            distributed.initialize(1, 1, seed=seed)
        elif (parallel_state.get_tensor_model_parallel_world_size() != 1
              or parallel_state.get_pipeline_model_parallel_world_size() != 1):
            raise ConvertError("this process already runs a TP/PP > 1 layout; convert and "
                               "evaluate in a process of their own")
        yield
