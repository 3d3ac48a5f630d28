"""An independent check of the Path-Star pipeline: a plain torch causal transformer
(learned absolute positions, LayerNorm, GELU; nothing from nextlat_pt's model or trainer)
trained on the same prepared shards and loss mask, printing validation CE and teacher-forced
accuracy at each target token every 250 steps.

    python experiments/pathstar_reference_check.py TASK_DIR/shards STEPS LR

If it learns what nextlat_pt's NTP run does not, the fault is in the trainer or model; if it
stalls at the same point, the data and task are consistent and the training is too short.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nextlat_pt.data.dataset import open_dataset


class Plain(nn.Module):
    """A pre-norm causal transformer with learned positions."""

    def __init__(self, vocab: int, positions: int, d: int = 128, layers: int = 3,
                 heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(positions, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, 0.0, batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.body(self.tok(x) + self.pos(torch.arange(t)), mask=mask, is_causal=True)
        return self.head(self.norm(h))


def _batch(ds, idx) -> tuple[torch.Tensor, torch.Tensor]:
    b = ds.get_batch(idx)
    return torch.from_numpy(b["tokens"]), torch.from_numpy(b["loss_mask"]).float()


def _masked_ce(model: Plain, x: torch.Tensor, mask: torch.Tensor):
    logits = model(x[:, :-1])
    w = mask[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                         reduction="none")
    return (ce * w.reshape(-1)).sum() / w.sum(), logits, w


def main() -> None:
    """Train and report (see the module docstring)."""
    root, steps, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    torch.manual_seed(0)
    train, valid = open_dataset(root, "train"), open_dataset(root, "valid")
    model = Plain(train.vocab_size, train.seq_len + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    vx, vm = _batch(valid, range(min(256, len(valid))))
    t0 = time.time()
    for step in range(1, steps + 1):
        loss, _, _ = _masked_ce(model, *_batch(train, rng.integers(0, len(train), 32).tolist()))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0:
            with torch.no_grad():
                ce, logits, w = _masked_ce(model, vx, vm)
                hit = (logits.argmax(-1) == vx[:, 1:]).float() * w
                acc = hit.sum(0)[w.sum(0) > 0] / w.sum(0)[w.sum(0) > 0]
            print(step, f"train {loss.item():.3f} valid {ce.item():.3f} by target token",
                  [round(a, 2) for a in acc.tolist()], f"{time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
