"""Next-token cross entropy over logits that are split by vocabulary across TP ranks.

Under TP each rank holds logits for V/tp vocabulary entries. Nothing gathers the full
vocabulary: megatron's kernel builds the softmax normaliser from an all-reduced max and an
all-reduced sum. The KL term does the same in `frozen_head_kl.py`.
"""

from __future__ import annotations

from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from torch import Tensor


def vocab_parallel_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token cross entropy with megatron's vocab-parallel kernel. logits [..., V/tp].

    Megatron's kernel overwrites its input in place to save memory (fp32 logits are passed
    through `.float()` unchanged): read anything else you need from the logits first.
    """
    return vocab_parallel_cross_entropy(logits.float(), labels)
