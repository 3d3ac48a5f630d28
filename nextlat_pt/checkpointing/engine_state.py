"""The optimizer state of each parameter, as this rank's engine holds it.

For every trainable parameter, the flat range [start, stop) of the (TP-local) parameter that
this rank's optimizer updates, and 1-D views of the same length into the engine's own
storage: the fp32 master weights, each moment (`exp_avg`, `exp_avg_sq` for AdamW,
`momentum_buffer` for Muon's matrices), and the step counter. Reading them copies nothing;
writing into them sets the engine's state.

- the local engine (one fp32 rank): the whole parameter; the master is the parameter itself
  and the moments are torch's per-parameter state (created here when loading into an
  optimizer that has not stepped yet);
- DeepSpeed ZeRO-1/2 and its bf16 optimizer: the fragment each parameter has in this rank's
  flat fp32 partition, through DeepSpeed's own bookkeeping (`param._hp_mapping`: where the
  fragment starts in the parameter and in the partition, `deepspeed.utils.tensor_fragment`,
  as its universal checkpoint reads it); the moments are the same range of the partition's
  flat state;
- DeepSpeed ZeRO-3: the parameter's partition on this rank (rank × partition size, the
  padding of the last partition left out), through `get_local_fp32_param`.

Every engine's torch optimizer creates its state at the first step; loading into one that
has not stepped creates it first (zeros), then writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nextlat_pt.checkpointing.errors import CheckpointError


@dataclass
class HeldState:
    """What this rank's optimizer holds of one parameter: its flat range [start, stop) and
    1-D views over that range of the master weights and of each moment."""

    param: torch.nn.Parameter
    start: int
    stop: int
    master: torch.Tensor
    moments: dict[str, torch.Tensor]
    state: dict[str, Any]  # the optimizer's state entry holding "step"


ADAM_MOMENTS = ["exp_avg", "exp_avg_sq"]


def moment_names(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> list[str]:
    """The per-element state tensors the (torch) optimizer keeps for each parameter of
    `group`: AdamW's two moments, SGD's momentum, or, in train.optimizer=muon's optimizer
    (groups flagged `muon`), Muon's momentum on its matrices and AdamW's moments elsewhere."""
    if "muon" in group:
        return ["momentum_buffer"] if group["muon"] else list(ADAM_MOMENTS)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return [*ADAM_MOMENTS, "max_exp_avg_sq"] if group.get("amsgrad") else list(ADAM_MOMENTS)
    if isinstance(optimizer, torch.optim.SGD):
        return ["momentum_buffer"] if group.get("momentum") else []
    raise CheckpointError(f"saving the state of {type(optimizer).__name__} is not supported "
                          f"(AdamW, SGD and Muon are)")


def engine_kind(engine: Any) -> str:
    """"local", "zero12" (ZeRO-1/2 or DeepSpeed's bf16 optimizer) or "zero3"."""
    if getattr(engine, "kind", None) == "local":
        return "local"
    optimizer = engine.optimizer
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):
        return "zero3"
    if hasattr(optimizer, "single_partition_of_fp32_groups") \
            or hasattr(optimizer, "fp32_groups_flat_partition"):
        return "zero12"
    raise CheckpointError(f"unknown optimizer wrapper {type(optimizer).__name__}")


