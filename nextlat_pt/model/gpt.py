"""The NextLat GPT: megatron-core's GPTModel (Llama-style) plus ψ on the last pipeline stage.

The model returns what the loss needs and nothing else; it knows nothing of launching,
logging or I/O. Shapes are sequence-first, as megatron keeps them: [T, B, ...].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import VocabParallelEmbedding
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from nextlat_pt.model.attention import resolve_backend
from nextlat_pt.model.init import init_weights
from nextlat_pt.model.jtp_fetch import Fetch
from nextlat_pt.model.kernels import install_rope_kernel
from nextlat_pt.model.layer_spec import block_spec, layer_spec
from nextlat_pt.model.mtp_heads import MTPHeads
from nextlat_pt.model.psi import LatentDynamics
from nextlat_pt.model.shape import ModelShape


@dataclass(frozen=True)
class ModelSpec(ModelShape):
    """Everything needed to build the network: its shape (`ModelShape`, the one definition
    of those fields) and how to build and run it."""

    init_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    attention_backend: str = "auto"
    make_vocab_size_divisible_by: int = 128
    psi_zero_init: bool = False
    tp: int = 1
    pp: int = 1
    vpp: int | None = None
    sequence_parallel: bool = False
    recompute: bool = False  # full activation recomputation of every layer
    params_dtype: torch.dtype = torch.float32
    init_seed: int = 1234


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Round the vocabulary up to a multiple of divisible_by × TP, as megatron does."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def _skip_init(tensor: Tensor) -> Tensor:
    return tensor


def transformer_config(spec: ModelSpec) -> TransformerConfig:
    """megatron's TransformerConfig for a Llama-style block: RMSNorm, SwiGLU, no biases.

    RoPE goes through megatron's fused-RoPE slot: TransformerEngine's kernel when TE is
    installed, else ours (`kernels.py`). Outside TE's layer spec the MLP's activation slot
    holds our SwiGLU.
    """
    install_rope_kernel()
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
        virtual_pipeline_model_parallel_size=spec.vpp,
        sequence_parallel=spec.sequence_parallel,
        pipeline_dtype=spec.params_dtype,
        recompute_granularity="full" if spec.recompute else None,
        recompute_method="uniform" if spec.recompute else None,
        recompute_num_layers=1 if spec.recompute else None,
        params_dtype=spec.params_dtype,
        bf16=spec.params_dtype == torch.bfloat16,
        # Weights are drawn by `init_weights` (per parameter, layout-independent). megatron
        # still allocates and shards them (and tags the TP attributes) but draws nothing.
        use_cpu_initialization=True,
        perform_initialization=True,
        init_method=_skip_init,
        output_layer_init_method=_skip_init,
        embedding_init_method=_skip_init,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=True,
        # The MLP then calls its activation slot (layer_spec's SwiGLU) on the fc1 output.
        use_te_activation_func=spec.attention_backend != "te",
        persist_layer_norm=False,
    )


class ModelOutput(NamedTuple):
    """What the last stage hands the loss; on other stages only `hidden` is set.

    A tuple, so that wrappers that walk outputs (DeepSpeed's backward hooks) see the tensors.
    """

    hidden: Tensor  # h: [T, B, D] final post-norm hidden states (or the stage's output)
    logits: Tensor | None = None  # [T, B, V/tp], vocab-parallel
    input_embeddings: Tensor | None = None  # E(x_t): [T, B, D], only with ψ or JTP's Fetch
    trunk: Tensor | None = None  # z: the last layer's input [T, B, D], only with MTP heads
    rotary_pos_emb: Tensor | None = None  # the RoPE table the MTP heads' layers read


def embedding_lookup(weight: Tensor, input_ids: Tensor) -> Tensor:
    """E(x) from a vocab-parallel table: [B, T] ids -> [T, B, D], summed over TP ranks.

    Works on the full sequence whatever the sequence-parallel setting (ψ needs all of it).
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    ids = input_ids.t()
    if tp == 1:
        return F.embedding(ids, weight)
    rows = weight.shape[0]
    start = parallel_state.get_tensor_model_parallel_rank() * rows
    outside = (ids < start) | (ids >= start + rows)
    local = F.embedding((ids - start).masked_fill(outside, 0), weight)
    local = local.masked_fill(outside.unsqueeze(-1), 0.0)
    return tensor_parallel.reduce_from_tensor_model_parallel_region(local)


class NextLatGPT(MegatronModule):
    """GPTModel + ψ. forward(input_ids [B, T]) -> ModelOutput."""

    def __init__(self, spec: ModelSpec, pre_process: bool = True, post_process: bool = True,
                 vp_stage: int | None = None):
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
            transformer_layer_spec=block_spec(config, self.attention_backend, vp_stage=vp_stage),
            vocab_size=self.padded_vocab_size,
            max_sequence_length=spec.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=spec.tie_embeddings,
            position_embedding_type="rope",
            vp_stage=vp_stage,
            rotary_base=int(spec.rotary_base),
            parallel_output=True,
        )
        self.psi = None
        self.psi_embedding = None
        # Tied weights on a last stage without the embedding: the LM head is megatron's copy
        # of the input embedding (kept identical through the embedding group).
        self.tied_head_copy = spec.tie_embeddings and post_process and not pre_process
        self.jtp_fetch = None
        if post_process and spec.psi_width > 0:
            self.psi = LatentDynamics(config, spec.psi_width)
        if post_process and spec.jtp_steps > 0:
            self.jtp_fetch = Fetch(config, spec.jtp_steps)
        if post_process and self.reads_input_embeddings:
            if not pre_process and not spec.tie_embeddings:
                # ψ (or Fetch) reads E(x) on the last stage: a replica of the first stage's
                # input embedding, initialised identically and kept identical by all-reducing
                # its gradient with the original's over megatron's embedding group.
                self.psi_embedding = VocabParallelEmbedding(
                    self.padded_vocab_size, spec.hidden_size, init_method=config.init_method,
                    config=config, reduce_scatter_embeddings=False,
                )
        self.mtp_heads = None
        self._trunk: list[Tensor] = []  # z, caught on its way into the last layer
        if post_process and spec.mtp_heads > 1:
            self.mtp_heads = MTPHeads(config, layer_spec(config, self.attention_backend),
                                      spec.mtp_heads - 1, vp_stage=vp_stage)
            self.gpt.decoder.layers[-1].register_forward_pre_hook(self._catch_trunk,
                                                                  with_kwargs=True)
        init_weights(self, spec.init_seed, spec.init_std, spec.num_layers)
        for param in self.embedding_group_params():
            if not pre_process:
                # A copy of the first stage's embedding: DeepSpeed must not count it twice in
                # the gradient norm.
                param.ds_pipe_replicated = True
        if self.psi is not None and spec.psi_zero_init:
            torch.nn.init.zeros_(self.psi.fc3.weight)  # ψ starts as the identity map

    @property
    def reads_input_embeddings(self) -> bool:
        """The last stage's loss reads E(x): ψ's and Fetch's inputs."""
        return self.spec.psi_width > 0 or self.spec.jtp_steps > 0

    def fetched_logits(self, state: Tensor) -> Tensor:
        """JTP: one fetched state [T, B, D] (already normed by Fetch) through the shared LM
        head: vocab-parallel logits [T, B, V/tp]. The input's gradient is summed over TP."""
        return F.linear(tensor_parallel.copy_to_tensor_model_parallel_region(state),
                        self.head_weight())

    def _catch_trunk(self, layer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the last decoder layer (head 1): keep its input z for the
        other heads. Only inside `forward` (not when a backward pass recomputes the layer);
        the tensor still carries its graph under full recompute, whose checkpoints run the
        layers without grad but on their original inputs."""
        if self._trunk and self._trunk[0] is None:
            self._trunk[0] = kwargs.get("hidden_states", args[0] if args else None)

    def head_logits(self, k: int, trunk: Tensor, rotary_pos_emb: Tensor | None) -> Tensor:
        """MTP head k >= 2 on the trunk output z: W · Norm(f_hk(z)), vocab-parallel
        [T, B, V/tp] (the shared final norm and LM head, as head 1 uses them)."""
        hidden = self.mtp_heads(k, trunk, rotary_pos_emb)
        hidden = self.gpt.decoder.final_layernorm(hidden)
        output_weight = (
            self.gpt.shared_embedding_or_output_weight() if self.spec.tie_embeddings else None
        )
        logits, _ = self.gpt.output_layer(hidden, weight=output_weight)
        return logits

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: dict | None = None) -> dict:
        """megatron's reshardable state dict; ψ's embedding replica is saved as a replica of
        the first stage's word embedding (same key), so any PP layout can load it."""
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        replica_key = f"{prefix}psi_embedding.weight"
        if replica_key in state:
            tensor = state[replica_key]
            state[replica_key] = dataclasses.replace(
                tensor,
                key=f"{prefix}gpt.embedding.word_embeddings.weight",
                replica_id=(1, 0, parallel_state.get_data_parallel_rank()),
            )
        return state

    def set_input_tensor(self, input_tensor: Tensor | list[Tensor]) -> None:
        """Pipeline parallelism: the activation received from the previous stage."""
        self.gpt.set_input_tensor(input_tensor)

    def head_weight(self) -> Tensor:
        """The (local, vocab-parallel) LM head weight: the output layer, or the tied embedding."""
        if self.spec.tie_embeddings:
            return self.gpt.shared_embedding_or_output_weight()
        return self.gpt.output_layer.weight

    def psi_embedding_table(self) -> Tensor:
        """The (local, vocab-parallel) input-embedding table ψ reads on this stage."""
        if self.pre_process:
            return self.gpt.embedding.word_embeddings.weight
        if self.spec.tie_embeddings:
            return self.gpt.output_layer.weight
        return self.psi_embedding.weight

    def embedding_group_params(self) -> list[Tensor]:
        """Parameters whose gradients are summed over the embedding group (first + last stage)
        when PP > 1: the input embedding and its last-stage copy (tied head or ψ's replica)."""
        needs_copy = self.spec.tie_embeddings or self.reads_input_embeddings
        if self.spec.pp == 1 or not needs_copy:
            return []
        params = []
        if self.pre_process:
            params.append(self.gpt.embedding.word_embeddings.weight)
        if self.post_process and not self.pre_process:
            params.append(self.psi_embedding_table())
        return params

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None) -> ModelOutput:
        """Run the trunk (this stage's layers) and, on the last stage, the LM head."""
        if position_ids is None:
            seq_len = input_ids.shape[1]
            position_ids = torch.arange(seq_len, device=input_ids.device).unsqueeze(0)
        decoder_input, rotary_pos_emb, *_ = self.gpt._preprocess(
            input_ids=input_ids, position_ids=position_ids
        )
        if self.mtp_heads is not None:
            self._trunk = [None]
        hidden = self.gpt.decoder(
            hidden_states=decoder_input, attention_mask=None, rotary_pos_emb=rotary_pos_emb
        )
        trunk, self._trunk = (self._trunk or [None])[0], []
        if not self.post_process:
            return ModelOutput(hidden=hidden)
        output_weight = (
            self.gpt.shared_embedding_or_output_weight() if self.spec.tie_embeddings else None
        )
        logits, _ = self.gpt.output_layer(hidden, weight=output_weight)
        embeddings = None
        if self.psi is not None or self.jtp_fetch is not None:
            embeddings = embedding_lookup(self.psi_embedding_table(), input_ids)
            if self.config.sequence_parallel:
                # ψ rolls forward along the whole sequence (Fetch reads the next tokens);
                # every TP rank computes the same loss from it, so the backward of the gather
                # keeps each rank's own slice.
                hidden = tensor_parallel.gather_from_sequence_parallel_region(
                    hidden, tensor_parallel_output_grad=False
                )
        return ModelOutput(hidden=hidden, logits=logits, input_embeddings=embeddings,
                           trunk=trunk, rotary_pos_emb=rotary_pos_emb if trunk is not None
                           else None)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Local parameter counts: trunk (everything but ψ, the extra MTP heads and JTP's
    Fetch), ψ, the extra MTP heads, and Fetch."""
    def count(part: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if part in n.split("."))

    psi, heads, fetch = count("psi"), count("mtp_heads"), count("jtp_fetch")
    total = sum(p.numel() for p in model.parameters())
    return {"trunk": total - psi - heads - fetch, "psi": psi, "mtp_heads": heads,
            "jtp_fetch": fetch, "total": total}
