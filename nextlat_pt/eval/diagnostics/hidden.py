"""Run a loaded model over token windows and keep its final hidden states."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nextlat_pt.eval import defaults
from nextlat_pt.eval.models import ScoredModel

DEFAULT_BATCH_SIZE = defaults.FORWARD_BATCH_SIZE


@dataclass
class WindowPass:
    """One forward pass over windows: hidden states and the model's own next-token scores."""

    hidden: Tensor  # [B, T, D] float32, final post-norm
    ce: float  # mean next-token CE (nats) over B×T positions (NaN without next tokens)
    accuracy: float  # the LM head's top-1 next-token accuracy over the same positions
    positions: int


def collect_hidden_states(model: ScoredModel, token_windows: Tensor,
                          batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
    """Final post-norm hidden states [B, T, D] (float32) of `model` (an eval `NextLatModel`
    or `HFModel`) over `token_windows` [B, T], `batch_size` windows at a time."""
    _check_windows(token_windows, batch_size)
    chunks = [model.hidden_states(token_windows[i : i + batch_size])
              for i in range(0, len(token_windows), batch_size)]
    return torch.cat(chunks)


def forward_windows(model: ScoredModel, windows: Tensor, length: int,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> WindowPass:
    """Hidden states of the first `length` tokens of each window [B, ≥ length+1] and, from
    the same pass, the model's CE and top-1 accuracy at predicting tokens 1..length."""
    _check_windows(windows, batch_size)
    if windows.shape[1] < length + 1:
        raise ValueError(f"windows of {windows.shape[1]} tokens cannot score {length} "
                         f"positions (need {length + 1})")
    hidden, ce_sum, correct = [], 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        logits, h = model.logits_and_hidden(chunk[:, :length])
        targets = chunk[:, 1 : length + 1]
        ce_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                        targets.reshape(-1), reduction="sum"))
        correct += int((logits.argmax(-1) == targets).sum())
        hidden.append(h)
    positions = len(windows) * length
    return WindowPass(hidden=torch.cat(hidden), ce=ce_sum / positions,
                      accuracy=correct / positions, positions=positions)


def _check_windows(windows: Tensor, batch_size: int) -> None:
    if windows.dim() != 2 or windows.shape[0] < 1 or windows.shape[1] < 1:
        raise ValueError(f"token windows must be a non-empty [B, T] tensor, got shape "
                         f"{tuple(windows.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