def base_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer doing the update (DeepSpeed wraps it)."""
    kind = engine_kind(engine)
    return engine.optimizer if kind == "local" else engine.optimizer.optimizer


def _state_of(optimizer: torch.optim.Optimizer, tensor: torch.Tensor, create: bool,
              group_index: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """The optimizer's state entry for `tensor` (a parameter or a flat ZeRO partition) and
    the names of its moments.

    torch's optimizers create it at their first step, and DeepSpeed leaves it so: with
    `create`, an empty entry gets a zero step and zero moments, as torch's first step would
    create them (fused: the step on the device), for a load to write into."""
    if group_index is None:
        group = next(g for g in optimizer.param_groups if any(p is tensor for p in g["params"]))
    else:  # ZeRO-3 puts its flat partitions into the groups only while it steps
        group = optimizer.param_groups[group_index]
    names = moment_names(optimizer, group)
    state = optimizer.state[tensor]
    if not state and create and names:
        fused = group.get("fused") or group.get("capturable")
        state["step"] = (torch.zeros((), dtype=torch.float32, device=tensor.device) if fused
                         else torch.tensor(0.0, dtype=torch.float32))
        for name in names:
            state[name] = torch.zeros_like(tensor, memory_format=torch.preserve_format)
    return state, names


def _local(engine: Any, create: bool) -> dict[int, HeldState]:
    optimizer = engine.optimizer
    held = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state, names = _state_of(optimizer, param, create)
            moments = {name: state[name].view(-1) for name in names if name in state}
            held[id(param)] = HeldState(param, 0, param.numel(), param.data.view(-1),
                                        moments, state)
    return held


def _zero12(engine: Any, create: bool) -> dict[int, HeldState]:
    wrapper = engine.optimizer
    optimizer = wrapper.optimizer
    partitions = getattr(wrapper, "single_partition_of_fp32_groups", None)
    if partitions is None:  # DeepSpeed's bf16 optimizer (ZeRO-1 with fp32 accumulation)
        partitions = wrapper.fp32_groups_flat_partition
    groups = getattr(wrapper, "bit16_groups", None) or wrapper.bf16_groups
    held = {}
    for index, params in enumerate(groups):
        flat = partitions[index]
        state, names = _state_of(optimizer, flat, create)
        for param in params:
            mapping = getattr(param, "_hp_mapping", None)
            if mapping is None:
                continue  # no element of this parameter in this rank's partition
            lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
            moments = {name: state[name].narrow(0, hp.start, hp.numel)
                       for name in names if name in state}
            held[id(param)] = HeldState(param, lp.start, lp.start + lp.numel,
                                        flat.narrow(0, hp.start, hp.numel), moments, state)
    return held


def _zero3(engine: Any, create: bool) -> dict[int, HeldState]:
    wrapper = engine.optimizer
    optimizer = wrapper.optimizer
    held = {}
    for params in wrapper.fp16_groups:
        for param in params:
            group_index, offset, numel = wrapper.grad_position[wrapper.get_param_id(param)]
            flat = wrapper.fp32_partitioned_groups_flat[group_index]
            state, names = _state_of(optimizer, flat, create, group_index)
            rank = wrapper._get_param_partition_rank(param)
            start = rank * numel
            stop = min(start + numel, param.ds_numel)  # the last partition is padded
            if stop <= start:
                continue
            count = stop - start
            moments = {name: state[name].narrow(0, offset, count)
                       for name in names if name in state}
            held[id(param)] = HeldState(param, start, stop, flat.narrow(0, offset, count),
                                        moments, state)
    return held


def held_states(engine: Any, create: bool = False) -> dict[int, HeldState]:
    """id(parameter) -> what this rank's optimizer holds of it (parameters of which it holds
    nothing are absent). `create`: give an optimizer that has not stepped yet its state
    (zeros), to load into."""
    kind = engine_kind(engine)
    if kind == "local":
        return _local(engine, create)
    if kind == "zero12":
        return _zero12(engine, create)
    return _zero3(engine, create)


def read_step(held: HeldState) -> int:
    """The optimizer's step counter for this parameter (0 before the first step)."""
    step = held.state.get("step")
    return int(step.item()) if isinstance(step, torch.Tensor) else int(step or 0)


def write_step(held: HeldState, step: int) -> None:
    """Set the step counter in place (torch keeps it as a tensor, on the device if fused)."""
    current = held.state.get("step")
    if isinstance(current, torch.Tensor):
        current.fill_(step)
    elif "step" in held.state:
        held.state["step"] = step


def refresh_masters(engine: Any) -> None:
    """Copy the (just loaded) weights into DeepSpeed's fp32 master partitions.

    Needed whenever weights are loaded without optimizer state: DeepSpeed's masters are a
    copy made when the engine started, and its next step would overwrite the loaded
    weights with them. The local engine's master is the parameter itself."""
    if engine_kind(engine) != "local":
        engine.optimizer.refresh_fp32_params()
