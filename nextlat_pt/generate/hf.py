"""Self-speculative decoding on a model loaded with transformers, plus the exported ψ.

    from transformers import AutoModelForCausalLM
    from nextlat_pt.generate.hf import load_psi_module, speculative_generate_hf

    model = AutoModelForCausalLM.from_pretrained(EXPORT_DIR, dtype=torch.float32)
    psi = load_psi_module(EXPORT_DIR)
    result = speculative_generate_hf(model, psi, input_ids, max_new_tokens=64, draft_len=4)
    result.tokens[0], result.stats.accepted_per_cycle

The loop is `speculative.generate`, the one our own decoder runs; only the target differs:
`LlamaForCausalLM` with a `DynamicCache`, cropped after rejected drafts. The true hidden state
ψ starts from is the base model's `last_hidden_state`, which is post-norm (the LM head's
input), exactly what ψ was trained on.

One sequence at a time: a `DynamicCache` has one length for the whole batch, so rows that
accept different numbers of drafts cannot share it (our decoder's cache can; use
`nextlat-pt generate` for batches).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.generate.drafter import Drafter, Psi
from nextlat_pt.generate.policies import DraftPolicy, StaticDraft
from nextlat_pt.generate.sampling import SamplingParams
from nextlat_pt.generate.speculative import GenerationResult, generate


class HFTarget:
    """A transformers `LlamaForCausalLM` + `DynamicCache` as the loop's `TargetModel`."""

    def __init__(self, model) -> None:
        """`model`: a loaded `LlamaForCausalLM` (any dtype; put in eval mode here)."""
        self.model = model.eval()
        self.cache = None

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head."""
        return self.model.lm_head.weight.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.model.lm_head.weight.device

    def reset(self, batch: int, capacity: int) -> None:
        """A fresh cache; one row only (see the module docstring)."""
        from transformers import DynamicCache

        if batch != 1:
            raise ValueError(f"the transformers target decodes one sequence at a time, got "
                             f"a batch of {batch}")
        self.cache = DynamicCache(config=self.model.config)

    @property
    def lengths(self) -> Tensor:
        """Cached positions (one row)."""
        return torch.tensor([self.cache.get_seq_length()], device=self.device)

    @torch.no_grad()
    def extend(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Run `tokens` [1, n] after the cached prefix: (post-norm hidden, logits)."""
        out = self.model.model(input_ids=tokens, cache=self.cache, use_cache=True)
        hidden = out.last_hidden_state
        return hidden, self.model.lm_head(hidden)

    def truncate(self, lengths: Tensor) -> None:
        """Crop the cache to lengths[0] positions."""
        drop = self.cache.get_seq_length() - int(lengths[0])
        if drop < 0:
            raise ValueError(f"truncate to {int(lengths[0])}: the cache holds only "
                             f"{self.cache.get_seq_length()} positions")
        if drop:
            # transformers 5: crop(-n) removes the last n positions.
            self.cache.crop(-drop)


def load_psi_module(hf_dir: str | Path, dtype: torch.dtype = torch.float32) -> Psi:
    """ψ from an export's `nextlat_dynamics.safetensors` (ConvertError when there is none)."""
    from nextlat_pt.convert.psi_file import PSI_WEIGHTS, load_psi

    hf_dir = Path(hf_dir)
    loaded = load_psi(hf_dir)
    if loaded is None:
        raise ConvertError(f"{hf_dir} has no {PSI_WEIGHTS}: not a NextLat export, nothing "
                           f"to draft with")
    tensors, config = loaded
    return Psi(tensors, float(config.get("norm_eps", 1e-5)), dtype)


def hf_drafter(model, psi: Psi) -> Drafter:
    """ψ over the transformers model's INPUT embedding and its LM head."""
    embedding = model.get_input_embeddings().weight
    return Drafter(psi.to(device=embedding.device, dtype=embedding.dtype), embedding,
                   model.lm_head.weight)


def speculative_generate_hf(model, psi: Psi, input_ids: Tensor | list[int],
                            max_new_tokens: int, *, draft_len: int = 4,
                            policy: DraftPolicy | None = None,
                            sampling: SamplingParams | None = None,
                            generator: torch.Generator | None = None,
                            eos_id: int | None = None) -> GenerationResult:
    """Continue one prompt (ids [1, T] or a list) with ψ drafting and the model verifying.

    `policy` overrides the static `draft_len`; `sampling` defaults to greedy decoding.
    """
    if isinstance(input_ids, Tensor):
        if input_ids.dim() == 2 and input_ids.shape[0] != 1:
            raise ValueError("one sequence at a time: input_ids must be [1, T] or [T]")
        input_ids = input_ids.reshape(-1).tolist()
    return generate(HFTarget(model), [list(input_ids)], max_new_tokens,
                    sampling or SamplingParams(greedy=True), drafter=hf_drafter(model, psi),
                    policy=policy or StaticDraft(draft_len), generator=generator,
                    eos_id=eos_id)
