"""The inference decoder computes what the trained model computes, with or without its cache.

- against transformers' `LlamaForCausalLM` (GQA, tied and untied) and against our megatron
  `NextLatGPT` loaded from a real checkpoint (via `load_weights`, from the checkpoint and from
  its Hugging Face export): fp32 logits within 1e-4, ψ identical;
- token-by-token decoding with the cache equals one full forward;
- ragged rows (different prompt lengths, truncation) equal each row decoded alone.
"""

from __future__ import annotations

import pytest
import torch
from generate_helpers import decoder_of, random_llama

from nextlat_pt.data.builtin_corpus import stdlib_source_files
from nextlat_pt.data.tokenizer import train_sentencepiece

TOL = 1e-4
VOCAB = 500


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_decoder_matches_transformers(tied):
    model = random_llama(vocab=VOCAB, hidden=64, heads=4, kv_heads=2, tied=tied)
    decoder = decoder_of(model)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    hidden, logits = decoder.full_forward(ids)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    assert (logits - out.logits).abs().max().item() <= TOL
    # transformers 5's last hidden state is post-norm: the LM head's input, what ψ reads.
    assert (hidden - out.hidden_states[-1]).abs().max().item() <= TOL


def test_cached_decoding_equals_full_forward():
    model = random_llama(vocab=VOCAB, hidden=64)
    decoder = decoder_of(model)
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(1))
    _, full = decoder.full_forward(ids)
    cache = decoder.new_cache(2, 40)
    pieces = [decoder(ids[:, :7], cache)[1]]
    for start, stop in ((7, 8), (8, 12), *((t, t + 1) for t in range(12, 30))):
        pieces.append(decoder(ids[:, start:stop], cache)[1])
    assert cache.lengths.tolist() == [30, 30]
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-5


def test_ragged_rows_and_truncation_equal_rows_alone():
    """Rows of different lengths share a batch; rolling a row back and writing other tokens
    gives what a fresh forward of the new sequence gives."""
    model = random_llama(vocab=VOCAB, hidden=64)
    decoder = decoder_of(model, torch.float64)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, VOCAB, (1, 9), generator=g), torch.randint(0, VOCAB, (1, 5),
                                                                       generator=g)
    cache = decoder.new_cache(2, 20)
    padded = torch.zeros(2, 9, dtype=torch.long)
    padded[0], padded[1, :5] = a[0], b[0]
    decoder(padded, cache)
    cache.truncate(torch.tensor([9, 5]))
    junk = torch.randint(0, VOCAB, (2, 4), generator=g)
    decoder(junk, cache)  # e.g. drafts, then rejected: roll back
    cache.truncate(torch.tensor([10, 6]))  # keep only the first of them
    more = torch.randint(0, VOCAB, (2, 3), generator=g)
    hidden, logits = decoder(more, cache)
    for row, prefix in enumerate((a, b)):
        seq = torch.cat([prefix, junk[row: row + 1, :1], more[row: row + 1]], dim=1)
        ref_hidden, ref_logits = decoder.full_forward(seq)
        assert (logits[row] - ref_logits[0, -3:]).abs().max().item() <= 1e-10
        assert (hidden[row] - ref_hidden[0, -3:]).abs().max().item() <= 1e-10
    with pytest.raises(ValueError, match="hold only"):
        cache.truncate(torch.tensor([20, 0]))


@pytest.fixture(scope="module")
def nextlat_checkpoint(tmp_path_factory):
    """A real checkpoint of ours (GQA, untied, ψ) converted from a random Llama, and its
    Hugging Face export."""
    from nextlat_pt.convert.hf_tokenizer import save_hf_tokenizer
    from nextlat_pt.convert.to_hf import export_to_hf
    from nextlat_pt.convert.to_nextlat import import_from_hf

    root = tmp_path_factory.mktemp("generate_ckpt")
    sp_model = train_sentencepiece(stdlib_source_files()[:20], root / "sp", VOCAB,
                                   num_threads=1)
    model = random_llama(vocab=VOCAB, hidden=64, heads=4, kv_heads=2)
    model.save_pretrained(str(root / "hf"))
    save_hf_tokenizer(sp_model, root / "hf", 64)
    import_from_hf(root / "hf", root / "ckpt", ["model.seq_len=64", "parallel.tp=2"])
    export_to_hf(root / "ckpt", root / "export", progress=False)
    return root / "ckpt", root / "export"


def test_decoder_and_psi_match_our_megatron_model(nextlat_checkpoint, parallel_tp1):
    from nextlat_pt.convert.source import open_checkpoint
    from nextlat_pt.eval.models import NextLatModel
    from nextlat_pt.generate.weights import load_weights, target_and_drafter
    from nextlat_pt.model.gpt import embedding_lookup

    ckpt_dir, export_dir = nextlat_checkpoint
    ours = NextLatModel(open_checkpoint(ckpt_dir))
    assert ours.model.padded_vocab_size > VOCAB  # padded for TP=2; the decoder is not
    ids = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = ours.model(ids)
        ref_psi = ours.model.psi(ref.hidden, embedding_lookup(
            ours.model.psi_embedding_table(), ids)).transpose(0, 1)
    for source in (ckpt_dir, export_dir):
        weights = load_weights(source)
        assert weights.tokenizer_path is not None and weights.psi is not None
        target, drafter = target_and_drafter(weights)
        hidden, logits = target.decoder.full_forward(ids)
        diff = (logits - ours.logits(ids)).abs().max().item()
        print(f"{source.name}: max |Δlogits| vs megatron = {diff:.3e}")
        assert diff <= TOL
        assert (hidden - ref.hidden.transpose(0, 1)).abs().max().item() <= TOL
        psi = drafter.psi(hidden, torch.nn.functional.embedding(ids, drafter.embedding))
        assert (psi - ref_psi).abs().max().item() <= TOL
