"""The model's shape: the numbers that fix the network's parameters, in one place.

`ModelShape` is the one definition of these fields. The run config (`config.ModelConfig`)
holds them as the user writes them (0 = the rule below); `Config.model_shape` resolves them
once; `ModelSpec` (model/gpt.py) extends the shape with how to build and run it (init,
dropout, parallel layout, dtype); the Hugging Face export (convert/hf_config.py) maps the
same shape to and from `LlamaConfig`. The two width rules live here and nowhere else.

Pure Python on purpose: the config and `--help` paths import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


def llama_ffn_width(hidden_size: int) -> int:
    """Llama's SwiGLU width rule: 128 · round(8D/3 / 128)."""
    return 128 * round(8 * hidden_size / 3 / 128)


def psi_width(hidden_size: int, proj_factor: float) -> int:
    """ψ's width rule (the official code's): 128 · round(proj_factor · 2D / 128); 0 for a
    tiny D, where ψ must be given a width directly."""
    return 128 * round(proj_factor * 2 * hidden_size / 128)


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder's shape (RMSNorm, SwiGLU, RoPE, no biases), plus ψ's width."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_query_groups: int  # key/value heads (grouped-query attention when < num_heads)
    ffn_hidden_size: int
    vocab_size: int  # the tokenizer's; the embedding is padded for TP when built
    max_position_embeddings: int
    tie_embeddings: bool = False
    rotary_base: float = 10000.0
    norm_eps: float = 1e-5
    psi_width: int = 0  # 0: no ψ (the next-token objective)
    mtp_heads: int = 1  # n output heads (multi-token prediction); 1: only the usual one
    jtp_steps: int = 0  # d of joint multi-token prediction (its Fetch module); 0: no Fetch

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads
