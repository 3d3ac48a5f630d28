"""Packing one split's documents into windows of seq_len+1 tokens, resumable at any window.

The split's token stream is its documents in input order, each followed by EOS. Window i is
`stream[i*seq_len : i*seq_len + seq_len + 1]`: consecutive windows share one token, so every
token after the first is a target exactly once (the layout of `packed.PackedTokenDataset`). The
tail that does not fill a window is dropped.

A `Pointer` names a stream position by (document, token offset inside it), so a later run can
restart packing at any window without the documents before it: that is how an interrupted
`prepare-data` skips the tokenization of what it already wrote.

A packer made `with_mask` carries a per-token loss mask beside the tokens (documents given as
(index, tokens, mask)); its windows have the mask of their seq_len+1 tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pointer:
    """A position in a split's stream.

    `doc` is the document's index among all input documents (both splits, in input order),
    `offset` the token offset inside it (its EOS included) and `docs_before` the number of this
    split's documents before `doc`.
    """

    doc: int = 0
    offset: int = 0
    docs_before: int = 0

    def to_list(self) -> list[int]:
        """JSON form."""
        return [self.doc, self.offset, self.docs_before]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> Pointer:
        """Inverse of `to_list`."""
        doc, offset, docs_before = (int(v) for v in values)
        return cls(doc, offset, docs_before)


@dataclass
class Window:
    """One packed sample: its index in the split, tokens, document starts, and the loss mask
    of its tokens when the packer carries one."""

    index: int
    tokens: np.ndarray
    starts: np.ndarray
    loss_mask: np.ndarray | None = None


class Packer:
    """Cuts a stream of whole documents into windows; starts at `start` (sample `first_sample`).

    Feed documents with `add` (in input order; documents before `start.doc` and the first
    `start.offset` tokens of `start.doc` are ignored), then `drain` the complete windows.
    """

    def __init__(self, seq_len: int, start: Pointer = Pointer(), first_sample: int = 0,
                 with_mask: bool = False) -> None:
        """An empty packer whose next window is sample `first_sample`, beginning at `start`."""
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be positive")
        self.seq_len = seq_len
        self.start = start
        self.next_sample = first_sample
        self._buf = np.empty(0, dtype=np.uint32)
        self._mask = np.empty(0, dtype=np.uint8) if with_mask else None
        # One segment per document in the buffer: its doc index, where it begins in the
        # buffer, and the token offset inside the document at that point.
        self._seg_doc = np.empty(0, dtype=np.int64)
        self._seg_pos = np.empty(0, dtype=np.int64)
        self._seg_off = np.empty(0, dtype=np.int64)
        self._docs_before_buffer = start.docs_before
        self.docs_added = 0

    @property
    def documents(self) -> int:
        """This split's documents so far (those before the start pointer included)."""
        return self.start.docs_before + self.docs_added

    @property
    def num_tokens(self) -> int:
        """Length of the stream so far (all windows' tokens, the shared ones once, + buffer)."""
        return self.next_sample * self.seq_len + len(self._buf)

    def add(self, docs: Sequence[tuple[int, np.ndarray] | tuple[int, np.ndarray, np.ndarray]]
            ) -> None:
        """Append documents, given as (document index, tokens with their EOS[, loss mask of
        those tokens]), in order. A packer made `with_mask` needs the mask."""
        arrays, seg_doc, seg_pos, seg_off = [self._buf], [], [], []
        masks = [self._mask]
        pos = len(self._buf)
        for doc, tokens, *mask in docs:
            offset = 0
            if doc < self.start.doc:
                continue
            if self._mask is not None:
                if not mask or len(mask[0]) != len(tokens):
                    raise ValueError(f"document {doc}: a masked packer needs one loss-mask "
                                     "value per token")
                masks.append(mask[0][self.start.offset:] if doc == self.start.doc else mask[0])
            if doc == self.start.doc:
                offset = self.start.offset
                tokens = tokens[offset:]
            if not len(tokens):
                continue
            arrays.append(tokens)
            seg_doc.append(doc)
            seg_pos.append(pos)
            seg_off.append(offset)
            pos += len(tokens)
            self.docs_added += 1
        if len(arrays) == 1:
            return
        self._buf = np.concatenate(arrays).astype(np.uint32, copy=False)
        if self._mask is not None:
            self._mask = np.concatenate(masks).astype(np.uint8, copy=False)
        self._seg_doc = np.concatenate([self._seg_doc, seg_doc])
        self._seg_pos = np.concatenate([self._seg_pos, seg_pos])
        self._seg_off = np.concatenate([self._seg_off, seg_off])

    def _pointer_at(self, pos: int) -> Pointer:
        seg = int(np.searchsorted(self._seg_pos, pos, side="right")) - 1
        return Pointer(
            doc=int(self._seg_doc[seg]),
            offset=int(self._seg_off[seg] + pos - self._seg_pos[seg]),
            docs_before=self._docs_before_buffer + seg,
        )

    def pointer(self) -> Pointer:
        """Where the next window begins (valid while the buffer holds a token)."""
        return self._pointer_at(0)

    def drain(
        self, want_pointers: Callable[[int], bool] = lambda i: False
    ) -> list[tuple[Window, tuple[Pointer, Pointer] | None]]:
        """Every complete window, with the pointers of its first and last token when
        `want_pointers(index)` says so.

        The windows are views of the current buffer, which is then cut after the last window's
        final token (that token opens the next window).
        """
        s = self.seq_len
        count = (len(self._buf) - 1) // s if len(self._buf) else 0
        if count <= 0:
            return []
        # Document starts inside the buffer (a segment that begins at offset 0).
        doc_starts = self._seg_pos[self._seg_off == 0]
        out = []
        for k in range(count):
            lo = k * s
            a, b = np.searchsorted(doc_starts, [lo, lo + s + 1])
            window = Window(self.next_sample, self._buf[lo : lo + s + 1], doc_starts[a:b] - lo,
                            None if self._mask is None else self._mask[lo : lo + s + 1])
            pointers = None
            if want_pointers(window.index):
                pointers = (self._pointer_at(lo), self._pointer_at(lo + s))
            out.append((window, pointers))
            self.next_sample += 1
        self._trim(count * s)
        return out

    def _trim(self, cut: int) -> None:
        """Drop the buffer before position `cut` (the last window's final token stays)."""
        first = int(np.searchsorted(self._seg_pos, cut, side="right")) - 1
        self._docs_before_buffer += first
        self._seg_off = self._seg_off[first:].copy()
        self._seg_off[0] += cut - self._seg_pos[first]
        self._seg_doc = self._seg_doc[first:]
        self._seg_pos = self._seg_pos[first:] - cut
        self._seg_pos[0] = 0
        self._buf = self._buf[cut:].copy()
        if self._mask is not None:
            self._mask = self._mask[cut:].copy()
