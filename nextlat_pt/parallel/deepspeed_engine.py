"""DeepSpeed ZeRO around a megatron-core model, driven by megatron's pipeline schedules.

Two ways to run a step, chosen by the pipeline size (each checked against one process with
SGD and AdamW by tests/distributed/test_parallel_equivalence.py):

- PP = 1 (ZeRO 1, 2, 3): every micro-batch goes through `engine(...)`, so DeepSpeed's output
  hooks run its backward prologue/epilogue; DeepSpeed's own accumulation is 1 (megatron
  scales the loss by 1/micro-batches) and `no_sync()` below, installed as megatron's
  `config.no_sync_func`, marks all but the last micro-batch as "not a boundary". Without that
  hook ZeRO-1/2 silently overwrite instead of accumulating.
- PP > 1 (ZeRO 1 only; DeepSpeed refuses 2/3 with pipelining): the schedule drives the bare
  module; afterwards the trainer sums the embedding copies' gradients over megatron's
  embedding group, then `engine.allreduce_gradients()` reduces over data parallel ranks.

DeepSpeed expects old Megatron names on `mpu`; `megatron_mpu()` adapts megatron-core's
parallel_state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from megatron.core import parallel_state as ps

from nextlat_pt.parallel.engine import TrainingEngine


def megatron_mpu() -> SimpleNamespace:
    """megatron-core's process groups under the names DeepSpeed looks up.

    Old Megatron's "model parallel" is TP × PP: DeepSpeed sums the gradient norm over it
    (each pipeline stage holds other parameters) and names checkpoint files by its rank (so
    two stages never write the same file). "tensor model parallel" is TP alone: DeepSpeed
    counts TP-replicated parameters once, on TP rank 0.
    """
    return SimpleNamespace(
        get_model_parallel_rank=lambda: ps.get_model_parallel_group().rank(),
        get_model_parallel_world_size=lambda: ps.get_model_parallel_group().size(),
        get_model_parallel_group=ps.get_model_parallel_group,
        get_tensor_model_parallel_rank=ps.get_tensor_model_parallel_rank,
        get_tensor_model_parallel_world_size=ps.get_tensor_model_parallel_world_size,
        get_tensor_model_parallel_group=ps.get_tensor_model_parallel_group,
        get_tensor_model_parallel_src_rank=ps.get_tensor_model_parallel_src_rank,
        get_pipeline_model_parallel_rank=ps.get_pipeline_model_parallel_rank,
        get_pipeline_model_parallel_world_size=ps.get_pipeline_model_parallel_world_size,
        get_pipeline_model_parallel_group=ps.get_pipeline_model_parallel_group,
        get_data_parallel_rank=ps.get_data_parallel_rank,
        get_data_parallel_world_size=ps.get_data_parallel_world_size,
        get_data_parallel_group=ps.get_data_parallel_group,
    )


def deepspeed_config(micro_batch_size: int, zero_stage: int, grad_clip: float,
                     bf16: bool, grad_accum_dtype: str = "fp32") -> dict[str, Any]:
    """The engine config. Accumulation stays 1: megatron's schedule runs the micro-batches.

    bf16 weights with `grad_accum_dtype` fp32 (the default, Megatron-LM's choice for bf16):
    under ZeRO-1 DeepSpeed then picks its bf16 optimizer, whose backward hooks add each bf16
    gradient into a flat fp32 buffer (no per-micro-batch copy of the flat buffers, no bf16
    rounding of the running sum) and whose norm reads those fp32 buffers directly; under
    ZeRO-2/3 its ZeRO optimizer accumulates in fp32. bf16 keeps the gradients in bf16 (half
    their memory) and DeepSpeed's ZeRO optimizer, whose norm converts every gradient to fp64.
    """
    dp = ps.get_data_parallel_world_size()
    extra: dict[str, Any] = {}
    if bf16:
        extra["data_types"] = {"grad_accum_dtype": grad_accum_dtype}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch_size * dp,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bf16},
        # torch's AdamW under ZeRO: DeepSpeed only vouches for its own optimizers.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        **extra,
    }


def build_engine(module: torch.nn.Module, optimizer: torch.optim.Optimizer, zero_stage: int,
                 micro_batch_size: int, grad_clip: float, bf16: bool,
                 grad_accum_dtype: str = "fp32") -> TrainingEngine:
    """Wrap `module` and `optimizer` in a DeepSpeed engine over megatron's groups."""
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=deepspeed_config(micro_batch_size, zero_stage, grad_clip, bf16, grad_accum_dtype),
        mpu=megatron_mpu(),
    )
    if hasattr(optimizer, "bind_zero_layout"):
        # Muon orthogonalises whole matrices: tell it where they lie in ZeRO's partitions.
        optimizer.bind_zero_layout(engine.optimizer)
    return engine


def no_sync_func(engine: TrainingEngine) -> Callable[[], contextlib.AbstractContextManager]:
    """megatron's `config.no_sync_func` for a DeepSpeed engine: while it is active, the
    micro-batch is not a gradient-accumulation boundary (no reduction, grads accumulate)."""

    @contextlib.contextmanager
    def no_sync():
        engine.set_gradient_accumulation_boundary(False)
        try:
            yield
        finally:
            engine.set_gradient_accumulation_boundary(True)

    return no_sync


def reduce_pipelined_gradients(engine: TrainingEngine) -> None:
    """PP > 1: reduce over data-parallel ranks what megatron's schedule accumulated in the
    module's own `.grad`. DeepSpeed's bf16 optimizer takes gradients into its fp32 buffers
    in the engine's backward hooks, which a schedule driving the bare module never runs: hand
    them over first (as DeepSpeed's own pipeline engine does), or the step would apply zero
    gradients."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if isinstance(getattr(engine, "optimizer", None), BF16_Optimizer):
        engine.optimizer.update_hp_grads(clear_lp_grads=False)
    engine.allreduce_gradients()


def set_lr(engine: TrainingEngine, lr: float) -> None:
    """Apply `lr` to every parameter group of the engine's (possibly ZeRO) optimizer, times
    the group's `lr_scale` where it has one (Muon's own rate, train.muon_lr)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
