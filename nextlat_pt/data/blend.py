"""The global sample order: stream position -> (dataset, sample), a pure function.

The training stream is infinite; position p maps to one sample of one dataset through a
function of (seed, the datasets' lengths, the weights, p) alone, so the only loader state a
checkpoint needs is the number of positions consumed.

- One dataset: epochs back to back, epoch e in the order
  `np.random.default_rng([seed, e]).permutation(n)`: exactly `packed.GlobalBatchSampler`'s.
- Several datasets: the stream is cut into blocks of `block_size` (65536) positions. Every
  block holds exactly n_d samples of dataset d, n_d being w_d * block_size rounded by largest
  remainder (ties to the earlier dataset), so the proportions are exact within each block.
  The block's layout (which dataset at which position) is the sequence of n_0 zeros, n_1 ones,
  ..., permuted by `default_rng([seed, 0, b])`. The j-th position of dataset d in block b takes
  draw k = b * n_d + j from dataset d's own stream, which is dataset d's epochs back to back,
  epoch e in the order `default_rng([seed, d + 1, e]).permutation(len_d)`. A small dataset is
  therefore repeated (each pass in a new order) and a large one sampled without repetition
  until it is exhausted, as weights ask.

This is Megatron's blending (fixed target proportions, then shuffled) with exact per-block
counts in place of its greedy error-minimising assignment, whose state at position p would
need the whole history up to p to compute.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nextlat_pt.data.errors import DataError
from nextlat_pt.data.packed import epoch_permutation

BLEND_BLOCK = 1 << 16


class SizedSamples(Protocol):
    """What blending needs from a dataset."""

    def __len__(self) -> int: ...

    def get(self, i: int) -> dict[str, np.ndarray]: ...


def block_counts(weights: Sequence[float], block_size: int) -> np.ndarray:
    """Samples of each dataset per block: largest-remainder rounding of w * block_size."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * block_size
    counts = np.floor(exact).astype(np.int64)
    short = block_size - int(counts.sum())
    # Stable sort on the negated remainders: the largest first, ties to the lower index.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict = OrderedDict()

    def get(self, key, make):
        value = self.items.get(key)
        if value is None:
            value = make()
            self.items[key] = value
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        else:
            self.items.move_to_end(key)
        return value


class BlendedDataset:
    """An infinite stream over one or more datasets mixed by weight (see the module docstring).

    `locate(positions)` gives (dataset index, sample index) arrays; `get(p)` the sample.
    """

    def __init__(
        self,
        datasets: Sequence[SizedSamples],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        block_size: int = BLEND_BLOCK,
    ) -> None:
        """Check the weights and the datasets; nothing is computed until used."""
        if not datasets:
            raise DataError("no training datasets given; set data.train=[{path: DIR, weight: 1}]")
        weights = [1.0] * len(datasets) if weights is None else [float(w) for w in weights]
        if len(weights) != len(datasets):
            raise DataError(f"{len(datasets)} datasets but {len(weights)} weights; give one "
                            "weight per dataset")
        for w in weights:
            if not math.isfinite(w) or w <= 0:
                raise DataError(f"blend weight {w} must be a positive number")
        for d, ds in enumerate(datasets):
            if len(ds) < 1:
                raise DataError(f"dataset {d} ({ds!r}) has no samples; drop it from data.train")
        if seed < 0:
            raise DataError(f"seed={seed} must be non-negative")
        self.datasets = list(datasets)
        self.lengths = np.array([len(ds) for ds in datasets], dtype=np.int64)
        self.weights = np.array(weights) / sum(weights)
        self.seed = seed
        self.block_size = block_size
        self.counts = block_counts(weights, block_size) if len(datasets) > 1 else None
        if self.counts is not None and (self.counts == 0).any():
            d = int(np.flatnonzero(self.counts == 0)[0])
            raise DataError(
                f"blend weight {weights[d]} of dataset {d} is too small: it gets no sample in "
                f"a block of {block_size}; raise it above {1 / block_size:.1e} of the total"
            )
        self._perms = _LRU(8)
        self._blocks = _LRU(2)

    def __repr__(self) -> str:
        parts = ", ".join(f"{w:.3f}:{n}" for w, n in zip(self.weights, self.lengths))
        return f"BlendedDataset(weight:samples {parts}, seed={self.seed})"

    def _perm(self, d: int, epoch: int) -> np.ndarray:
        n = int(self.lengths[d])
        if self.counts is None:
            return self._perms.get((d, epoch), lambda: epoch_permutation(self.seed, epoch, n))
        return self._perms.get(
            (d, epoch), lambda: np.random.default_rng([self.seed, d + 1, epoch]).permutation(n)
        )

    def _stream(self, d: int, draws: np.ndarray) -> np.ndarray:
        """Sample indices of dataset d at positions `draws` of its own epoch-shuffled stream."""
        n = int(self.lengths[d])
        epochs, offsets = np.divmod(draws, n)
        out = np.empty_like(draws)
        for e in np.unique(epochs).tolist():
            sel = epochs == e
            out[sel] = self._perm(d, e)[offsets[sel]]
        return out

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        def make() -> tuple[np.ndarray, np.ndarray]:
            counts = self.counts
            assert counts is not None
            which = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
            which = which[np.random.default_rng([self.seed, 0, b]).permutation(self.block_size)]
            # j: how many earlier positions of the block hold the same dataset.
            order = np.argsort(which, kind="stable")
            group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
            j = np.empty(self.block_size, dtype=np.int64)
            j[order] = np.arange(self.block_size) - group_start[which[order]]
            draws = b * counts[which] + j
            samples = np.empty(self.block_size, dtype=np.int64)
            for d in range(len(counts)):
                sel = which == d
                samples[sel] = self._stream(d, draws[sel])
            return which, samples

        return self._blocks.get(b, make)

    def locate(self, positions: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dataset index, sample index) of each stream position."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and pos.min() < 0:
            raise ValueError("stream positions must be non-negative")
        if self.counts is None:
            return np.zeros_like(pos), self._stream(0, pos)
        blocks, rows = np.divmod(pos, self.block_size)
        which = np.empty_like(pos)
        samples = np.empty_like(pos)
        for b in np.unique(blocks).tolist():
            sel = blocks == b
            block_which, block_samples = self._block(b)
            which[sel] = block_which[rows[sel]]
            samples[sel] = block_samples[rows[sel]]
        return which, samples

    def get(self, position: int) -> dict[str, np.ndarray]:
        """The sample at a stream position."""
        d, i = self.locate([position])
        return self.datasets[int(d[0])].get(int(i[0]))
