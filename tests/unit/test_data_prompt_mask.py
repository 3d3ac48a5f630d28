"""prepare-data --prompt-field: JSONL (prompt, completion) records become samples with a loss
mask on the completion (and its EOS), kept through packing across documents and resume, and
the trainer's micro-batch trains exactly the predictions of masked-in tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.errors import DataError
from nextlat_pt.data.packing import Packer, Pointer
from nextlat_pt.data.prepare import prepare_data
from nextlat_pt.data.synthetic import synthetic_documents
from nextlat_pt.data.tokenizer import Tokenizer, train_sentencepiece_on
from nextlat_pt.train.step import MicroBatch

SEQ_LEN = 24


@pytest.fixture(scope="module")
def prompted(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompted")
    texts = synthetic_documents(60, seed=5)
    records = [{"prompt": t[: len(t) // 3], "text": t[len(t) // 3:]} for t in texts]
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tok = train_sentencepiece_on(lambda: iter(texts), root / "tok", 400, num_threads=1)
    return root, path, records, Tokenizer.load(tok)


def _stream(ds) -> tuple[list[int], list[int]]:
    """The split's token stream and mask, from its windows (consecutive ones share a token)."""
    tokens, mask = [], []
    for i in range(len(ds)):
        s = ds.get(i)
        tokens += s["tokens"][1 if i else 0:].tolist()
        mask += s["loss_mask"][1 if i else 0:].tolist()
    return tokens, mask


def test_the_mask_covers_the_completions_and_their_eos_only(prompted):
    root, path, records, tok = prompted
    prepare_data([path], tok.model_path, SEQ_LEN, root / "out", prompt_field="prompt",
                 workers=1, log=lambda m: None)
    ds = open_dataset(root / "out")
    assert ds.has_loss_mask
    want_tokens, want_mask = [], []
    for r in records:
        p, c = tok.encode(r["prompt"]), tok.encode(r["text"])
        want_tokens += p + c + [tok.eos_id]
        want_mask += [0] * len(p) + [1] * (len(c) + 1)
    tokens, mask = _stream(ds)
    assert tokens == want_tokens[:len(tokens)] and mask == want_mask[:len(mask)]
    assert len(tokens) > len(want_tokens) - SEQ_LEN - 1  # only the last partial window drops


def test_a_prompt_field_needs_jsonl_inputs(prompted, tmp_path):
    root, _, _, tok = prompted
    (tmp_path / "a.txt").write_text("plain text")
    with pytest.raises(DataError, match="--prompt-field needs JSONL inputs"):
        prepare_data([tmp_path / "a.txt"], tok.model_path, SEQ_LEN, tmp_path / "o",
                     prompt_field="prompt", log=lambda m: None)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "no prompt here"}) + "\n")
    with pytest.raises(DataError, match="prompt field 'prompt' is missing"):
        prepare_data([tmp_path / "b.jsonl"], tok.model_path, SEQ_LEN, tmp_path / "o2",
                     prompt_field="prompt", log=lambda m: None)


def test_packing_resumed_inside_a_document_keeps_the_mask():
    rng = np.random.default_rng(0)
    docs = []
    for g in range(12):
        n = int(rng.integers(3, 30))
        docs.append((g, rng.integers(5, 99, n).astype(np.uint32), rng.integers(0, 2, n) > 0))

    def windows(packer, feed):
        packer.add(feed)
        return [(w.index, w.tokens.tolist(), w.loss_mask.tolist())
                for w, _ in packer.drain(lambda i: True)]

    full = Packer(7, with_mask=True)
    whole = windows(full, docs)
    first = Packer(7, with_mask=True)
    first.add(docs[:5])
    cut = first.drain(lambda i: True)[-1]
    end = cut[1][1]  # where the next window starts: inside a document
    rest = windows(Packer(7, Pointer.from_list(end.to_list()), first_sample=cut[0].index + 1,
                          with_mask=True), docs)
    assert end.offset > 0 and rest == whole[cut[0].index + 1:]
    with pytest.raises(ValueError, match="one loss-mask value per token"):
        Packer(7, with_mask=True).add([(0, np.arange(5, dtype=np.uint32))])


def test_the_prediction_at_t_is_trained_when_token_t_plus_1_is_a_target():
    tokens = torch.arange(6).unsqueeze(0)
    mask = torch.tensor([[0, 0, 0, 1, 1, 0]], dtype=torch.uint8)
    batch = MicroBatch.from_sample({"tokens": tokens, "doc_ids": torch.zeros_like(tokens),
                                    "loss_mask": mask}, torch.device("cpu"))
    assert batch.labels[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert batch.loss_mask[:, 0].tolist() == [0, 0, 1, 1, 0]  # predictions of tokens 3 and 4
