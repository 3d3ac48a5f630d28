"""Our attention backend (PyTorch SDPA in megatron's core_attention slot) against megatron's
own DotProductAttention: same module weights, same inputs, outputs and gradients to 1e-5."""

from __future__ import annotations

import pytest
import torch

from nextlat_pt.model.attention import flash_attn_importable, resolve_backend
from nextlat_pt.model.gpt import ModelSpec, NextLatGPT


def _spec(backend: str, groups: int) -> ModelSpec:
    return ModelSpec(num_layers=2, hidden_size=64, num_heads=4, num_query_groups=groups,
                     ffn_hidden_size=128, vocab_size=256, max_position_embeddings=32,
                     attention_backend=backend)


@pytest.mark.parametrize("groups", [4, 2, 1], ids=["mha", "gqa2", "mqa"])
def test_sdpa_matches_megatron_dot_product_attention(parallel_tp1, groups):
    torch.manual_seed(0)
    ours = NextLatGPT(_spec("sdpa", groups))
    torch.manual_seed(0)
    reference = NextLatGPT(_spec("local", groups))
    reference.load_state_dict(ours.state_dict(), strict=False)
    assert type(ours.gpt.decoder.layers[0].self_attention.core_attention).__name__ == \
        "SDPAttention"
    assert type(reference.gpt.decoder.layers[0].self_attention.core_attention).__name__ == \
        "DotProductAttention"

    tokens = torch.randint(0, 256, (3, 32))
    out_ours = ours(tokens)
    out_ref = reference(tokens)
    torch.testing.assert_close(out_ours.logits, out_ref.logits, atol=1e-5, rtol=1e-5)

    out_ours.logits.float().pow(2).mean().backward()
    out_ref.logits.float().pow(2).mean().backward()
    ref_grads = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_auto_backend_falls_back_to_sdpa_without_cuda():
    if torch.cuda.is_available() and flash_attn_importable():
        pytest.skip("this machine has flash-attn; the fallback is what is tested here")
    assert resolve_backend("auto", torch.bfloat16) == "sdpa"
    assert resolve_backend("auto", torch.float32) == "sdpa"
    with pytest.raises(RuntimeError, match="flash-attn"):
        resolve_backend("flash", torch.bfloat16)
