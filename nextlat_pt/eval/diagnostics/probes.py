"""Linear probes on frozen hidden states (docs/method.md §9; the paper's TinyStories probes).

A probe is softmax regression (one linear layer + cross-entropy) on standardised features,
trained with AdamW on a train split and scored on a held-out split. Rows can be grouped
(`groups`: e.g. the window or walk each row comes from) so that a group is never on both
sides of the split: neighbouring positions of one sequence share most of their context, and
a split by position would let the probe memorise it.

Classes are those seen in the train split (a probe cannot predict a class it never saw);
held-out rows whose class was not seen are counted as wrong, and left out of the held-out CE
(their share is reported as `unseen_fraction`).

The defaults (400 AdamW steps of 1024 rows, LR 1e-2 decayed linearly to 0, bias started at
the log class prior) were picked on the tiny model's hidden states (D = 256, ~2,100 token
classes, 118 train windows): there 100 → 400 → 1,000 steps gave held-out next-token
accuracy 0.248 → 0.265 → 0.266, and a constant LR ended lower. The paper trains its
probes for 20k steps; raise `steps` for larger models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nextlat_pt.eval import defaults

DEFAULT_STEPS = defaults.PROBE_STEPS
DEFAULT_LR = defaults.PROBE_LR
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_BATCH_SIZE = 1024


@dataclass
class ProbeResult:
    """A probe's held-out accuracy and CE, with what it was trained and scored on."""

    accuracy: float  # held-out top-1 accuracy (unseen classes count as wrong)
    ce: float  # held-out CE in nats over the rows whose class was seen in training
    train_accuracy: float
    majority_accuracy: float  # held-out accuracy of always answering the commonest class
    train_size: int
    test_size: int
    num_classes: int  # classes seen in the train split (the probe's outputs)
    unseen_fraction: float  # held-out rows whose class the train split never showed
    steps: int
    offset: int | None = None  # token_offset_probes: predicting x_{t+offset} from h_t

    def to_dict(self) -> dict:
        return asdict(self)


