"""The two kinds of model `eval` scores, behind one interface: next-token logits [B, T, V]
over the tokenizer's real vocabulary, the final post-norm hidden states [B, T, D] (the
diagnostics' input), and the tokenizer's fingerprint.

- a nextlat_pt checkpoint (any TP/PP layout): built at TP=1 in a world of one and loaded
  through the trainer's own `load_model_weights` (dist_checkpointing reshards it);
- a Hugging Face folder: `AutoModelForCausalLM` from local files only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
    objective: str  # "nextlat d=2", "ntp", or "unknown" (a foreign HF folder)
    vocab_size: int
    max_positions: int
    tokenizer_fingerprint: str | None

    def logits(self, input_ids: Tensor) -> Tensor:
        """[B, T] ids -> [B, T, vocab_size] float32 logits."""

    def logits_and_hidden(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """[B, T] ids -> (logits [B, T, vocab_size], final post-norm hidden [B, T, D]),
        float32, from one forward pass."""

    def hidden_states(self, input_ids: Tensor) -> Tensor:
        """[B, T] ids -> [B, T, D] float32 final post-norm hidden states (the LM head's
        input)."""


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
        self.config = ckpt.config
        self.objective = objective_label(ckpt.config.to_dict())
        self.vocab_size = ckpt.vocab_size
        self.max_positions = ckpt.config.max_position_embeddings
        self.tokenizer_fingerprint = ckpt.state["tokenizer"].get("fingerprint")

    @torch.no_grad()
    def logits(self, input_ids: Tensor) -> Tensor:
        out = self.model(input_ids).logits  # [T, B, V_padded]
        return out.transpose(0, 1)[..., : self.vocab_size].float()

    @torch.no_grad()
    def logits_and_hidden(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(input_ids)  # sequence-first; hidden is after the final norm
        logits = out.logits.transpose(0, 1)[..., : self.vocab_size].float()
        return logits, out.hidden.transpose(0, 1).float()

    def hidden_states(self, input_ids: Tensor) -> Tensor:
        return self.logits_and_hidden(input_ids)[1]


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
        self.tokenizer_fingerprint = hf_tokenizer_fingerprint(hf_dir)
        self.objective = objective_label(_export_training_config(hf_dir))

    @torch.no_grad()
    def logits(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits.float()

    @torch.no_grad()
    def logits_and_hidden(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        # transformers' last hidden_states entry is the final norm's output (the head's input).
        out = self.model(input_ids=input_ids, output_hidden_states=True)
        return out.logits.float(), out.hidden_states[-1].float()

    def hidden_states(self, input_ids: Tensor) -> Tensor:
        return self.logits_and_hidden(input_ids)[1]


def is_hf_dir(path: Path) -> bool:
    """A Hugging Face model folder (config.json, and not one of our checkpoints)."""
    return (path / "config.json").is_file() and not (path / "trainer_state.json").is_file()


def hf_tokenizer_fingerprint(hf_dir: Path) -> str | None:
    """sha256 of the folder's sentencepiece model (our tokenizers' fingerprint), if any."""
    sp_model = Path(hf_dir) / MODEL_FILE_NAME
    return hashlib.sha256(sp_model.read_bytes()).hexdigest() if sp_model.is_file() else None


def objective_label(config: dict | None) -> str:
    """The training objective of a config dict: "ntp", "nextlat d=H", "mtp n=N",
    "jtp d=H", or "unknown"."""
    nextlat = (config or {}).get("nextlat") or {}
    objective = nextlat.get("objective")
    if objective in ("nextlat", "jtp"):
        return f"{objective} d={nextlat.get('horizon')}"
    if objective == "mtp":
        return f"mtp n={nextlat.get('mtp_heads')}"
    return str(objective) if objective else "unknown"


def _export_training_config(hf_dir: Path) -> dict | None:
    """The training config our exporter recorded in the folder (None for other folders)."""
    from nextlat_pt.convert.to_hf import EXPORT_INFO

    try:
        return json.loads((Path(hf_dir) / EXPORT_INFO).read_text()).get("training_config")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
