"""Process groups: torch.distributed, megatron's parallel_state, and the model-parallel seeds.

One entry point, `initialize()`, works the same under torchrun, one srun task per rank, or a
plain `python -m nextlat_pt` (a world of one process).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from nextlat_pt.launch_env import world_from_env
from nextlat_pt.parallel import cpu_compat


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits in the (DP, PP, TP) grid."""

    world_size: int
    rank: int
    local_rank: int
    tp: int
    pp: int
    dp: int

    @property
    def is_logging_rank(self) -> bool:
        """The last rank: it owns the last pipeline stage, where the losses live."""
        return self.rank == self.world_size - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initialize(tp: int = 1, pp: int = 1, vpp: int | None = None, seed: int = 1234,
               timeout_minutes: int = 10) -> ParallelLayout:
    """Start torch.distributed (NCCL on CUDA, gloo on CPU), megatron's groups and RNG seeds.

    Safe to call twice in one process (the second call only re-seeds).
    """
    world_size, rank, local_rank = world_from_env()
    use_cuda = cpu_compat.cuda_available()
    cpu_compat.install()  # no-op on CUDA machines

    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        init_method = None
        if world_size == 1 and "MASTER_ADDR" not in os.environ:
            # A world of one: a private port, not exported, so child processes (tests, tools)
            # never inherit it.
            init_method = f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=timedelta(minutes=timeout_minutes),
        )
    # DeepSpeed reads the rank layout from the environment (torchrun sets it; srun and a
    # plain single process do not).
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world_size))
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp,
        )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
    return ParallelLayout(
        world_size=world_size,
        rank=rank,
        local_rank=local_rank,
        tp=tp,
        pp=pp,
        dp=world_size // (tp * pp),
    )


def destroy() -> None:
    """Tear down megatron's groups and the default process group."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """The device this rank computes on."""
    if cpu_compat.cuda_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
