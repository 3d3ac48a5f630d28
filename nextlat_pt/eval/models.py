"""The two kinds of model `eval` scores, behind one interface: next-token logits [B, T, V]
over the tokenizer's real vocabulary, and the tokenizer's fingerprint.

- a nextlat_pt checkpoint (any TP/PP layout): built at TP=1 in a world of one and loaded
  through the trainer's own `load_model_weights` (dist_checkpointing reshards it);
- a Hugging Face folder: `AutoModelForCausalLM` from local files only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.convert.source import NextLatCheckpoint
from nextlat_pt.convert.world import single_process_world
from nextlat_pt.data.tokenizer import MODEL_FILE_NAME


class ScoredModel(Protocol):
    """What the evaluator needs from a model."""

    description: str
    vocab_size: int
    max_positions: int
    tokenizer_fingerprint: str | None

    def logits(self, input_ids: Tensor) -> Tensor:
        """[B, T] ids -> [B, T, vocab_size] float32 logits."""


class NextLatModel:
    """A checkpoint as our own model (megatron-core GPT), at TP=1 on this process."""

    def __init__(self, ckpt: NextLatCheckpoint) -> None:
        from nextlat_pt.convert.llama_mapping import EMBEDDING
        from nextlat_pt.convert.megatron_reader import MegatronCheckpointReader
        from nextlat_pt.model.gpt import NextLatGPT
        from nextlat_pt.train.build import model_spec
        from nextlat_pt.train.checkpoint import load_model_weights

        # The padded vocabulary as saved (it depends on the TP it was saved with).
        rows = MegatronCheckpointReader(ckpt.path / "model").info(EMBEDDING).shape[0]
        spec = dataclasses.replace(
            model_spec(ckpt.config, ckpt.vocab_size), tp=1, pp=1, vpp=None,
            sequence_parallel=False, recompute=False, params_dtype=torch.float32,
            attention_backend="sdpa", make_vocab_size_divisible_by=rows)
        with single_process_world(ckpt.config.run.seed):
            self.model = NextLatGPT(spec)
            load_model_weights([self.model], ckpt.path)
        self.model.eval()
        self.description = f"checkpoint {ckpt.path} (step {ckpt.state.get('step')})"
        self.vocab_size = ckpt.vocab_size
        self.max_positions = ckpt.config.max_position_embeddings
        self.tokenizer_fingerprint = ckpt.state["tokenizer"].get("fingerprint")

    @torch.no_grad()
    def logits(self, input_ids: Tensor) -> Tensor:
        out = self.model(input_ids).logits  # [T, B, V_padded]
        return out.transpose(0, 1)[..., : self.vocab_size].float()


class HFModel:
    """A Hugging Face causal LM folder, in float32."""

    def __init__(self, hf_dir: Path) -> None:
        from transformers import AutoModelForCausalLM

        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                str(hf_dir), dtype=torch.float32, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ConvertError(f"{hf_dir}: transformers cannot load the model ({err})") from err
        self.model.eval()
        self.description = f"Hugging Face model {hf_dir}"
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0)
                                 or 1 << 30)
        sp_model = hf_dir / MODEL_FILE_NAME
        self.tokenizer_fingerprint = (hashlib.sha256(sp_model.read_bytes()).hexdigest()
                                      if sp_model.is_file() else None)

    @torch.no_grad()
    def logits(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits.float()


def is_hf_dir(path: Path) -> bool:
    """A Hugging Face model folder (config.json, and not one of our checkpoints)."""
    return (path / "config.json").is_file() and not (path / "trainer_state.json").is_file()
