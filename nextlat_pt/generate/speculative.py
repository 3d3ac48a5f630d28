"""Decoding with a KV cache: plain, or self-speculative with ψ drafting (docs/method.md §6)
or MTP's heads drafting (§7: `drafter.MTPDrafter`, whose state is the heads' logits).

One loop serves both. Each row keeps: its KV cache over x_1..x_t, the TRUE post-norm hidden
state h_t, and the next token x_{t+1}, already chosen exactly (sampled from p_t, or the
previous cycle's correction or bonus token). A cycle:

1. emits x_{t+1} (always accepted);
2. drafts k tokens: g_0 = h_t, g_j = ψ(g_{j-1}, E(x_{t+j})), q_j = warp(W g_j),
   x_{t+j+1} ~ q_j (k = 0 without a drafter: plain decoding);
3. runs ONE target pass over [x_{t+1}, d_1..d_k] on the cache: true h and p_{t+1..t+k+1};
4. accepts d_j with probability min(1, p_{t+j}(d_j) / q_j(d_j)), in order; at the first
   rejection the next token is drawn from norm(max(0, p_{t+j} - q_j)); if all k are
   accepted, from p_{t+k+1} (the bonus token);
5. truncates the cache to x_1..x_{t+1+accepted} and takes h from the last kept position.

This is Leviathan et al.'s speculative sampling, so the emitted tokens follow the (warped)
target distribution exactly, whatever ψ drafts; greedy decoding (p, q one-hot) reproduces
plain greedy decoding token for token. "Accepted tokens" counts accepted drafts only, so a
cycle emits 1 + accepted tokens.

Rows are independent: with a batch, each row drafts, accepts and truncates on its own (the
cache keeps a length per row); a cycle's target pass is as long as the longest draft.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from nextlat_pt.generate.drafter import Drafter, MTPDrafter
from nextlat_pt.generate.policies import DraftPolicy
from nextlat_pt.generate.sampling import SamplingParams, choose, warp


class TargetModel(Protocol):
    """The transformer being decoded, with its KV cache (ours: `decoder.DecoderTarget`;
    transformers': `hf.HFTarget`)."""

    vocab_size: int
    device: torch.device
    lengths: Tensor  # [B] cached positions per row

    def reset(self, batch: int, capacity: int) -> None:
        """An empty cache for `batch` rows of up to `capacity` positions."""

    def extend(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Append `tokens` [B, n] to each row: (post-norm hidden [B, n, D], logits [B, n, V])."""

    def truncate(self, lengths: Tensor) -> None:
        """Keep the first lengths[b] cached positions of row b."""


@dataclass
class GenerationStats:
    """What a `generate` call did. Cycle counts are per row (a batched pass of B active rows
    counts B cycles)."""

    sequences: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    cycles: int = 0  # target passes after the prefill, per row
    target_calls: int = 0  # batched target passes after the prefill
    drafted: int = 0
    accepted: int = 0
    accepted_histogram: list[int] = field(default_factory=list)  # cycles by accepted count
    wall_s: float = 0.0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0

    @property
    def accepted_per_cycle(self) -> float:
        """Mean accepted drafts per cycle (the paper's "accepted tokens")."""
        return self.accepted / self.cycles if self.cycles else 0.0

    @property
    def tokens_per_cycle(self) -> float:
        """Mean tokens a cycle emits: 1 + accepted."""
        return 1.0 + self.accepted_per_cycle

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second of wall time (prefill included)."""
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def merge(self, other: GenerationStats) -> None:
        """Add another call's counts and times (batches of one command)."""
        for name in ("sequences", "prompt_tokens", "new_tokens", "cycles", "target_calls",
                     "drafted", "accepted", "wall_s", "prefill_s", "draft_s", "verify_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        hist = self.accepted_histogram + [0] * (len(other.accepted_histogram)
                                                - len(self.accepted_histogram))
        for i, count in enumerate(other.accepted_histogram):
            hist[i] += count
        self.accepted_histogram = hist

    def to_dict(self) -> dict:
        """Counts, times and the derived rates, for JSON."""
        return {
            "sequences": self.sequences, "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens, "cycles": self.cycles,
            "target_calls": self.target_calls, "drafted": self.drafted,
            "accepted": self.accepted, "accepted_histogram": self.accepted_histogram,
            "accepted_per_cycle": self.accepted_per_cycle,
            "tokens_per_cycle": self.tokens_per_cycle,
            "acceptance_rate": self.acceptance_rate, "wall_s": self.wall_s,
            "prefill_s": self.prefill_s, "draft_s": self.draft_s, "verify_s": self.verify_s,
            "tokens_per_s": self.tokens_per_s,
        }


@dataclass
class GenerationResult:
    """The new tokens of each prompt (EOS included when it ended a row) and the stats."""

    tokens: list[list[int]]
    stats: GenerationStats


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """norm(max(0, p - q)) row by row: where a rejected draft's correction is drawn from.

    With q = 0 (no rejection) this is p. If p <= q everywhere (only when p == q, where no
    draft is ever rejected) p is returned so the result is always a distribution.
    """
    residual = (p - q).clamp_min(0)
    mass = residual.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(p.dtype).tiny), p)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Rows:
    """Per-row bookkeeping: emitted tokens, remaining budget, EOS."""

    def __init__(self, batch: int, max_new_tokens: int, eos_id: int | None) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.remaining = [max_new_tokens] * batch
        self.done = [max_new_tokens <= 0] * batch
        self.eos_id = eos_id

    def emit(self, row: int, tokens: list[int]) -> None:
        """Append tokens to a live row, stopping at its budget or at EOS."""
        for token in tokens:
            if self.done[row]:
                return
            self.tokens[row].append(token)
            self.remaining[row] -= 1
            if self.remaining[row] <= 0 or token == self.eos_id:
                self.done[row] = True


def generate(target: TargetModel, prompts: list[list[int]], max_new_tokens: int,
             sampling: SamplingParams, *, drafter: Drafter | MTPDrafter | None = None,
             policy: DraftPolicy | None = None, generator: torch.Generator | None = None,
             eos_id: int | None = None) -> GenerationResult:
    """Continue each prompt by up to `max_new_tokens` tokens (fewer when it emits `eos_id`).

    Without `drafter`, plain decoding (one target pass per token); with it, speculative
    decoding with the draft lengths of `policy`. `generator` drives every random draw.
    """
    if (drafter is None) != (policy is None):
        raise ValueError("speculative decoding needs both a drafter and a draft policy")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = target.device
    batch = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    stats = GenerationStats(sequences=batch, prompt_tokens=int(lengths.sum()),
                            accepted_histogram=[0] * ((policy.max_len if policy else 0) + 1))
    rows = _Rows(batch, max_new_tokens, eos_id)
    if all(rows.done):
        return GenerationResult(rows.tokens, stats)
    _sync(device)
    start = time.perf_counter()

    # Prefill: right-padded prompts; each row keeps only its own prompt in the cache.
    capacity = int(lengths.max()) + max_new_tokens + (policy.max_len if policy else 0) + 1
    target.reset(batch, capacity)
    width = int(lengths.max())
    padded = torch.tensor([p + [0] * (width - len(p)) for p in prompts], dtype=torch.long,
                          device=device)
    index = torch.arange(batch, device=device)
    hidden, logits = target.extend(padded)
    target.truncate(lengths)
    state = hidden[index, lengths - 1]  # true h_t
    pending = choose(warp(logits[index, lengths - 1], sampling), sampling, generator)
    if policy is not None:
        policy.start(batch, device)
    _sync(device)
    stats.prefill_s = time.perf_counter() - start

    while True:
        for b, token in enumerate(pending.tolist()):  # x_{t+1}: always accepted
            rows.emit(b, [token])
        if all(rows.done):
            break
        active = torch.tensor([not d for d in rows.done], device=device)

        t0 = time.perf_counter()
        drafts, q, n_draft = _draft(drafter, policy, sampling, generator, state, pending,
                                    active, rows.remaining, target.vocab_size)
        _sync(device)
        t1 = time.perf_counter()

        inputs = torch.cat([pending.unsqueeze(1), drafts], dim=1)
        hidden, logits = target.extend(inputs)
        p = warp(logits, sampling)  # p_{t+1..t+k+1}
        n_acc = _accept(p, q, drafts, n_draft, sampling, generator)
        chosen = _next_token(p, q, n_acc, n_draft, sampling, generator)
        keep = torch.where(active, n_acc + 1, torch.zeros_like(n_acc))
        target.truncate(target.lengths - inputs.shape[1] + keep)
        live = active.view(-1, *[1] * (state.dim() - 1))
        state = torch.where(live, hidden[index, n_acc], state)
        pending = torch.where(active, chosen, pending)
        _sync(device)
        stats.draft_s += t1 - t0
        stats.verify_s += time.perf_counter() - t1

        n_draft = torch.where(active, n_draft, torch.zeros_like(n_draft))
        n_acc = torch.where(active, n_acc, torch.zeros_like(n_acc))
        if policy is not None:
            policy.update(n_draft, n_acc)
        stats.target_calls += 1
        for b, (live, made, took) in enumerate(zip(active.tolist(), n_draft.tolist(),
                                                   n_acc.tolist())):
            if not live:
                continue
            stats.cycles += 1
            stats.drafted += made
            stats.accepted += took
            stats.accepted_histogram[took] += 1
            if took:
                rows.emit(b, drafts[b, :took].tolist())

    _sync(device)
    stats.wall_s = time.perf_counter() - start
    stats.new_tokens = sum(len(t) for t in rows.tokens)
    return GenerationResult(rows.tokens, stats)


def _draft(drafter: Drafter | MTPDrafter | None, policy: DraftPolicy | None,
           sampling: SamplingParams, generator: torch.Generator | None, state: Tensor,
           pending: Tensor, active: Tensor, remaining: list[int],
           vocab: int) -> tuple[Tensor, Tensor, Tensor]:
    """The drafter's (ψ's or MTP's heads') drafts: tokens [B, k], their distributions
    q [B, k, V] and each row's count [B] (k is the longest row's; a row's tokens beyond its
    count are padding)."""
    batch, device = pending.shape[0], pending.device
    n_draft = torch.zeros(batch, dtype=torch.long, device=device)
    if drafter is None or policy is None:
        empty = torch.zeros(batch, 0, dtype=torch.long, device=device)
        return empty, state.new_zeros(batch, 0, vocab, dtype=torch.float32), n_draft
    # A row drafts at most remaining - 1 tokens: with all accepted, the bonus token is its
    # last one, so no pass is spent on tokens it cannot emit.
    budget = torch.tensor(remaining, device=device) - 1
    allowed = torch.where(active, torch.minimum(policy.lengths(), budget),
                          torch.zeros_like(budget)).clamp_min(0)
    if getattr(drafter, "max_len", None) is not None:  # MTP: n − 1 heads to draft from
        allowed = allowed.clamp_max(drafter.max_len)
    tokens, dists = [], []
    going = allowed > 0
    token, g = pending, state
    for j in range(int(allowed.max())):
        g, logits = drafter.step(g, token)
        q_j = warp(logits, sampling)
        confidence = (torch.softmax(logits.float(), dim=-1) if sampling.greedy else q_j).amax(-1)
        going = going & (allowed > j) & policy.keep_drafting(confidence)
        if not bool(going.any()):
            break
        token = choose(q_j, sampling, generator)
        tokens.append(token)
        dists.append(q_j)
        n_draft += going.long()
    if not tokens:
        empty = torch.zeros(batch, 0, dtype=torch.long, device=device)
        return empty, state.new_zeros(batch, 0, vocab, dtype=torch.float32), n_draft
    return torch.stack(tokens, dim=1), torch.stack(dists, dim=1), n_draft


def _next_token(p: Tensor, q: Tensor, n_acc: Tensor, n_draft: Tensor,
                sampling: SamplingParams, generator: torch.Generator | None) -> Tensor:
    """[B] the token after the accepted drafts: the correction drawn from
    norm(max(0, p_{t+j} - q_j)) after a rejection at draft j, else the bonus from p_{t+k+1}."""
    index = torch.arange(p.shape[0], device=p.device)
    p_next = p[index, n_acc]
    if sampling.greedy:
        return p_next.argmax(dim=-1)
    if q.shape[1]:
        q_rej = q[index, n_acc.clamp(max=q.shape[1] - 1)].to(p.dtype)
        # q = 0 where nothing was rejected: the residual is then p itself.
        q_next = torch.where((n_acc < n_draft).unsqueeze(1), q_rej, torch.zeros_like(q_rej))
    else:
        q_next = torch.zeros_like(p_next)
    return choose(residual_distribution(p_next, q_next), sampling, generator)


def _accept(p: Tensor, q: Tensor, drafts: Tensor, n_draft: Tensor, sampling: SamplingParams,
            generator: torch.Generator | None) -> Tensor:
    """[B] accepted drafts per row: the length of the accepted prefix of each row's drafts."""
    k = drafts.shape[1]
    if k == 0:
        return torch.zeros_like(n_draft)
    p_draft = p[:, :k].gather(-1, drafts.unsqueeze(-1)).squeeze(-1)  # p_{t+j}(d_j)
    if sampling.greedy:
        ok = drafts == p[:, :k].argmax(dim=-1)
    else:
        q_draft = q.gather(-1, drafts.unsqueeze(-1)).squeeze(-1).to(p.dtype)  # q_j(d_j) > 0
        u = torch.rand(drafts.shape, generator=generator, device=p.device, dtype=p.dtype)
        ok = u * q_draft < p_draft  # u < p/q, i.e. accept with probability min(1, p/q)
    ok = ok & (torch.arange(k, device=p.device) < n_draft.unsqueeze(1))
    return ok.long().cumprod(dim=1).sum(dim=1)
