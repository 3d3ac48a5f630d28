"""Which box of which global parameter each of this rank's parameters holds.

megatron-core already knows, for every layout: a model chunk's `sharded_state_dict()` names
each local tensor by its global key (layer numbers offset by the pipeline stage and virtual
chunk), with the full shape and the offset of the local shard (the TP partition dimension,
vocabulary padding included). A SwiGLU fc1 weight is two boxes (its w and v halves go to
two places of the TP=1 weight). Each such box is a contiguous span of the local parameter,
found by where its tensor's memory sits inside the parameter's.

With ZeRO-3 the parameters must be gathered while this runs (their local tensors are empty
otherwise); the caller holds them gathered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nextlat_pt.checkpointing.boxes import Box
from nextlat_pt.checkpointing.errors import CheckpointError


@dataclass(frozen=True)
class Placement:
    """One box of the global parameter `key` (full shape `shape`), held in the flat span
    [start, stop) of a local parameter (row-major in both)."""

    key: str
    shape: tuple[int, ...]
    box: Box
    start: int
    stop: int


def _sharded_tensors(node: Any) -> list[Any]:
    """Every ShardedTensor in a (nested) sharded state dict, factories built."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    if isinstance(node, ShardedTensor):
        return [node]
    if isinstance(node, ShardedTensorFactory):
        return _sharded_tensors(node.build())
    if isinstance(node, dict):
        return [t for value in node.values() for t in _sharded_tensors(value)]
    if isinstance(node, (list, tuple)):
        return [t for value in node for t in _sharded_tensors(value)]
    return []


def parameter_placements(models: list[torch.nn.Module]
                         ) -> list[tuple[str, torch.nn.Parameter, list[Placement]]]:
    """(local name, parameter, its placements) for every trainable parameter of the chunks.

    Raises CheckpointError if a parameter is not covered by the sharded state dict (a model
    whose sharded_state_dict leaves something out cannot save its optimizer state)."""
    params = []
    for chunk, model in enumerate(models):
        prefix = f"model{chunk}." if len(models) > 1 else ""
        params += [(prefix + name, p) for name, p in model.named_parameters()
                   if p.requires_grad]
    by_address = sorted(((p.data_ptr(), p.data_ptr() + p.numel() * p.element_size(), i)
                         for i, (_, p) in enumerate(params) if p.numel() > 0))
    found: dict[int, list[Placement]] = {}
    for model in models:
        for tensor in _sharded_tensors(model.sharded_state_dict()):
            data = tensor.data
            if data is None or data.numel() == 0:
                continue
            if tensor.flattened_range is not None:
                raise CheckpointError(f"{tensor.key}: flattened sharded tensors are not "
                                      f"supported in optimizer checkpoints")
            address = data.data_ptr()
            owner = next((i for lo, hi, i in by_address if lo <= address < hi), None)
            if owner is None:
                continue  # a buffer, not a trainable parameter
            param = params[owner][1]
            if not data.is_contiguous() or data.dtype != param.dtype:
                raise CheckpointError(f"{tensor.key}: its checkpoint tensor is not a "
                                      f"contiguous span of parameter {params[owner][0]}")
            start = (address - param.data_ptr()) // param.element_size()
            prepend = (1,) * tensor.prepend_axis_num
            box = Box(tuple(tensor.global_offset), prepend + tuple(data.shape))
            found.setdefault(owner, []).append(Placement(
                tensor.key, tuple(tensor.global_shape), box, start, start + data.numel()))
    result = []
    for i, (name, param) in enumerate(params):
        placements = sorted(found.get(i, []), key=lambda pl: pl.start)
        covered = sum(pl.stop - pl.start for pl in placements)
        if covered != param.numel():
            raise CheckpointError(f"parameter {name} is not fully named in the model's "
                                  f"sharded state dict ({covered} of {param.numel()} "
                                  f"elements); its optimizer state cannot be saved")
        result.append((name, param, placements))
    return result
