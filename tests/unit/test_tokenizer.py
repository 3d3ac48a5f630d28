"""Tokenizer training and the Tokenizer wrapper: exact round trips, fingerprints, clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nextlat_pt.data import tokenizer as tokenizer_mod
from nextlat_pt.data.tokenizer import Tokenizer, train_sentencepiece

# Code that trips a normalizing tokenizer: tabs, runs of spaces, trailing spaces, blank lines,
# CRLF, a leading space at the very start, NFKC-sensitive characters and non-Latin text.
TRICKY_CODE = (
    "  # leading spaces at the start\n"
    "def f(x):\n"
    "\tif x:\t# tab after code\n"
    "\t\treturn  x   \n"
    "\n"
    "\n"
    "    y = '\ufb01 \u00e9\u0301 \u65e5\u672c \u2264'  \r\n"
    "class A:\n        pass\n"
)


def _write_training_text(path: Path, copies: int = 40) -> Path:
    lines = [
        "import os",
        "def main(argv):",
        "    for i in range(10):",
        "        print(i, argv[i] if i < len(argv) else None)",
        "    return 0",
        "class Parser(object):",
        "    def __init__(self, text):",
        "        self.text = text  # keep the raw text",
        "\tindented_with_tab = 1",
        "x = {'a': 1, 'b': [2, 3], 'c': (4, 5)}",
        "",
    ]
    path.write_text("\n".join(lines * copies), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return _write_training_text(tmp_path_factory.mktemp("text") / "code.txt")


@pytest.fixture(scope="module")
def tok(corpus_file, tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok")
    return Tokenizer.load(train_sentencepiece([corpus_file], out, vocab_size=320, num_threads=1))


def test_model_file_and_special_ids(tok, corpus_file):
    assert tok.model_path.name == "tokenizer.model"
    assert tok.vocab_size == 320
    assert (tok.id_to_piece(0), tok.bos_id, tok.eos_id, tok.pad_id) == ("<unk>", 1, 2, 3)


def test_round_trips_code_exactly(tok):
    ids = tok.encode(TRICKY_CODE)
    assert tok.decode(ids) == TRICKY_CODE
    # Characters never seen in training come back through byte fallback, not <unk>.
    assert 0 not in ids


def test_newline_is_one_piece(tok):
    ids = tok.encode("a\nb")
    assert tok.encode("\n") == [ids[1]]
    assert tok.id_to_piece(ids[1]) == "\n"


def test_line_start_tokenizes_like_document_start(tok):
    # No dummy prefix: "def" after a newline encodes the same as "def" opening a document.
    assert tok.encode("x\ndef main(argv):")[2:] == tok.encode("def main(argv):")


def test_encode_batch_matches_encode(tok):
    texts = [TRICKY_CODE, "", "import os\n", "x = 1\n" * 50]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_fingerprint_is_sha256_of_model_file(tok):
    assert tok.fingerprint == hashlib.sha256(tok.model_path.read_bytes()).hexdigest()


def test_training_is_deterministic_and_fingerprint_tracks_model(corpus_file, tmp_path):
    # input_sentence_size below the line count exercises the seeded sampling.
    kw = {"vocab_size": 320, "input_sentence_size": 150, "num_threads": 1}
    a = Tokenizer.load(train_sentencepiece([corpus_file], tmp_path / "a", **kw))
    b = Tokenizer.load(train_sentencepiece([corpus_file], tmp_path / "b", **kw))
    assert a.fingerprint == b.fingerprint
    c = Tokenizer.load(train_sentencepiece([corpus_file], tmp_path / "c", **{**kw, "seed": 1}))
    d = Tokenizer.load(
        train_sentencepiece([corpus_file], tmp_path / "d", **{**kw, "vocab_size": 330})
    )
    assert len({a.fingerprint, c.fingerprint, d.fingerprint}) == 3


def test_failed_write_keeps_previous_model(corpus_file, tmp_path, monkeypatch):
    path = train_sentencepiece([corpus_file], tmp_path, vocab_size=320, num_threads=1)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        train_sentencepiece([corpus_file], tmp_path, vocab_size=330, num_threads=1)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.model"]  # no temp left


def test_missing_input_file(tmp_path, corpus_file):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"nope\.txt not found"):
        train_sentencepiece([corpus_file, missing], tmp_path / "out", vocab_size=300)
    assert not (tmp_path / "out").exists()


def test_empty_input(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n\n")
    with pytest.raises(ValueError, match="no non-empty lines"):
        train_sentencepiece([blank], tmp_path / "out", vocab_size=300)
    with pytest.raises(ValueError, match="no input files"):
        train_sentencepiece([], tmp_path / "out", vocab_size=300)


def test_vocab_too_small_names_the_minimum(corpus_file, tmp_path):
    # 4 special + 256 bytes + "\n" + every distinct character of the text.
    need = 4 + 256 + 1 + len(set(corpus_file.read_text().replace("\n", "")))
    with pytest.raises(ValueError, match=rf"vocab_size=100 is too small.*at least {need};"):
        train_sentencepiece([corpus_file], tmp_path, vocab_size=100)


def test_vocab_too_large_names_the_maximum(corpus_file, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=60000 is too large.*at most \d+ pieces"):
        train_sentencepiece([corpus_file], tmp_path, vocab_size=60000)


def test_load_missing_model(tmp_path):
    # A user reads this: it names the command, not a Python function.
    with pytest.raises(FileNotFoundError, match="`nextlat-pt train-tokenizer`"):
        Tokenizer.load(tmp_path / "tokenizer.model")
