"""HF Llama -> nextlat_pt checkpoint -> HF Llama, without any training run.

A random `LlamaForCausalLM` (GQA, RoPE base and norm eps off their defaults, vocabulary not a
multiple of 128) with our sentencepiece tokenizer is converted to our checkpoint for a TP=2
layout (so the vocabulary is padded), loaded into our megatron model through the trainer's
own loader, and exported again: the logits must agree and the weights come back identical.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from nextlat_pt.convert.to_hf import export_to_hf
from nextlat_pt.convert.to_nextlat import import_from_hf
from nextlat_pt.data.builtin_corpus import stdlib_source_files
from nextlat_pt.data.tokenizer import train_sentencepiece

VOCAB = 700


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    files = stdlib_source_files()[:40]
    return train_sentencepiece(files, tmp_path_factory.mktemp("sp"), VOCAB, num_threads=1)


def make_llama(out, sp_model, tied: bool):
    """A random Llama folder with our tokenizer beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nextlat_pt.convert.hf_tokenizer import save_hf_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=5000.0,
                         tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1 so a swapped norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(str(out))
    save_hf_tokenizer(sp_model, out, 64)
    return model


def _tensors(folder):
    out = {}
    for path in folder.glob("model*.safetensors"):
        out.update(load_file(str(path)))
    return out


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_hf_to_nextlat_to_hf(tied, sp_model, tmp_path, parallel_tp1):
    from nextlat_pt.convert.source import open_checkpoint
    from nextlat_pt.eval.models import NextLatModel

    hf_dir, ckpt_dir, back = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "back"
    hf_model = make_llama(hf_dir, sp_model, tied).eval()
    result = import_from_hf(hf_dir, ckpt_dir, ["parallel.tp=2", "model.seq_len=64"])
    assert result.psi == "fresh"  # a foreign folder has no ψ: freshly initialised
    state = json.loads((ckpt_dir / "trainer_state.json").read_text())
    assert state["layout"]["converted_from_hf"] and state["layout"]["tp"] == 2
    assert state["step"] == 0 and state["tokenizer"]["vocab_size"] == VOCAB

    ours = NextLatModel(open_checkpoint(ckpt_dir))
    assert ours.model.padded_vocab_size == 768  # padded for TP=2: multiple of 256
    ids = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours.logits(ids) - hf_model(input_ids=ids).logits).abs().max().item()
    print(f"{'tied' if tied else 'untied'} HF -> ours: max |Δlogits| = {diff:.3e}")
    assert diff <= 1e-4, diff

    export_to_hf(ckpt_dir, back, progress=False)
    original, again = _tensors(hf_dir), _tensors(back)
    assert original.keys() == again.keys()
    for name in original:
        assert torch.equal(original[name], again[name]), name
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied and cfg["num_key_value_heads"] == 2
    assert cfg["rope_parameters"]["rope_theta"] == 5000.0 and cfg["rms_norm_eps"] == 1e-6


def test_psi_survives_the_round_trip_and_ntp_drops_it(sp_model, tmp_path, parallel_tp1):
    hf_dir = tmp_path / "hf"
    make_llama(hf_dir, sp_model, tied=False)
    import_from_hf(hf_dir, tmp_path / "ckpt", ["model.seq_len=64"])
    export_to_hf(tmp_path / "ckpt", tmp_path / "export", progress=False)
    psi = load_file(str(tmp_path / "export" / "nextlat_dynamics.safetensors"))
    assert psi["fc1.weight"].shape == (128, 128)  # width 128·round(2·64/128), input [h; e]

    # Our export carries ψ: importing it again keeps ψ exactly.
    result = import_from_hf(tmp_path / "export", tmp_path / "ckpt2")
    assert result.psi == "loaded"
    export_to_hf(tmp_path / "ckpt2", tmp_path / "export2", progress=False)
    again = load_file(str(tmp_path / "export2" / "nextlat_dynamics.safetensors"))
    assert all(torch.equal(psi[k], again[k]) for k in psi)

    shutil.rmtree(tmp_path / "ckpt2")
    result = import_from_hf(tmp_path / "export", tmp_path / "ckpt2", ["nextlat.objective=ntp"])
    assert result.psi == "none"
    export_to_hf(tmp_path / "ckpt2", tmp_path / "export3", progress=False)
    assert not (tmp_path / "export3" / "nextlat_dynamics.safetensors").exists()