def split_groups(groups: Tensor, train_fraction: float, seed: int) -> Tensor:
    """Boolean mask [N] of the train rows: a seeded `train_fraction` of the distinct groups,
    at least one group on each side."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    unique, inverse = torch.unique(groups, return_inverse=True)
    if len(unique) < 2:
        raise ValueError(f"a probe needs at least 2 groups (sequences) to split into train and "
                         f"held-out, got {len(unique)}")
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))
    n_train = min(max(1, round(train_fraction * len(unique))), len(unique) - 1)
    is_train_group = torch.zeros(len(unique), dtype=torch.bool)
    is_train_group[order[:n_train]] = True
    return is_train_group[inverse]


def fit_linear_probe(features: Tensor, targets: Tensor, num_classes: int, *,
                     train_fraction: float = 0.8, groups: Tensor | None = None,
                     steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
                     weight_decay: float = DEFAULT_WEIGHT_DECAY,
                     batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> ProbeResult:
    """Train softmax regression from `features` [N, D] to integer `targets` [N] in
    [0, num_classes) on a train split, and score it on the rest.

    `groups` [N] (optional): rows of one group stay on one side of the split (default: every
    row its own group). Features are standardised with train-split statistics. AdamW on
    minibatches of `batch_size` rows (full batch when the split is smaller), LR decayed
    linearly to 0, zero-initialised weights and a log-prior bias: the same inputs and seed
    give the same result.
    """
    if features.dim() != 2 or targets.dim() != 1 or len(features) != len(targets):
        raise ValueError(f"features must be [N, D] and targets [N], got "
                         f"{tuple(features.shape)} and {tuple(targets.shape)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps ({steps}) and batch_size ({batch_size}) must be at least 1")
    targets = targets.long().cpu()
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes})")
    # The probe trains where the features are (a GPU's hidden states stay there); the split
    # and class bookkeeping are on the CPU.
    device = features.device
    features = features.detach().float()
    groups = torch.arange(len(targets)) if groups is None else groups.cpu()
    train = split_groups(groups, train_fraction, seed)
    x_train, x_test = features[train.to(device)], features[(~train).to(device)]
    mean = x_train.mean(0)
    std = x_train.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features stay 0
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    # Classes seen in training, renumbered 0..C-1; unseen held-out classes become -1.
    seen = torch.unique(targets[train])
    remap = torch.full((num_classes,), -1, dtype=torch.long)
    remap[seen] = torch.arange(len(seen))
    y_train, y_test = remap[targets[train]].to(device), remap[targets[~train]].to(device)

    weight, bias = _train(x_train, y_train, len(seen), steps, lr, weight_decay, batch_size,
                          seed)
    train_acc, _ = _score(x_train, y_train, weight, bias)
    accuracy, ce = _score(x_test, y_test, weight, bias)
    majority = int(torch.bincount(y_train, minlength=len(seen)).argmax())
    majority_acc = float((y_test == majority).float().mean()) if len(y_test) else math.nan
    return ProbeResult(accuracy=accuracy, ce=ce, train_accuracy=train_acc,
                       majority_accuracy=majority_acc, train_size=len(y_train),
                       test_size=len(y_test), num_classes=len(seen),
                       unseen_fraction=float((y_test < 0).float().mean()) if len(y_test)
                       else 0.0, steps=steps)


def _train(x: Tensor, y: Tensor, num_classes: int, steps: int, lr: float,
           weight_decay: float, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """AdamW on softmax regression; returns (weight [D, C], bias [C]).

    The bias starts at the log class frequencies (the probe starts from the unigram
    prediction instead of spending steps finding it) and the LR decays linearly to 0: with
    thousands of classes and a few hundred steps, both matter for where the probe ends.
    """
    weight = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    bias = torch.bincount(y, minlength=num_classes).float().log().requires_grad_(True)
    # Only the weight is decayed (the bias carries the class prior).
    optimizer = torch.optim.AdamW([{"params": [weight], "weight_decay": weight_decay},
                                   {"params": [bias], "weight_decay": 0.0}], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - i / steps)
    generator = torch.Generator().manual_seed(seed)
    full = batch_size >= len(y)
    for _ in range(steps):
        if full:
            xb, yb = x, y
        else:
            rows = torch.randint(len(y), (batch_size,), generator=generator).to(x.device)
            xb, yb = x[rows], y[rows]
        loss = F.cross_entropy(xb @ weight + bias, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return weight.detach(), bias.detach()


@torch.no_grad()
def _score(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor,
           chunk: int = 8192) -> tuple[float, float]:
    """(top-1 accuracy over all rows, mean CE over rows with a known class y ≥ 0), in chunks
    of rows so that [rows, classes] logits never fill memory. NaN where there are no rows."""
    correct, ce_sum, known = 0, 0.0, 0
    for i in range(0, len(y), chunk):
        logits, labels = x[i : i + chunk] @ weight + bias, y[i : i + chunk]
        correct += int((logits.argmax(-1) == labels).sum())
        mask = labels >= 0
        if mask.any():
            ce_sum += float(F.cross_entropy(logits[mask].double(), labels[mask],
                                            reduction="sum"))
            known += int(mask.sum())
    accuracy = correct / len(y) if len(y) else math.nan
    return accuracy, (ce_sum / known if known else math.nan)


def token_offset_probes(hidden: Tensor, tokens: Tensor, offsets: range | list[int], *,
                        num_classes: int | None = None, train_fraction: float = 0.8,
                        seed: int = 0, **probe_options) -> list[ProbeResult]:
    """One probe per offset k: predict token x_{t+k} from h_t (k=1 is the next token).

    `hidden` [B, T, D]: h_t has read tokens[:, :t+1]. `tokens` [B, T'] with T' ≥ T, the
    same positions (a window of T+1 tokens gives every h_t a next token). For offset k the
    rows are the positions t with t+k < T'. Train and held-out split by SEQUENCE (row of the
    batch), the same split for every offset. `num_classes` defaults to max(tokens)+1.
    """
    if hidden.dim() != 3 or tokens.dim() != 2 or hidden.shape[0] != tokens.shape[0] \
            or tokens.shape[1] < hidden.shape[1]:
        raise ValueError(f"hidden must be [B, T, D] and tokens [B, T' >= T], got "
                         f"{tuple(hidden.shape)} and {tuple(tokens.shape)}")
    batch, length, _ = hidden.shape
    num_classes = int(tokens.max()) + 1 if num_classes is None else num_classes
    results = []
    for k in offsets:
        rows = min(length, tokens.shape[1] - k)
        if k < 1 or rows < 1:
            raise ValueError(f"offset {k} leaves no (h_t, x_t+k) pairs in windows of "
                             f"{tokens.shape[1]} tokens; offsets must be in [1, "
                             f"{tokens.shape[1] - 1}]")
        features = hidden[:, :rows].reshape(-1, hidden.shape[-1])
        targets = tokens[:, k : k + rows].reshape(-1)
        groups = torch.arange(batch).repeat_interleave(rows)
        result = fit_linear_probe(features, targets, num_classes, train_fraction=train_fraction,
                                  groups=groups, seed=seed, **probe_options)
        result.offset = k
        results.append(result)
    return results
