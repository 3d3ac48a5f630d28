"""Tokenization of document batches, in the calling process or in a pool of worker processes.

Kept separate (and light on imports) because every spawned worker imports it. The result of a
batch is a pure function of its texts and the model, so how the batches are spread over workers
cannot change the output; the caller consumes the results in submission order.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import numpy as np
import sentencepiece as spm

_SP: spm.SentencePieceProcessor | None = None
T = TypeVar("T")


def init_worker(model_proto: bytes) -> None:
    """Load the tokenizer once per process."""
    global _SP
    _SP = spm.SentencePieceProcessor(model_proto=model_proto)


def tokenize_batch(texts: list[str | tuple[str, str]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, tokens, prompt_lengths): each document's ids followed by EOS, concatenated as
    uint32, and how many of its first tokens are its prompt's.

    A document is a text (no prompt) or a (prompt, completion) pair, whose two parts are
    tokenized apart: the boundary between them is always a token boundary.
    """
    assert _SP is not None, "init_worker was not called"
    prompts = [t[0] if isinstance(t, tuple) else "" for t in texts]
    bodies = [t[1] if isinstance(t, tuple) else t for t in texts]
    docs = _SP.encode(bodies, out_type=int, num_threads=1)
    prompt_lengths = np.zeros(len(texts), dtype=np.int64)
    if any(prompts):
        for i, ids in enumerate(_SP.encode(prompts, out_type=int, num_threads=1)):
            docs[i][:0] = ids
            prompt_lengths[i] = len(ids)
    eos = _SP.eos_id()
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    for d in docs:
        d.append(eos)
    flat = np.fromiter(
        itertools.chain.from_iterable(docs), dtype=np.uint32, count=int(lengths.sum())
    )
    return lengths, flat, prompt_lengths


class Tokenizers:
    """Maps `tokenize_batch` over batches with `workers` processes, results in input order.

    At most a few batches per worker are in flight, so a huge input never queues up in memory
    (`Pool.imap` would read the whole input ahead). One worker runs in this process. Workers are
    spawned, not forked, so whatever threads the caller runs cannot deadlock them; a worker that
    dies (or cannot start) is an error, not a hang.
    """

    def __init__(self, model_proto: bytes, workers: int) -> None:
        """Start the pool."""
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self._pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(model_proto,),
            )
        else:
            init_worker(model_proto)

    def map(
        self, batches: Iterable[tuple[T, list]]
    ) -> Iterator[tuple[T, np.ndarray, np.ndarray, np.ndarray]]:
        """For each (tag, texts) in `batches`: (tag, lengths, tokens, prompt_lengths), in the
        same order."""
        if self._pool is None:
            for tag, texts in batches:
                yield (tag, *tokenize_batch(texts))
            return
        pending: deque[tuple[T, Future]] = deque()
        limit = 3 * self.workers
        try:
            for tag, texts in batches:
                pending.append((tag, self._pool.submit(tokenize_batch, texts)))
                while len(pending) >= limit:
                    done_tag, future = pending.popleft()
                    yield (done_tag, *future.result())
            while pending:
                done_tag, future = pending.popleft()
                yield (done_tag, *future.result())
        except BrokenProcessPool:
            raise RuntimeError(
                "a tokenizer worker process died (out of memory, killed, or it could not start: "
                "a script that calls prepare_data needs an `if __name__ == \"__main__\":` "
                "guard); retry with --workers 1 to see the cause"
            ) from None

    def close(self) -> None:
        """Stop the workers."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
