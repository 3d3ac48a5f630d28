"""Tiny random models for the generation tests: a transformers Llama, the same weights in our
inference decoder, and a random ψ."""

from __future__ import annotations

import torch

from nextlat_pt.convert.hf_config import shape_from_llama
from nextlat_pt.generate.decoder import DecoderTarget, LlamaDecoder
from nextlat_pt.generate.drafter import Drafter, Psi


def random_llama(vocab: int = 16, hidden: int = 32, layers: int = 2, heads: int = 4,
                 kv_heads: int = 2, tied: bool = False, seed: int = 0,
                 dtype: torch.dtype = torch.float32, max_positions: int = 64):
    """A random `LlamaForCausalLM` (GQA, RoPE base and norm eps off their defaults, norm
    weights away from 1) with logits spread enough that decoding is not trivial."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                         rms_norm_eps=1e-6, rope_theta=5000.0, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif "embed" in name or "lm_head" in name:
                param.normal_(0.0, 0.5)  # logits of order 1: several likely tokens
            else:
                param.normal_(0.0, 0.1)
    return model.to(dtype).eval()


def decoder_of(model, dtype: torch.dtype = torch.float32) -> LlamaDecoder:
    """Our decoder holding the transformers model's weights."""
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    return LlamaDecoder(shape_from_llama(model.config), tensors, dtype)


def random_psi(hidden: int, width: int = 32, std: float = 0.3, seed: int = 1,
               dtype: torch.dtype = torch.float32) -> Psi:
    """A random ψ: its drafts are sometimes right and often wrong."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "norm.weight": 1.0 + 0.1 * torch.randn(2 * hidden, generator=g),
        "fc1.weight": std * torch.randn(width, 2 * hidden, generator=g),
        "fc2.weight": std * torch.randn(width, width, generator=g),
        "fc3.weight": std * torch.randn(hidden, width, generator=g),
    }
    return Psi(tensors, 1e-5, dtype)


def target_and_drafter(model, psi: Psi, dtype: torch.dtype = torch.float64
                       ) -> tuple[DecoderTarget, Drafter]:
    """Our decoder (default float64: no near-tie argmax flips between pass shapes) and ψ's
    drafter over its embedding and head."""
    decoder = decoder_of(model, dtype)
    return DecoderTarget(decoder), Drafter(psi.to(dtype), decoder.embed, decoder.head)
