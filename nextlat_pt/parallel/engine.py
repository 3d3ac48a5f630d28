"""What the trainer and the checkpoint code need from an engine, as one typed protocol.

Two classes satisfy it: DeepSpeed's `DeepSpeedEngine` (ZeRO 1/2/3, bf16 masters, PP) and
`LocalEngine` (one fp32 data-parallel rank, the optimizer itself). Code above `parallel/`
names this protocol instead of either class, so a third engine (FSDP2, say) only has to
provide these members.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class TrainingEngine(Protocol):
    """The slice of DeepSpeed's engine API the training loop and checkpoints use."""

    optimizer: Any
    """The (possibly ZeRO-wrapped) optimizer: `param_groups` for the learning rate,
    `state_dict()` / `load_state_dict()` for checkpoints."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Forward through the wrapped module (PP = 1: every micro-batch goes through here)."""

    def train(self, mode: bool = True) -> Any:
        """Set the wrapped module's training mode."""

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        """Whether the next backward ends the accumulation (reduce over DP then)."""

    def allreduce_gradients(self) -> None:
        """Reduce the accumulated gradients over data parallel ranks (PP > 1 path)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss."""

    def step(self) -> None:
        """Clip by the global gradient norm, update, drop the gradients."""

    def get_global_grad_norm(self) -> float | None:
        """The gradient norm before clipping at the last step."""