def test_jtp_fetch_goes_beside_the_llama_and_comes_back(sp_model, tmp_path, parallel_tp1):
    """A JTP checkpoint exports the trunk as the plain Llama (unchanged) and Fetch in its own
    file, which an import of the export loads again exactly."""
    hf_dir = tmp_path / "hf"
    make_llama(hf_dir, sp_model, tied=False)
    jtp = ["model.seq_len=64", "nextlat.objective=jtp", "nextlat.horizon=2"]
    import_from_hf(hf_dir, tmp_path / "ckpt", jtp)  # Fetch freshly initialised
    export_to_hf(tmp_path / "ckpt", tmp_path / "export", progress=False)
    original, llama = _tensors(hf_dir), _tensors(tmp_path / "export")
    assert original.keys() == llama.keys()
    assert all(torch.equal(original[k], llama[k]) for k in original)
    fetch = load_file(str(tmp_path / "export" / "jtp_fetch.safetensors"))
    assert fetch["offsets"].shape == (3, 64) and fetch["qkv.weight"].shape == (192, 64)
    assert json.loads((tmp_path / "export" / "jtp_fetch.json").read_text())["steps"] == 2
    assert "Fetch" in (tmp_path / "export" / "README.md").read_text()

    # the recorded config (JTP); another seed, so a fresh Fetch would differ
    import_from_hf(tmp_path / "export", tmp_path / "ckpt2", ["run.seed=7"])
    export_to_hf(tmp_path / "ckpt2", tmp_path / "export2", progress=False)
    again = load_file(str(tmp_path / "export2" / "jtp_fetch.safetensors"))
    assert fetch.keys() == again.keys() and all(torch.equal(fetch[k], again[k]) for k in fetch)


def test_mtp_heads_go_beside_the_llama_and_come_back(sp_model, tmp_path, parallel_tp1):
    """An MTP checkpoint exports the trunk with head 1 as the plain Llama (unchanged) and
    heads 2..n in their own file, which an import of the export loads again exactly."""
    hf_dir = tmp_path / "hf"
    make_llama(hf_dir, sp_model, tied=False)
    mtp = ["model.seq_len=64", "nextlat.objective=mtp", "nextlat.mtp_heads=3"]
    import_from_hf(hf_dir, tmp_path / "ckpt", mtp)  # heads 2, 3 freshly initialised
    export_to_hf(tmp_path / "ckpt", tmp_path / "export", progress=False)
    original, llama = _tensors(hf_dir), _tensors(tmp_path / "export")
    assert original.keys() == llama.keys()
    assert all(torch.equal(original[k], llama[k]) for k in original)
    heads = load_file(str(tmp_path / "export" / "mtp_heads.safetensors"))
    assert {k.split(".")[0] for k in heads} == {"head2", "head3"}
    assert heads["head2.self_attn.k_proj.weight"].shape == (32, 64)  # 2 kv groups × 16
    assert not torch.equal(heads["head2.mlp.up_proj.weight"], heads["head3.mlp.up_proj.weight"])
    assert json.loads((tmp_path / "export" / "mtp_heads.json").read_text())["heads"] == 3
    assert not (tmp_path / "export" / "nextlat_dynamics.safetensors").exists()

    # the recorded config (MTP); another seed, so fresh heads would differ
    import_from_hf(tmp_path / "export", tmp_path / "ckpt2", ["run.seed=7"])
    export_to_hf(tmp_path / "ckpt2", tmp_path / "export2", progress=False)
    again = load_file(str(tmp_path / "export2" / "mtp_heads.safetensors"))
    assert heads.keys() == again.keys() and all(torch.equal(heads[k], again[k]) for k in heads)
    # `generate` reads the heads from the checkpoint and from the export alike; they decode
    # what the training model's heads compute, and greedy MTP drafting is plain decoding.
    from nextlat_pt.convert.source import open_checkpoint
    from nextlat_pt.eval.models import NextLatModel
    from nextlat_pt.generate.policies import StaticDraft
    from nextlat_pt.generate.sampling import SamplingParams
    from nextlat_pt.generate.speculative import generate
    from nextlat_pt.generate.weights import load_weights, target_and_drafter

    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    trained = NextLatModel(open_checkpoint(tmp_path / "ckpt")).model.eval()
    with torch.no_grad():
        out = trained(ids)
        expected = torch.stack([trained.head_logits(k, out.trunk, out.rotary_pos_emb)
                                for k in (2, 3)], dim=2)[..., :VOCAB].transpose(0, 1)
    greedy = SamplingParams(greedy=True)
    for source in (tmp_path / "ckpt", tmp_path / "export"):
        weights = load_weights(source)
        assert len(weights.mtp_heads) == 2
        target, drafter = target_and_drafter(weights)
        target.reset(1, 32)
        heads, _ = target.extend(ids)
        torch.testing.assert_close(heads, expected, atol=1e-4, rtol=1e-4)
        plain, _ = target_and_drafter(weights, torch.float64, with_drafter=False)
        spec, drafter = target_and_drafter(weights, torch.float64)
        prompts = [ids[0, :5].tolist(), ids[0, 5:8].tolist()]
        assert generate(spec, prompts, 12, greedy, drafter=drafter,
                        policy=StaticDraft(4)).tokens == generate(plain, prompts, 12,
                                                                  greedy).tokens
