"""The exported Hugging Face tokenizer encodes and decodes exactly like our sentencepiece
model, loaded offline by `AutoTokenizer` from tokenizer.json alone."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import sentencepiece as spm

from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.convert.hf_tokenizer import check_parity, probe_texts, save_hf_tokenizer
from nextlat_pt.data.builtin_corpus import stdlib_source_files
from nextlat_pt.data.tokenizer import train_sentencepiece


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A BPE model with the project's settings, trained on 40 stdlib files (0.2 s)."""
    files = stdlib_source_files()[:40]
    return train_sentencepiece(files, tmp_path_factory.mktemp("sp"), 800, num_threads=1)


@pytest.fixture(scope="module")
def code_samples() -> list[str]:
    """Random slices of other stdlib files: code, docstrings, indentation."""
    rng = random.Random(1)
    out = []
    for path in rng.sample(stdlib_source_files()[40:], 40):
        text = path.read_text(encoding="utf-8")
        start = rng.randrange(max(1, len(text) - 1500))
        out.append(text[start:start + rng.randint(1, 1500)])
    return out


def test_exported_tokenizer_matches_sentencepiece(sp_model, code_samples, tmp_path,
                                                  monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    save_hf_tokenizer(sp_model, out, model_max_length=256)
    assert (out / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    # Prove that tokenizer.json alone carries the tokenizer: no sentencepiece model beside it.
    json_only = tmp_path / "json_only"
    shutil.copytree(out, json_only)
    (json_only / "tokenizer.model").unlink()
    texts = probe_texts(code_samples, count=1000)
    check_parity(json_only, sp_model, texts)
    check_parity(out, sp_model, texts)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(json_only))
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    code = "def f(x):\n\tif x:\n        return ' a  b'\n"
    assert tok.encode(code) == sp.encode(code)  # no BOS/EOS added
    assert tok.encode("</s>") == sp.encode("</s>") != [sp.eos_id()]  # specials are text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (
        1, 2, 3, 0)
    assert tok.decode(tok.encode(code)) == code


def test_parity_check_catches_a_broken_tokenizer(sp_model, tmp_path):
    out = tmp_path / "hf"
    save_hf_tokenizer(sp_model, out, model_max_length=256)
    (out / "tokenizer.model").unlink()
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][1:]  # drop the best merge
    (out / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConvertError, match="disagrees with sentencepiece"):
        check_parity(out, sp_model, probe_texts(["def main():\n    return self.x\n"] * 3))
