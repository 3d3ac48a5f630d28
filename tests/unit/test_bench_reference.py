"""The benchmark's plain PyTorch reference (bench/reference_step.py) computes our function.

The ratio "our step / HF Llama + AdamW" is only honest if both sides train the same model:
the HF `LlamaForCausalLM` built from our initial weights must give the same loss (to 1e-5)
and the same gradients, with grouped-query attention, a padded vocabulary and both tied and
untied embeddings (the layouts the weight mapping has to get right).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from reference_step import build_hf_model, hf_state_dict, reference_loss  # noqa: E402

from nextlat_pt.model.gpt import ModelSpec, NextLatGPT  # noqa: E402
from nextlat_pt.train.step import MicroBatch  # noqa: E402
from nextlat_pt.train.train_module import NextLatTrainModule  # noqa: E402


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_reference_matches_our_loss_and_gradients(parallel_tp1, tied):
    torch.manual_seed(0)
    # 300 tokens padded to 384: the reference must compute the padded logits too.
    spec = ModelSpec(num_layers=2, hidden_size=64, num_heads=4, num_query_groups=2,
                     ffn_hidden_size=96, vocab_size=300, max_position_embeddings=32,
                     tie_embeddings=tied, rotary_base=5000.0, norm_eps=1e-6, init_seed=7)
    model = NextLatGPT(spec)
    with torch.no_grad():  # norms away from 1 so a swapped or missing norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    ours = NextLatTrainModule(model, None).train()
    hf = build_hf_model(model)
    assert hf.config.vocab_size == 384 and hf.config.tie_word_embeddings == tied

    # PAD (id 0) included: HF's padding_idx would freeze that embedding row, ours does not.
    tokens = torch.randint(0, 300, (3, 33), generator=torch.Generator().manual_seed(1))
    tokens[0, :4] = 0
    batch = MicroBatch.from_sample({"tokens": tokens, "doc_ids": torch.zeros_like(tokens)},
                                   torch.device("cpu"))
    our_loss, _ = ours(batch.input_ids, batch.labels, batch.loss_mask, batch.doc_ids)
    ref_loss = reference_loss(hf, batch)
    assert abs(our_loss.item() - ref_loss.item()) <= 1e-5

    our_loss.backward()
    ref_loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    ours_as_hf = hf_state_dict(model, grads)
    ref_grads = {name: p.grad for name, p in hf.named_parameters()}
    assert set(ours_as_hf) == set(ref_grads)  # tied: one shared tensor on both sides
    for name, grad in ref_grads.items():
        torch.testing.assert_close(ours_as_hf[name], grad, rtol=1e-4, atol=1e-6, msg=name)
