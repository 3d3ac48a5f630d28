"""Muon for the hidden matrices, AdamW for everything else, as one torch optimizer.

The split (`split_parameters`): every 2-D parameter is a Muon matrix except the embedding tables
and the LM head (megatron's `output_layer`, or the tied embedding). So the decoder layers'
QKV, attention output, fc1 and fc2, and ψ's fc1..fc3 (hidden matrices: ψ's output goes
through a residual into the latent, not through a classifier) train with Muon; the
embeddings, the LM head, the norms and every other 1-D parameter with AdamW. Keller
Jordan's Muon and `torch.optim.Muon` draw the line there; the NextLat paper (App. E) runs
Muon "under the same learning rate schedule" as AdamW with the update scaling of Liu et
al. (2025), `adjust_lr_fn="match_rms_adamw"`: the rate 0.2·√max(A, B)·lr.

The arithmetic is torch's (`torch.optim._muon`): momentum `buf ← lerp(buf, g, 1-μ)`, the
Nesterov blend `lerp(g, buf, μ)`, the Newton-Schulz orthogonalisation (bf16, torch's
coefficients), decoupled weight decay `p ← p(1 - lr·wd)`, then `p ← p - lr'·O`.
tests/unit/test_muon.py checks the step equals `torch.optim.Muon`'s bit for bit.

Both engines drive it. On one rank (LocalEngine) its Muon groups hold the matrices
themselves. Under DeepSpeed ZeRO-1/2 each group holds this rank's flat fp32 partition, in
which a matrix may be cut anywhere; `bind_zero_layout` records where each matrix lies in the
group's flat buffer, and the step all-gathers the (elementwise) Nesterov update of the
group over the data-parallel ranks, orthogonalises every matrix that has elements in this
rank's partition whole, and applies its own slice. The momentum stays partitioned like
Adam's moments, so checkpoints store it per parameter fragment. Exact, at the price of one
all-gather of the Muon matrices per step and of each rank orthogonalising the matrices it
touches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

MUON_ADJUST_LR = ("match_rms_adamw", "original")
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch's (Keller Jordan's) quintic
NS_EPS = 1e-7


def split_parameters(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter],
                                                      list[torch.nn.Parameter]]:
    """(Muon matrices, AdamW parameters) of the trainable parameters, in module order.

    A Muon matrix is 2-D and belongs neither to an embedding table (torch's or megatron's
    vocab-parallel one, ψ's replica included) nor to the LM head (megatron's
    `output_layer`, a tied copy of the embedding included), and is not marked
    `embedding_like` (JTP's Fetch offsets: one learned vector per slot)."""
    muon, adamw, seen = [], [], set()
    for name, module in model.named_modules():
        table = (type(module).__name__.endswith("Embedding")
                 or name.split(".")[-1] == "output_layer")
        for param in module.parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue  # a shared weight counts once, where it first appears
            seen.add(id(param))
            embedding_like = table or getattr(param, "embedding_like", False)
            (muon if param.ndim == 2 and not embedding_like else adamw).append(param)
    return muon, adamw


@dataclass
class _Matrix:
    """Where one matrix lies in its group's flat buffer (ZeRO) and its shape."""

    offset: int
    shape: torch.Size


@dataclass
class _ZeroLayout:
    """A Muon group's flat buffer: its matrices, the partition size, this rank's partition
    and the data-parallel group the partitions are spread over."""

    matrices: list[_Matrix]
    partition_size: int
    rank: int
    world: int
    group: Any


class MuonAdamW(torch.optim.Optimizer):
    """Muon over the groups flagged `muon`, torch's AdamW over the others (shared state)."""

    def __init__(self, groups: list[dict], *, lr: float, weight_decay: float,
                 betas: tuple[float, float], eps: float, momentum: float, nesterov: bool,
                 ns_steps: int, adjust_lr_fn: str, fused: bool | None) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "muon": False, "lr_scale": 1.0,
                    "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                    "adjust_lr_fn": adjust_lr_fn}
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon groups hold matrices only")
        aux = [group for group in self.param_groups if not group["muon"]]
        # AdamW works on the same group dicts (DeepSpeed swaps their tensors for its flat
        # partitions in place) and keeps its moments in this optimizer's state.
        self.adamw = (torch.optim.AdamW(aux, lr=lr, betas=betas, eps=eps, fused=fused)
                      if aux else None)
        if self.adamw is not None:
            self.adamw.state = self.state
        self._layouts: dict[int, _ZeroLayout] = {}

    def bind_zero_layout(self, wrapper: Any) -> None:
        """Record, for each Muon group, where its matrices lie in DeepSpeed's flat buffer.

        `wrapper` is DeepSpeed's ZeRO-1/2 optimizer after it replaced each group's params by
        this rank's flat fp32 partition (`round_robin_bit16_groups` and `..._offsets`: the
        parameters in flattening order and their offsets, padding included)."""
        if not hasattr(wrapper, "round_robin_bit16_offsets"):
            raise RuntimeError(f"train.optimizer=muon cannot run under DeepSpeed's "
                               f"{type(wrapper).__name__} (ZeRO-1/2's optimizer only)")
        for index, group in enumerate(self.param_groups):
            if not group["muon"]:
                continue
            process_group = wrapper.real_dp_process_group[index]
            self._layouts[index] = _ZeroLayout(
                matrices=[_Matrix(offset, p.shape) for p, offset in zip(
                    wrapper.round_robin_bit16_groups[index],
                    wrapper.round_robin_bit16_offsets[index], strict=True)],
                partition_size=int(wrapper.partition_size[index]),
                rank=dist.get_rank(group=process_group),
                world=dist.get_world_size(group=process_group),
                group=process_group,
            )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Muon step over the Muon groups, then AdamW's over the rest."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            if group["muon"]:
                self._muon_group_step(index, group)
        if self.adamw is not None:
            self.adamw.step()
        return loss

    def _nesterov_update(self, group: dict, param: torch.Tensor) -> torch.Tensor:
        """Fold the gradient into the momentum; the update to orthogonalise (elementwise,
        so the same on a whole matrix or on any slice of it)."""
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        # torch's Muon keeps no step; ours counts them so a checkpoint records it like AdamW's.
        state["step"] = state.get("step", torch.tensor(0.0)) + 1
        buf = state["momentum_buffer"]
        buf.lerp_(grad, 1 - group["momentum"])
        return grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf

    def _orthogonal(self, group: dict, update: torch.Tensor) -> torch.Tensor:
        return _zeropower_via_newtonschulz(update, NS_COEFFICIENTS, group["ns_steps"], NS_EPS)

    def _muon_group_step(self, index: int, group: dict) -> None:
        lr, decay = group["lr"], group["weight_decay"]
        layout = self._layouts.get(index)
        if layout is None:  # the matrices themselves
            for param in group["params"]:
                ortho = self._orthogonal(group, self._nesterov_update(group, param))
                param.mul_(1 - lr * decay)
                param.add_(ortho, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
            return
        (partition,) = group["params"]
        local = self._nesterov_update(group, partition)
        full = torch.empty(layout.partition_size * layout.world, dtype=local.dtype,
                           device=local.device)
        if layout.world > 1:
            dist.all_gather(list(full.chunk(layout.world)), local.contiguous(),
                            group=layout.group)
        else:
            full.copy_(local)
        start = layout.rank * layout.partition_size
        stop = start + layout.partition_size
        partition.mul_(1 - lr * decay)
        for matrix in layout.matrices:
            numel = matrix.shape.numel()
            lo, hi = max(matrix.offset, start), min(matrix.offset + numel, stop)
            if lo >= hi:
                continue  # no element of this matrix in this rank's partition
            ortho = self._orthogonal(
                group, full[matrix.offset:matrix.offset + numel].view(matrix.shape))
            partition[lo - start:hi - start].add_(
                ortho.reshape(-1)[lo - matrix.offset:hi - matrix.offset],
                alpha=-_adjust_lr(lr, group["adjust_lr_fn"], matrix.shape))
