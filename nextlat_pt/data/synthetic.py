"""Small synthetic corpora for tests and benchmarks: code-like and prose-like documents.

Seeded, so a test can regenerate exactly what it wrote. The text mixes identifiers,
indentation, tabs, digits, punctuation and some non-ASCII, to exercise byte fallback and
whitespace handling the way real data does.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Sequence
from pathlib import Path

_WORDS = (
    "the of and to in is for with on that as by this from data model token layer loss value "
    "train batch step shard index sample window seq_len vocab epoch seed weight rank"
).split()
_CODE = [
    "def {a}({b}, {c}):", "    return {a} + {b}", "    if {a} > {b}:", "\tpass",
    "for {a} in range({n}):", "class {A}({B}):", "    {a} = [{n}, {n}, {n}]",
    "import {a}", "# {a} {b} {c}", "print({a!r}, {n})", "{a}.{b}({c}={n})",
]
_EXTRA = ["caf\u00e9", "na\u00efve", "\u65e5\u672c", "\u2264", "\u03bb", "\u00fcber"]


def _code_line(rng: random.Random) -> str:
    w = [rng.choice(_WORDS) for _ in range(3)]
    return rng.choice(_CODE).format(
        a=w[0], b=w[1], c=w[2], A=w[0].title(), B=w[1].title(), n=rng.randint(0, 999)
    )


def _prose_line(rng: random.Random) -> str:
    words = [rng.choice(_WORDS + _EXTRA[: rng.randint(0, 2)]) for _ in range(rng.randint(3, 14))]
    return " ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ":"])


def synthetic_documents(
    count: int, seed: int = 0, min_lines: int = 1, max_lines: int = 40
) -> list[str]:
    """`count` documents of `min_lines`..`max_lines` lines, half code-like, half prose."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        make = _code_line if rng.random() < 0.5 else _prose_line
        docs.append("\n".join(make(rng) for _ in range(rng.randint(min_lines, max_lines))))
    return docs


def write_jsonl(path: Path, docs: Sequence[str], field: str = "text") -> Path:
    """Write documents as JSON lines ({field: text, "id": n}), gzip-compressed for `.gz`,
    zstd for `.zst` (needs the zstandard package)."""
    path = Path(path)
    payload = "".join(
        json.dumps({"id": i, field: d}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)
    ).encode("utf-8")
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    elif path.suffix == ".zst":
        import zstandard

        payload = zstandard.ZstdCompressor().compress(payload)
    path.write_bytes(payload)
    return path
