"""Latent diagnostics of one model on validation windows: effective rank of the final
hidden states and token-offset probes, with the model's own next-token CE and accuracy from
the same pass (so every number of a report is measured on the same positions)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import Tensor

from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.errors import DataError
from nextlat_pt.data.loader import make_valid_batches
from nextlat_pt.eval import defaults
from nextlat_pt.eval.diagnostics.hidden import DEFAULT_BATCH_SIZE, forward_windows
from nextlat_pt.eval.diagnostics.probes import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    ProbeResult,
    token_offset_probes,
)
from nextlat_pt.eval.diagnostics.rank import effective_rank
from nextlat_pt.eval.models import ScoredModel

# The paper's effective-rank sample (docs/method.md §9): 256 sequences × 256 tokens.
DEFAULT_SEQUENCES = defaults.DIAG_SEQUENCES
DEFAULT_TOKENS = defaults.DIAG_TOKENS
DEFAULT_OFFSETS = defaults.PROBE_OFFSETS


@dataclass
class DiagnosticWindows:
    """The first `sequences` validation windows, cut to `length`+1 tokens."""

    tokens: Tensor  # [sequences, length + 1] int64
    length: int  # positions scored per window (hidden states h_0..h_{length-1})
    requested_sequences: int
    requested_tokens: int
    data: str

    @property
    def sequences(self) -> int:
        return int(self.tokens.shape[0])

    def shortfall(self) -> str | None:
        """A note when the split (or the model) gave fewer windows/tokens than asked."""
        if self.sequences >= self.requested_sequences and self.length >= self.requested_tokens:
            return None
        return (f"note: diagnostics use {self.sequences} windows × {self.length} tokens (asked "
                f"{self.requested_sequences} × {self.requested_tokens}; that is what {self.data}"
                f" and the model's positions allow)")


def load_windows(data: Path, sequences: int, tokens: int, max_positions: int,
                 fingerprint: str | None) -> DiagnosticWindows:
    """Validation windows of the split at `data` (the same ones `eval` scores first)."""
    if sequences < 2 or tokens < 1:
        raise DataError(f"diagnostics need at least 2 sequences (the probes split by "
                        f"sequence) and 1 token; got {sequences} × {tokens}")
    from nextlat_pt.eval.valid_loss import eval_split

    data = eval_split(data)[0]  # the split `eval` scores (validation_loss notes a fallback)
    ds = open_dataset(data, "valid")
    try:
        available, seq_len = len(ds), ds.seq_len
    finally:
        ds.close()
    count = min(sequences, available)
    if count < 2:
        raise DataError(f"validation split {data} holds {available} window(s); the diagnostics "
                        f"need at least 2; prepare a larger validation split")
    batch = make_valid_batches(data, seq_len, count, 1, expected_fingerprint=fingerprint)[0]
    length = min(tokens, seq_len, max_positions)
    return DiagnosticWindows(tokens=batch["tokens"][:, : length + 1], length=length,
                             requested_sequences=sequences, requested_tokens=tokens,
                             data=str(data))


@dataclass
class DiagnosticsResult:
    """What `eval --diagnostics` reports for one model."""

    model: str
    data: str
    sequences: int
    tokens: int  # per sequence
    ce: float  # the model's next-token CE over the same positions
    next_token_accuracy: float  # its LM head's top-1 accuracy there
    effective_rank: float
    hidden_size: int
    probes: list[ProbeResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """The effective-rank line and the probe table."""
        lines = [f"diagnostics on {self.sequences} windows × {self.tokens} tokens of "
                 f"{self.data}:",
                 f"  next-token CE {self.ce:.4f} nats, LM-head accuracy "
                 f"{self.next_token_accuracy:.4f}",
                 f"  effective rank {self.effective_rank:.2f} (of hidden size "
                 f"{self.hidden_size})"]
        if self.probes:
            lines.append("  linear probes, token x_{t+k} from h_t (held-out windows):")
            lines.append("    k  accuracy  majority  train acc  held-out CE  classes  unseen")
            for p in self.probes:
                lines.append(f"  {p.offset:>3}  {p.accuracy:8.4f}  {p.majority_accuracy:8.4f}  "
                             f"{p.train_accuracy:9.4f}  {p.ce:11.4f}  {p.num_classes:7d}  "
                             f"{p.unseen_fraction:6.4f}")
        return "\n".join(lines)


def run_diagnostics(model: ScoredModel, windows: DiagnosticWindows, offsets: int,
                    probe_steps: int = DEFAULT_STEPS, probe_lr: float = DEFAULT_LR,
                    batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> DiagnosticsResult:
    """Effective rank and probes at offsets 1..`offsets` (0: none) of `model` on `windows`."""
    if offsets < 0 or offsets > windows.length:
        raise DataError(f"--probe-offsets {offsets} must be in [0, {windows.length}] (the "
                        f"tokens per window used)")
    if int(windows.tokens.max()) >= model.vocab_size:
        raise DataError(f"{windows.data} holds token id {int(windows.tokens.max())}, outside "
                        f"the model's vocabulary of {model.vocab_size}")
    scored = forward_windows(model, windows.tokens, windows.length, batch_size)
    probes = token_offset_probes(scored.hidden, windows.tokens, range(1, offsets + 1),
                                 num_classes=model.vocab_size, steps=probe_steps, lr=probe_lr,
                                 seed=seed) if offsets else []
    return DiagnosticsResult(model=model.description, data=windows.data,
                             sequences=windows.sequences, tokens=windows.length, ce=scored.ce,
                             next_token_accuracy=scored.accuracy,
                             effective_rank=effective_rank(scored.hidden),
                             hidden_size=int(scored.hidden.shape[-1]), probes=probes)
