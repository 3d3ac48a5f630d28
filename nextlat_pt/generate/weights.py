"""The model `generate` decodes, as Hugging Face Llama tensors plus ψ or MTP's extra heads,
from either source:

- one of our checkpoints (a step, checkpoints or run directory): read in memory through the
  exporter's streaming reader (`convert.to_hf.hf_state_dict`), ψ and the heads from the same
  files;
- a Hugging Face export folder: its safetensors, config.json and, when present,
  `nextlat_dynamics.safetensors` (ψ) or `mtp_heads.safetensors` (heads 2..n).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.data.tokenizer import MODEL_FILE_NAME
from nextlat_pt.generate.decoder import DecoderTarget, LlamaDecoder, MTPDecoderTarget
from nextlat_pt.generate.drafter import Drafter, MTPDrafter, Psi
from nextlat_pt.model.shape import ModelShape


@dataclass
class ModelWeights:
    """Everything the decoder and the drafter are built from."""

    shape: ModelShape
    tensors: dict[str, Tensor]  # HF Llama names, vocabulary unpadded
    psi: dict[str, Tensor] | None  # norm/fc1/fc2/fc3 weights, None for a next-token model
    psi_norm_eps: float
    tokenizer_path: Path | None  # the sentencepiece model beside the weights, if found
    tokenizer_fingerprint: str | None  # what the model was trained with, if recorded
    description: str
    mtp_heads: list[dict[str, Tensor]] = field(default_factory=list)  # MTP heads 2..n

    @property
    def can_draft(self) -> bool:
        """ψ or MTP's extra heads are there to draft with."""
        return self.psi is not None or bool(self.mtp_heads)

    def decoder(self, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> LlamaDecoder:
        """The transformer as an inference decoder (with the MTP heads, if any)."""
        return LlamaDecoder(self.shape, self.tensors, dtype, self.mtp_heads).to(device)

    def drafter(self, decoder: LlamaDecoder) -> Drafter:
        """ψ with the decoder's input embedding and LM head (ConvertError without ψ)."""
        if self.psi is None:
            raise ConvertError(f"{self.description} has no ψ (latent dynamics): it is a "
                               f"next-token model, so it cannot draft; drop --draft-len / "
                               f"--adaptive")
        psi = Psi(self.psi, self.psi_norm_eps, decoder.dtype).to(decoder.embed.device)
        return Drafter(psi, decoder.embed, decoder.head)


def target_and_drafter(weights: ModelWeights, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu", with_drafter: bool = True
                       ) -> tuple[DecoderTarget, Drafter | None]:
    """Our decoder as a target model, and ψ's drafter when asked for; without ψ, MTP's
    heads 2..n draft (the target then hands their logits to the drafter)."""
    if with_drafter and weights.psi is None and weights.mtp_heads:
        decoder = weights.decoder(dtype, device)
        return MTPDecoderTarget(decoder), MTPDrafter(1 + len(weights.mtp_heads))
    weights = replace(weights, mtp_heads=[])  # no MTP drafting: the heads are not run
    decoder = weights.decoder(dtype, device)
    return DecoderTarget(decoder), weights.drafter(decoder) if with_drafter else None


def load_weights(path: str | Path) -> ModelWeights:
    """Our checkpoint or a Hugging Face export folder at `path` (ConvertError otherwise)."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    # A Hugging Face folder, as `eval.models.is_hf_dir` decides (not imported: it pulls in
    # megatron, which an export does not need).
    if (path / "config.json").is_file() and not (path / "trainer_state.json").is_file():
        return _from_hf(path)
    return _from_checkpoint(path)


def _from_checkpoint(path: Path) -> ModelWeights:
    from nextlat_pt.convert import llama_mapping as lm
    from nextlat_pt.convert.hf_config import shape_from_config
    from nextlat_pt.convert.megatron_reader import MegatronCheckpointReader
    from nextlat_pt.convert.mtp_file import heads_from_checkpoint
    from nextlat_pt.convert.source import open_checkpoint
    from nextlat_pt.convert.to_hf import hf_state_dict

    ckpt = open_checkpoint(path)
    reader = MegatronCheckpointReader(ckpt.path / "model")
    shape = shape_from_config(ckpt.config, ckpt.vocab_size)
    tensors = hf_state_dict(reader, shape, torch.float32)
    psi = None
    if reader.has(lm.PSI_KEYS["fc1.weight"]):
        psi = reader.read({name: (key, None) for name, key in lm.PSI_KEYS.items()})
        psi = {k: v.to(torch.float32) for k, v in psi.items()}
    recorded = ckpt.state["tokenizer"]
    heads = [{k: v.to(torch.float32) for k, v in head.items()}
             for head in heads_from_checkpoint(reader, shape)]
    return ModelWeights(shape=shape, tensors=tensors, psi=psi, mtp_heads=heads,
                        psi_norm_eps=ckpt.config.model.norm_eps,
                        tokenizer_path=ckpt.tokenizer_file(),
                        tokenizer_fingerprint=recorded.get("fingerprint"),
                        description=f"checkpoint {ckpt.path} (step {ckpt.state.get('step')})")


def _from_hf(hf_dir: Path) -> ModelWeights:
    from transformers import AutoConfig

    from nextlat_pt.convert.hf_config import shape_from_llama
    from nextlat_pt.convert.hf_weights import HFWeights
    from nextlat_pt.convert.mtp_file import heads_from_export
    from nextlat_pt.convert.psi_file import load_psi

    try:
        config = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    except Exception as err:  # transformers raises ValueError/OSError/KeyError variously
        raise ConvertError(f"{hf_dir}/config.json cannot be read ({err})") from err
    shape = shape_from_llama(config)
    weights = HFWeights(hf_dir)
    names = weights.names()
    tensors = {name: weights.get(name) for name in names
               if name.startswith("model.") or name == "lm_head.weight"}
    if not shape.tie_embeddings and "lm_head.weight" not in tensors:
        raise ConvertError(f"{hf_dir}: untied embeddings but no lm_head.weight")
    loaded = load_psi(hf_dir)
    psi, psi_config = (None, {}) if loaded is None else loaded
    if psi is not None:
        psi = {k: v.to(torch.float32) for k, v in psi.items()}
    tokenizer = hf_dir / MODEL_FILE_NAME
    heads = [{k: v.to(torch.float32) for k, v in head.items()}
             for head in heads_from_export(hf_dir)]
    return ModelWeights(
        shape=shape, tensors=tensors, psi=psi, mtp_heads=heads,
        psi_norm_eps=float(psi_config.get("norm_eps", shape.norm_eps)),
        tokenizer_path=tokenizer if tokenizer.is_file() else None,
        tokenizer_fingerprint=_export_fingerprint(hf_dir),
        description=f"Hugging Face folder {hf_dir}")


def _export_fingerprint(hf_dir: Path) -> str | None:
    import json

    from nextlat_pt.convert.to_hf import EXPORT_INFO

    info: dict[str, Any] = {}
    if (hf_dir / EXPORT_INFO).is_file():
        info = json.loads((hf_dir / EXPORT_INFO).read_text())
    return (info.get("tokenizer") or {}).get("fingerprint")
