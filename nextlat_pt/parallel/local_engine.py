"""One data-parallel rank in fp32: the engine interface over the torch optimizer itself.

With a single data-parallel rank ZeRO has nothing to shard, yet DeepSpeed's stage-1 bookkeeping
still runs every step: each gradient is copied into a flat partition buffer by a hook, "all-
reduced" over a group of one and scaled, and the updated fp32 partition is copied back into the
parameters: a measurable share of a small model's step (docs/results/ cpu_step.md has the
figures and the command). So such runs train with the optimizer directly. The update is
DeepSpeed's to the bit (tests/unit/test_local_engine.py): the same optimizer on fp32 parameters
after clipping by the global gradient norm, summed as DeepSpeed sums it
(`parallel.grads.clip_grad_norm`); gradients are dropped after the step.

bf16 runs keep DeepSpeed even on one rank: it owns the fp32 master weights.
"""

from __future__ import annotations

from typing import Any

import torch

from nextlat_pt.parallel.grads import clip_grad_norm


def wants_local_engine(dp: int, pp: int, bf16: bool) -> bool:
    """Whether a run trains without DeepSpeed: one DP rank, no pipeline, fp32 weights.

    With PP > 1 the last stage's embedding replica must count once in the gradient norm,
    which DeepSpeed's replica handling does; those runs keep DeepSpeed.
    """
    return dp == 1 and pp == 1 and not bf16


class LocalEngine:
    """The part of DeepSpeed's engine API the trainer uses, over a plain optimizer."""

    kind = "local"

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 grad_clip: float) -> None:
        self.module = module
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.params = [p for p in module.parameters() if p.requires_grad]
        self._grad_norm: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> LocalEngine:
        self.module.train(mode)
        return self

    def eval(self) -> LocalEngine:
        return self.train(False)

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        """Nothing to reduce on one rank: gradients simply accumulate in `.grad`."""

    def allreduce_gradients(self) -> None:
        """One data-parallel rank: nothing to reduce."""

    def backward(self, loss: torch.Tensor) -> None:
        """DeepSpeed's `engine.backward(loss)`: on one fp32 rank, plain autograd."""
        loss.backward()

    def step(self) -> None:
        """Clip by the global norm (grad_clip 0: off, as in DeepSpeed), update, drop grads."""
        groups = [group["params"] for group in self.optimizer.param_groups]
        self._grad_norm = clip_grad_norm(self.params, self.grad_clip, groups)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self) -> float | None:
        """The norm before clipping at the last step."""
        return self._grad_norm
