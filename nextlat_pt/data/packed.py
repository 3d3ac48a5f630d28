"""Packed fixed-length samples from one token stream, and a deterministic, resumable order.

The global sample order is a pure function of (seed, epoch, dataset length), so the only loader
state a checkpoint needs is `consumed_samples`; resuming, and resuming with another
data-parallel size, continues exactly the same stream (the Megatron/OLMo-core pattern).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def epoch_permutation(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The sample order of one epoch: `np.random.default_rng([seed, epoch]).permutation(n)`.

    The one definition shared by `GlobalBatchSampler` and the sharded loader's single-dataset
    order, so both visit the same samples in the same order.
    """
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class PackedTokenDataset:
    """Windows of `seq_len + 1` tokens over a flat stream of EOS-separated documents.

    Sample i is `tokens[i*seq_len : i*seq_len + seq_len + 1]`: consecutive windows share one
    token, so every token after the first is a target exactly once. Each sample also carries
    `doc_ids`, the number of EOS tokens strictly before each position in the window: an EOS
    belongs to the document it ends, and the token after it starts the next document id.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, eos_id: int) -> None:
        """Wrap a 1-D token array (any integer dtype; kept as is, not copied)."""
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}")
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be positive")
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"token array of length {len(tokens)} is shorter than one sample of seq_len+1 "
                f"= {seq_len + 1} tokens; lower seq_len or give more data"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.eos_id = eos_id

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Sample i as {"tokens", "doc_ids"}, each an int64 tensor of shape [seq_len + 1]."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        batch = self.get_batch([i % len(self)])
        return {k: v[0] for k, v in batch.items()}

    def get_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Samples stacked: {"tokens", "doc_ids"}, int64 tensors of shape [len(indices), seq_len+1].

        One gather for the whole batch instead of one small tensor per sample.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample indices must be in [0, {len(self)}), got {indices}")
        offsets = idx[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        tokens = self.tokens[offsets].astype(np.int64)
        doc_ids = np.zeros_like(tokens)
        np.cumsum(tokens[:, :-1] == self.eos_id, axis=1, out=doc_ids[:, 1:])
        return {"tokens": torch.from_numpy(tokens), "doc_ids": torch.from_numpy(doc_ids)}


class GlobalBatchSampler:
    """This data-parallel rank's sample indices for each global batch, forever.

    The stream concatenates epochs; epoch e visits the samples in the order
    `np.random.default_rng([seed, e]).permutation(num_samples)`. Global batch b covers stream
    positions [consumed + b*G, consumed + (b+1)*G) and rank r takes the contiguous slice
    [r*G/dp, (r+1)*G/dp) of it, so the global batch does not depend on the DP size.

    `consumed_samples` counts the samples of every global batch handed out, all ranks together;
    it is advanced before each batch is yielded, so saving it after the optimizer step that used
    a batch resumes with the next one.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        seed: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        consumed_samples: int = 0,
    ) -> None:
        """Validate the layout; see the class docstring for the order."""
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be positive (the dataset is empty)")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size={global_batch_size} must be positive")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        if global_batch_size % dp_size:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by the data-parallel "
                f"size {dp_size}; choose a global batch size that is a multiple of {dp_size}"
            )
        if seed < 0:
            raise ValueError(f"seed={seed} must be non-negative")
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples={consumed_samples} must be non-negative")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples
        self._perm_cache: dict[int, np.ndarray] = {}

    @property
    def local_batch_size(self) -> int:
        """Samples per global batch on this rank."""
        return self.global_batch_size // self.dp_size

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The sample order of one epoch."""
        perm = self._perm_cache.get(epoch)
        if perm is None:
            perm = epoch_permutation(self.seed, epoch, self.num_samples)
            # A batch spans at most two epochs (when G <= num_samples); keep just the latest few.
            if len(self._perm_cache) >= 2:
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = perm
        return perm

    def stream(self, start: int, stop: int) -> list[int]:
        """Sample indices at stream positions [start, stop)."""
        out: list[int] = []
        pos = start
        while pos < stop:
            epoch, offset = divmod(pos, self.num_samples)
            take = min(stop - pos, self.num_samples - offset)
            out.extend(self.epoch_permutation(epoch)[offset : offset + take].tolist())
            pos += take
        return out

    def __iter__(self) -> Iterator[list[int]]:
        local = self.local_batch_size
        while True:
            start = self.consumed_samples + self.dp_rank * local
            indices = self.stream(start, start + local)
            self.consumed_samples += self.global_batch_size
            yield indices
