"""Self-speculative decoding with MTP's heads (docs/method.md §7): heads 2..n of the
decoder propose the next n − 1 tokens, the trunk verifies; greedy output is plain greedy
decoding's, token for token."""

from __future__ import annotations

import pytest
import torch
from generate_helpers import decoder_of, random_llama

from nextlat_pt.convert.hf_config import shape_from_llama
from nextlat_pt.convert.llama_mapping import hf_layer_names
from nextlat_pt.generate.decoder import DecoderTarget, LlamaDecoder, MTPDecoderTarget
from nextlat_pt.generate.drafter import MTPDrafter
from nextlat_pt.generate.policies import StaticDraft
from nextlat_pt.generate.sampling import SamplingParams
from nextlat_pt.generate.speculative import generate

PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7, 9]]


def _with_heads(model, heads: list[dict[str, torch.Tensor]]) -> LlamaDecoder:
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    return LlamaDecoder(shape_from_llama(model.config), tensors, torch.float64, heads)


def _layer(model, index: int, scale: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Decoder layer `index`'s tensors keyed as hf_layer_names' keys, perturbed by `scale`."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    return {key: state[name].detach() * (1 + scale * torch.randn(state[name].shape,
                                                                 generator=g, dtype=torch.float64))
            for key, name in hf_layer_names(index).items()}


@pytest.fixture(scope="module")
def model():
    return random_llama(vocab=16, hidden=32, dtype=torch.float64)


def test_a_head_with_the_last_layers_weights_decodes_the_next_token_logits(model):
    """Head k reads the last layer's input through the shared final norm and LM head."""
    decoder = _with_heads(model, [_layer(model, 1, scale=0.0), _layer(model, 1, scale=0.3)])
    tokens = torch.tensor(PROMPTS[2]).unsqueeze(0)
    hidden, logits, heads = decoder.forward_with_heads(tokens, decoder.new_cache(1, 16))
    assert heads.shape == (1, len(PROMPTS[2]), 2, 16)
    torch.testing.assert_close(heads[:, :, 0], logits)
    assert not torch.allclose(heads[:, :, 1], logits)
    plain_hidden, plain_logits = decoder_of(model, torch.float64).full_forward(tokens)
    torch.testing.assert_close(logits, plain_logits)


@pytest.mark.parametrize("heads", [2, 4])
def test_greedy_mtp_drafting_equals_plain_greedy(model, heads):
    layers = [_layer(model, 1, scale=0.2, seed=k) for k in range(heads - 1)]
    target = MTPDecoderTarget(_with_heads(model, layers))
    plain = generate(DecoderTarget(decoder_of(model, torch.float64)), PROMPTS, 30,
                     SamplingParams(greedy=True))
    spec = generate(target, PROMPTS, 30, SamplingParams(greedy=True),
                    drafter=MTPDrafter(heads), policy=StaticDraft(8))
    assert spec.tokens == plain.tokens
    s = spec.stats
    assert s.drafted <= (heads - 1) * s.cycles  # never more than the heads propose
    assert 0 < s.accepted < s.drafted  # both paths of the loop ran
