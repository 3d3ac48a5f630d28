"""The NextLat GPT: megatron-core's GPTModel (Llama-style) plus ψ on the last pipeline stage.

The model returns what the loss needs and nothing else; it knows nothing of launching,
logging or I/O. Shapes are sequence-first, as megatron keeps them: [T, B, ...].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from nextlat_pt.model.attention import resolve_backend
from nextlat_pt.model.layer_spec import block_spec
from nextlat_pt.model.psi import LatentDynamics


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the network (a flat view of the run config)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    vocab_size: int  # the tokenizer's; padded below for TP
    max_position_embeddings: int
    tie_embeddings: bool = False
    rotary_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    attention_backend: str = "auto"
    make_vocab_size_divisible_by: int = 128
    psi_width: int = 0  # 0: no ψ (next-token objective)
    psi_zero_init: bool = False
    tp: int = 1
    pp: int = 1
    params_dtype: torch.dtype = torch.float32


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Round the vocabulary up to a multiple of divisible_by × TP, as megatron does."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def transformer_config(spec: ModelSpec) -> TransformerConfig:
    """megatron's TransformerConfig for a Llama-style block: RMSNorm, SwiGLU, no biases."""
    return TransformerConfig(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_heads,
        num_query_groups=spec.num_query_groups,
        ffn_hidden_size=spec.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=spec.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=spec.hidden_dropout,
        attention_dropout=spec.attention_dropout,
        init_method_std=spec.init_std,
        tensor_model_parallel_size=spec.tp,
        pipeline_model_parallel_size=spec.pp,
        pipeline_dtype=spec.params_dtype,
        params_dtype=spec.params_dtype,
        bf16=spec.params_dtype == torch.bfloat16,
        # Build the full weight on CPU from the seed, then take this rank's shard: the same
        # seed gives the same model for every TP/PP layout.
        use_cpu_initialization=True,
        perform_initialization=True,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
    )


@dataclass
class ModelOutput:
    """What the last stage hands the loss; on other stages only `hidden` is set."""

    hidden: Tensor  # h: [T, B, D] final post-norm hidden states (or the stage's output)
    logits: Tensor | None = None  # [T, B, V/tp], vocab-parallel
    input_embeddings: Tensor | None = None  # E(x_t): [T, B, D], only when ψ exists


class NextLatGPT(MegatronModule):
    """GPTModel + ψ. forward(input_ids [B, T]) -> ModelOutput."""

    def __init__(self, spec: ModelSpec, pre_process: bool = True, post_process: bool = True):
        self.spec = spec
        config = transformer_config(spec)
        super().__init__(config=config)
        self.pre_process = pre_process
        self.post_process = post_process
        self.model_type = ModelType.encoder_or_decoder  # read by megatron's schedules
        self.attention_backend = resolve_backend(spec.attention_backend, spec.params_dtype)
        self.vocab_size = spec.vocab_size
        self.padded_vocab_size = padded_vocab_size(
            spec.vocab_size, spec.make_vocab_size_divisible_by, spec.tp
        )
        self.gpt = GPTModel(
            config=config,
            transformer_layer_spec=block_spec(config, self.attention_backend),
            vocab_size=self.padded_vocab_size,
            max_sequence_length=spec.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=spec.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=int(spec.rotary_base),
            parallel_output=True,
        )
        self.psi = None
        if post_process and spec.psi_width > 0:
            if not pre_process:
                raise NotImplementedError("ψ on a pipeline stage without the input embedding")
            self.psi = LatentDynamics(config, spec.psi_width, zero_init_output=spec.psi_zero_init)

    def set_input_tensor(self, input_tensor: Tensor | list[Tensor]) -> None:
        """Pipeline parallelism: the activation received from the previous stage."""
        self.gpt.set_input_tensor(input_tensor)

    def head_weight(self) -> Tensor:
        """The (local, vocab-parallel) LM head weight: the output layer, or the tied embedding."""
        if self.spec.tie_embeddings:
            return self.gpt.shared_embedding_or_output_weight()
        return self.gpt.output_layer.weight

    def word_embeddings(self, input_ids: Tensor) -> Tensor:
        """E(x) for [B, T] token ids -> [T, B, D] (vocab-parallel lookup, no dropout)."""
        return self.gpt.embedding.word_embeddings(input_ids).transpose(0, 1)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None) -> ModelOutput:
        """Run the trunk (this stage's layers) and, on the last stage, the LM head."""
        if position_ids is None:
            seq_len = input_ids.shape[1]
            position_ids = torch.arange(seq_len, device=input_ids.device).unsqueeze(0)
        decoder_input, rotary_pos_emb, *_ = self.gpt._preprocess(
            input_ids=input_ids, position_ids=position_ids
        )
        hidden = self.gpt.decoder(
            hidden_states=decoder_input, attention_mask=None, rotary_pos_emb=rotary_pos_emb
        )
        if not self.post_process:
            return ModelOutput(hidden=hidden)
        output_weight = (
            self.gpt.shared_embedding_or_output_weight() if self.spec.tie_embeddings else None
        )
        logits, _ = self.gpt.output_layer(hidden, weight=output_weight)
        embeddings = self.word_embeddings(input_ids) if self.psi is not None else None
        return ModelOutput(hidden=hidden, logits=logits, input_embeddings=embeddings)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Local parameter counts: trunk (everything but ψ) and ψ."""
    psi = sum(p.numel() for n, p in model.named_parameters() if n.startswith("psi."))
    total = sum(p.numel() for p in model.parameters())
    return {"trunk": total - psi, "psi": psi, "total": total}
