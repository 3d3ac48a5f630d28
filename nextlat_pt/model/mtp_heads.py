"""The extra output heads of multi-token prediction (Gloeckle et al., 2024; docs/method.md §7).

With n heads the network is a shared trunk f_s and n heads f_h1 .. f_hn, each one transformer
layer, all decoded through the one final norm and LM head. As in the authors' released code,
head 1 is the decoder's last layer: the trunk is every layer but the last, z = f_s(x) is the
input of the last layer, and trunk + head 1 is exactly the plain next-token model (what the
Hugging Face export writes as a Llama). Heads 2 .. n are `MTPHeads.layers`: n - 1 layers
built from the decoder's own layer spec, each reading z, living on the last pipeline stage
(beside the final norm and the LM head) and sharded over TP like the trunk's layers.

Checkpoints: each head layer is saved under `mtp_heads.layers.<j>.` (j = k - 2) through the
layer's own sharded_state_dict, so it reshards over TP like a trunk layer; with no PP offset
(all heads are on the last stage in every layout).
"""

from __future__ import annotations

import torch
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
from torch import Tensor


class MTPHeads(MegatronModule):
    """Heads 2 .. n: `layers[k - 2]` maps the trunk output z [T, B, D] to head k's hidden
    states (before the shared final norm)."""

    def __init__(self, config: TransformerConfig, layer_spec: ModuleSpec, extra_heads: int,
                 vp_stage: int | None = None) -> None:
        super().__init__(config=config)
        # Head k sits beside head 1 (the trunk's last layer), so every head gets that layer's
        # number (megatron adds this stage's offset to the number it is given).
        number = config.num_layers - get_transformer_layer_offset(config, vp_stage)
        self.layers = torch.nn.ModuleList(
            build_module(layer_spec, config=config, layer_number=number, vp_stage=vp_stage)
            for _ in range(extra_heads)
        )

    def forward(self, k: int, trunk: Tensor, rotary_pos_emb: Tensor | None) -> Tensor:
        """Head k's hidden states f_hk(z) (k >= 2), before the final norm."""
        hidden, _ = self.layers[k - 2](hidden_states=trunk, attention_mask=None,
                                       rotary_pos_emb=rotary_pos_emb)
        return hidden

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: dict | None = None) -> dict:
        """Each layer through its own sharded_state_dict (TP partitions, SwiGLU halves)."""
        state = {}
        for j, layer in enumerate(self.layers):
            state.update(layer.sharded_state_dict(f"{prefix}layers.{j}.", sharded_offsets,
                                                  metadata))
        return state
