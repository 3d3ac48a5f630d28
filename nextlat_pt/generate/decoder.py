"""An inference-only Llama decoder in plain PyTorch, with a preallocated, ragged KV cache.

It computes what our megatron `NextLatGPT` computes (RMSNorm, rotate-half RoPE with an
integer base, grouped-query attention, SwiGLU, tied or untied head), from Hugging Face Llama
tensors (`weights.py` produces them from our checkpoints or from an export). megatron's
model has no KV cache and is built for training; decoding token by token needs one.

The cache keeps a length per batch row, so rows may hold different numbers of tokens: new
tokens of row b are written at positions lengths[b]…, attend to that row's first
lengths[b] cached positions plus themselves (causally), and `truncate` rolls a row back
after rejected drafts. Stale entries beyond a row's length are never attended to and are
overwritten by the next write.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextlat_pt.convert import llama_mapping as lm
from nextlat_pt.model.shape import ModelShape


class KVCache:
    """Keys and values of every layer: [layers, B, capacity, kv_heads, head_dim], and the
    number of valid positions of each row."""

    def __init__(self, shape: ModelShape, batch: int, capacity: int, dtype: torch.dtype,
                 device: torch.device | str, layers: int | None = None) -> None:
        """Allocate for `batch` rows of up to `capacity` positions each (`layers`: the
        shape's, or more for MTP's extra heads)."""
        size = (layers or shape.num_layers, batch, capacity, shape.num_query_groups, shape.head_dim)
        self.keys = torch.zeros(size, dtype=dtype, device=device)
        self.values = torch.zeros(size, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.capacity = capacity

    @property
    def batch(self) -> int:
        """Number of rows."""
        return self.keys.shape[1]

    def truncate(self, lengths: Tensor) -> None:
        """Keep the first lengths[b] positions of row b (never more than it holds)."""
        lengths = lengths.to(self.lengths)
        if bool((lengths > self.lengths).any()) or bool((lengths < 0).any()):
            raise ValueError(f"truncate to {lengths.tolist()}: rows hold only "
                             f"{self.lengths.tolist()} positions")
        self.lengths = lengths.clone()


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Statistics in (at least) fp32, then scaled by the weight, as our RMSNorm and HF's do.
    stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x32 = x.to(stats_dtype)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class LlamaDecoder(nn.Module):
    """The transformer as a decoder over a `KVCache`. forward(tokens [B, n], cache) ->
    (post-norm hidden [B, n, D], logits [B, n, V])."""

    def __init__(self, shape: ModelShape, tensors: dict[str, Tensor],
                 dtype: torch.dtype = torch.float32,
                 mtp_heads: list[dict[str, Tensor]] | None = None) -> None:
        """Build from Hugging Face Llama tensor names (vocabulary unpadded); `mtp_heads`:
        MTP's heads 2..n, one layer each, keyed as `llama_mapping.hf_layer_names`' keys."""
        super().__init__()
        self.shape = shape
        self.dtype = dtype

        def take(name: str) -> nn.Parameter:
            if name not in tensors:
                raise KeyError(f"the weights have no tensor {name!r}")
            return nn.Parameter(tensors[name].to(dtype), requires_grad=False)

        self.embed = take("model.embed_tokens.weight")
        self.final_norm = take("model.norm.weight")
        self.head = self.embed if shape.tie_embeddings else take("lm_head.weight")
        self.layers = nn.ModuleList()
        for i in range(shape.num_layers):
            names = lm.hf_layer_names(i)
            layer = nn.Module()
            for key, name in names.items():
                setattr(layer, key, take(name))
            self.layers.append(layer)
        self.mtp_heads = nn.ModuleList()
        for head in mtp_heads or []:
            layer = nn.Module()
            for key in lm.hf_layer_names(0):
                setattr(layer, key, nn.Parameter(head[key].to(dtype), requires_grad=False))
            self.mtp_heads.append(layer)
        head_dim = shape.head_dim
        # RoPE frequencies as megatron and HF compute them (fp32; the base is an integer).
        inv_freq = 1.0 / (shape.rotary_base ** (
            torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head (the tokenizer's vocabulary)."""
        return self.head.shape[0]

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty cache for `batch` rows of up to `capacity` positions."""
        return KVCache(self.shape, batch, capacity, self.dtype, self.embed.device,
                       layers=self.shape.num_layers + len(self.mtp_heads))

    def _rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin: [B, 1, n, head_dim] for integer positions [B, n]."""
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def _attention(self, layer: nn.Module, index: int, x: Tensor, positions: Tensor,
                   cos: Tensor, sin: Tensor, cache: KVCache) -> Tensor:
        s = self.shape
        b, n, _ = x.shape
        q = F.linear(x, layer.q).view(b, n, s.num_heads, s.head_dim).transpose(1, 2)
        k = F.linear(x, layer.k).view(b, n, s.num_query_groups, s.head_dim).transpose(1, 2)
        v = F.linear(x, layer.v).view(b, n, s.num_query_groups, s.head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = (k * cos + _rotate_half(k) * sin).transpose(1, 2)
        rows = torch.arange(b, device=x.device).unsqueeze(1)
        cache.keys[index, rows, positions] = k
        cache.values[index, rows, positions] = v
        span = int(positions.max()) + 1
        keys = cache.keys[index, :, :span].transpose(1, 2)  # [B, kv_heads, span, head_dim]
        values = cache.values[index, :, :span].transpose(1, 2)
        # Row b's query at position p sees the row's cached positions 0..p (its own earlier
        # tokens and the new ones before it); anything beyond is stale or another row's.
        mask = torch.arange(span, device=x.device) <= positions.unsqueeze(-1)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask.unsqueeze(1),
            enable_gqa=s.num_query_groups != s.num_heads)
        return F.linear(out.transpose(1, 2).reshape(b, n, -1), layer.o)

    def _layer(self, layer: nn.Module, index: int, x: Tensor, positions: Tensor, cos: Tensor,
               sin: Tensor, cache: KVCache) -> Tensor:
        """One pre-norm decoder layer (attention, then SwiGLU), residual stream in and out."""
        eps = self.shape.norm_eps
        h = _rms_norm(x, layer.input_norm, eps)
        x = x + self._attention(layer, index, h, positions, cos, sin, cache)
        h = _rms_norm(x, layer.mlp_norm, eps)
        return x + F.linear(F.silu(F.linear(h, layer.gate)) * F.linear(h, layer.up),
                            layer.down)

    @torch.no_grad()
    def forward(self, tokens: Tensor, cache: KVCache) -> tuple[Tensor, Tensor]:
        """Append `tokens` [B, n] to each row of `cache`; return their post-norm hidden
        states [B, n, D] and logits [B, n, V]."""
        hidden, logits, _ = self.forward_with_heads(tokens, cache)
        return hidden, logits

    @torch.no_grad()
    def forward_with_heads(self, tokens: Tensor, cache: KVCache
                           ) -> tuple[Tensor, Tensor, Tensor | None]:
        """`forward`, plus MTP's heads 2..n on the last layer's input z: their logits
        [B, n, heads − 1, V] (head k at position t predicts x_{t+k}), or None without heads.
        Each head keeps its own cache (layers L, L+1, ...)."""
        b, n = tokens.shape
        if b != cache.batch:
            raise ValueError(f"{b} rows of tokens for a cache of {cache.batch} rows")
        positions = cache.lengths.unsqueeze(1) + torch.arange(n, device=tokens.device)
        if int(positions.max()) >= cache.capacity:
            raise ValueError(f"the KV cache holds {cache.capacity} positions; writing up to "
                             f"position {int(positions.max())} does not fit")
        cos, sin = self._rope(positions)
        eps = self.shape.norm_eps
        x = F.embedding(tokens, self.embed)
        trunk = x
        for i, layer in enumerate(self.layers):
            trunk = x  # z: the last layer's input, what the MTP heads read
            x = self._layer(layer, i, x, positions, cos, sin, cache)
        heads = None
        if len(self.mtp_heads):
            first = len(self.layers)
            heads = torch.stack([
                F.linear(_rms_norm(self._layer(head, first + j, trunk, positions, cos, sin,
                                               cache), self.final_norm, eps), self.head)
                for j, head in enumerate(self.mtp_heads)], dim=2)
        cache.lengths = cache.lengths + n
        hidden = _rms_norm(x, self.final_norm, eps)
        return hidden, F.linear(hidden, self.head), heads

    def full_forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Hidden states and logits of whole sequences [B, T] in one pass, without a cache
        kept (a reference for tests and scoring)."""
        cache = self.new_cache(tokens.shape[0], tokens.shape[1])
        return self.forward(tokens, cache)


class DecoderTarget:
    """`LlamaDecoder` + its cache as the speculative loop's target model (`TargetModel`)."""

    def __init__(self, decoder: LlamaDecoder) -> None:
        """Wrap a decoder; `reset` allocates the cache."""
        self.decoder = decoder
        self.cache: KVCache | None = None

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head."""
        return self.decoder.vocab_size

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.decoder.embed.device

    def reset(self, batch: int, capacity: int) -> None:
        """An empty cache for a new batch of sequences."""
        self.cache = self.decoder.new_cache(batch, capacity)

    @property
    def lengths(self) -> Tensor:
        """Cached positions per row."""
        return self.cache.lengths

    def extend(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Run `tokens` [B, n] after each row's cached prefix: (hidden, logits)."""
        return self.decoder(tokens, self.cache)

    def truncate(self, lengths: Tensor) -> None:
        """Roll each row's cache back to lengths[b] positions."""
        self.cache.truncate(lengths)


class MTPDecoderTarget(DecoderTarget):
    """The target for MTP drafting: `extend` hands the speculative loop the heads' logits
    [B, n, heads − 1, V] where the plain target hands the hidden states (the drafter's
    state: `drafter.MTPDrafter`)."""

    def extend(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Run `tokens` [B, n] after each row's cached prefix: (heads' logits, logits)."""
        _, logits, heads = self.decoder.forward_with_heads(tokens, self.cache)
        return heads, logits
