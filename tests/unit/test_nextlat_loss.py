"""The NextLat loss and ψ against an independent reference (docs/method.md §1-§5).

The reference is written from the spec's equations, batch-first [B, T, ...], with explicit
loops over positions t and rollout steps i, in float64. The implementation runs in float32,
sequence-first [T, B, ...]. Both share the same leaves (trunk weight A, LM head W, embedding
table, ψ's weights), so values and gradients are compared leaf by leaf.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nextlat_pt.model.nextlat_loss import (
    LossTerms,
    NextLatLossConfig,
    next_token_loss,
    nextlat_loss,
)
from nextlat_pt.model.psi import LatentDynamics, rollout_step
from nextlat_pt.model.shape import psi_width

B, T, K, D, V, H = 2, 7, 5, 8, 11, 12

# Packed sequences: document index of each input token.
DOC_IDS = [[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 2, 2]]
# Prompt mask: 0 where the prediction made at t is not trained on (prompt / context).
PROMPT_MASK = [[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 1, 1]]


# ---------------------------------------------------------------------------------------------
# Helpers: a plain-PyTorch ψ (spec §2), the problem's leaves, the reference (spec §1, §3, §5)
# ---------------------------------------------------------------------------------------------


class PlainPsi:
    """ĥ = h + W3·GELU(W2·GELU(W1·RMSNorm([h; e]))), bias-free, weights are fp32 leaves.

    Callable on any [..., D] pair; the weights are cast to the input's dtype, so one ψ serves
    the fp32 implementation and the fp64 reference with the same leaves.
    """

    def __init__(self, d: int, width: int, gen: torch.Generator, scale: float = 0.6,
                 eps: float = 1e-5):
        def leaf(*shape, std):
            return (torch.randn(*shape, generator=gen) * std).requires_grad_()

        self.eps = eps
        self.g = (1.0 + 0.3 * torch.randn(2 * d, generator=gen)).requires_grad_()
        self.w1 = leaf(width, 2 * d, std=scale / (2 * d) ** 0.5 * 2)
        self.w2 = leaf(width, width, std=scale / width**0.5 * 2)
        self.w3 = leaf(d, width, std=scale / width**0.5 * 2)

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.g, self.w1, self.w2, self.w3]

    def __call__(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        dt = h.dtype
        u = torch.cat([h, e], dim=-1)
        u = u * torch.rsqrt(u.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.g.to(dt)
        z = F.gelu(u @ self.w1.to(dt).T)
        z = F.gelu(z @ self.w2.to(dt).T)
        return h + z @ self.w3.to(dt).T


@dataclasses.dataclass
class Problem:
    X: torch.Tensor  # [B, T, K] fixed trunk input features
    A: torch.Tensor  # [K, D] trunk weight (leaf)
    W: torch.Tensor  # [V, D] LM head (leaf)
    emb: torch.Tensor  # [V, D] input embedding table (leaf)
    tokens: torch.Tensor  # [B, T+1]
    psi: PlainPsi
    loss_mask: torch.Tensor  # [B, T] float
    doc_ids: torch.Tensor | None  # [B, T] long

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :T]

    @property
    def labels(self) -> torch.Tensor:
        return self.tokens[:, 1:]

    def leaves(self) -> list[torch.Tensor]:
        return [self.A, self.W, self.emb, *self.psi.params]


LEAF_NAMES = ["trunk A", "head W", "embedding", "psi g", "psi w1", "psi w2", "psi w3"]


def make_problem(docs: bool, prompt: bool, seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(B, T, K, generator=gen)
    A = (torch.randn(K, D, generator=gen) * 0.8).requires_grad_()
    W = torch.randn(V, D, generator=gen).requires_grad_()
    emb = torch.randn(V, D, generator=gen).requires_grad_()
    tokens = torch.randint(0, V, (B, T + 1), generator=gen)
    psi = PlainPsi(D, H, gen)
    mask = torch.tensor(PROMPT_MASK, dtype=torch.float32) if prompt else torch.ones(B, T)
    doc_ids = torch.tensor(DOC_IDS) if docs else None
    return Problem(X, A, W, emb, tokens, psi, mask, doc_ids)


def trunk(p: Problem, dtype: torch.dtype) -> torch.Tensor:
    """h = tanh(X A): [B, T, D], differentiable in A."""
    return torch.tanh(p.X.to(dtype) @ p.A.to(dtype))


def run_impl(p: Problem, cfg: NextLatLossConfig, *, psi=None, ce_grad: bool = True,
             head_for_ce: torch.Tensor | None = None) -> LossTerms:
    """The implementation on the problem (fp32, sequence-first). A fresh logits tensor each call.

    ce_grad=False: the logits are built from a detached h (the CE path reaches no leaf but W).
    head_for_ce: build the CE logits from this weight instead of p.W (p.W is still passed as the
    head weight used by the KL).
    """
    hidden = trunk(p, torch.float32).transpose(0, 1).contiguous()  # [T, B, D]
    w_ce = p.W if head_for_ce is None else head_for_ce
    logits = (hidden if ce_grad else hidden.detach()) @ w_ce.T
    return nextlat_loss(
        hidden=hidden,
        logits=logits,
        labels=p.labels.transpose(0, 1).contiguous(),
        input_embeddings=p.emb[p.inputs].transpose(0, 1).contiguous(),
        head_weight=p.W,
        psi=p.psi if psi is None else psi,
        loss_mask=p.loss_mask.transpose(0, 1).contiguous(),
        doc_ids=None if p.doc_ids is None else p.doc_ids.transpose(0, 1).contiguous(),
        cfg=cfg,
    )


def reference(p: Problem, cfg: NextLatLossConfig, *, psi=None, sg: bool = True,
              recursive: bool = True, ce_grad: bool = True) -> dict[str, torch.Tensor]:
    """The spec's loss, batch-first, in float64, one (b, t, i) at a time.

    sg=False drops the stop-gradient on the regression target (for the gradient-flow tests).
    recursive=False starts step i from the true h_{t+i-1} instead of the prediction ĥ_{t+i-1}
    (d independent one-step losses; not the method).
    """
    psi = p.psi if psi is None else psi
    dt = torch.float64
    tau, beta, d = cfg.kl_temperature, cfg.smooth_l1_beta, cfg.horizon
    h = trunk(p, dt)  # [B, T, D]
    W = p.W.to(dt)
    logits = (h if ce_grad else h.detach()) @ W.T  # [B, T, V]
    E = p.emb.to(dt)[p.inputs]  # E(x_t): [B, T, D]
    if cfg.detach_next_embedding:
        E = E.detach()
    mask = p.loss_mask.bool()

    # CE: mean over the positions with loss_mask = 1.
    ce_sum, ce_n = torch.zeros((), dtype=dt), 0
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                ce_sum = ce_sum - torch.log_softmax(logits[b, t], -1)[p.labels[b, t]]
                ce_n += 1
    ce = ce_sum / ce_n

    teacher_logp = torch.log_softmax(logits.detach() / tau, dim=-1)  # p(·|sg h) at temperature τ
    lat_terms: list[list[torch.Tensor]] = [[] for _ in range(d)]
    kl_terms: list[list[torch.Tensor]] = [[] for _ in range(d)]
    for b in range(B):
        for t in range(T):
            state = h[b, t]  # ĥ_t := h_t, not detached
            for i in range(1, d + 1):
                if t + i >= T:
                    break
                prev = state if recursive else h[b, t + i - 1]
                state = psi(prev, E[b, t + i])  # ĥ_{t+i}, teacher-forced token x_{t+i}
                if p.doc_ids is not None and p.doc_ids[b, t] != p.doc_ids[b, t + i]:
                    continue  # the rollout left the document of position t
                target = h[b, t + i].detach() if sg else h[b, t + i]
                if mask[b, t + i] or not cfg.mask_prompt_in_latent:
                    l1 = F.smooth_l1_loss(state, target, beta=beta, reduction="none")
                    lat_terms[i - 1].append(l1.mean())  # mean over D (per-element mean)
                if mask[b, t + i]:
                    log_q = torch.log_softmax((W.detach() @ state) / tau, dim=-1)
                    log_p = teacher_logp[b, t + i]
                    kl_terms[i - 1].append((log_p.exp() * (log_p - log_q)).sum())

    def step_average(terms: list[list[torch.Tensor]]) -> torch.Tensor:
        steps = [torch.stack(s).mean() if s else torch.zeros((), dtype=dt) for s in terms]
        return torch.stack(steps).sum() / d

    latent = step_average(lat_terms)
    kl = step_average(kl_terms)
    total = ce + cfg.lambda_latent * latent + cfg.lambda_kl * kl
    return {"total": total, "ce": ce, "latent": latent, "kl": kl}


def grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, leaves, allow_unused=True))


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """fp32 vs fp64: relative 1e-5, with an absolute floor scaled to the tensor's magnitude."""
    want = want.detach().double()
    got = got.detach().double()
    atol = max(rtol * 0.1 * want.abs().max().item(), 1e-7)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


BASE = NextLatLossConfig(horizon=1, lambda_latent=1.3, lambda_kl=0.7)


# ---------------------------------------------------------------------------------------------
# 1. Value and gradients against the reference
# ---------------------------------------------------------------------------------------------


def check_against_reference(p: Problem, cfg: NextLatLossConfig) -> None:
    terms = run_impl(p, cfg)
    ref = reference(p, cfg)
    assert terms.total.dtype == torch.float32
    assert_close(terms.total, ref["total"], "total")
    assert_close(terms.ce, ref["ce"], "ce")
    assert_close(terms.latent, ref["latent"], "latent")
    assert terms.kl is not None
    assert_close(terms.kl, ref["kl"], "kl")
    # each term matters in the value (a test that ignores one of them would pass vacuously)
    assert ref["latent"].item() > 1e-2 and ref["kl"].item() > 1e-2

    leaves = p.leaves()
    got = grads(terms.total, leaves)
    want = grads(ref["total"], leaves)
    for name, g, w in zip(LEAF_NAMES, got, want):
        if w is None or (name == "embedding" and cfg.detach_next_embedding):
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        assert g is not None, f"{name}: no gradient"
        assert w.abs().max() > 0, f"{name}: reference gradient is zero"
        assert_close(g, w, f"d total / d {name}")


@pytest.mark.parametrize("prompt", [False, True], ids=["no-prompt", "prompt"])
@pytest.mark.parametrize("docs", [False, True], ids=["one-doc", "packed"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_matches_reference(parallel_tp1, d, docs, prompt):
    p = make_problem(docs, prompt, seed=10 * d + 2 * docs + prompt)
    check_against_reference(p, dataclasses.replace(BASE, horizon=d))


@pytest.mark.parametrize("chunk", [1, 3, 5])
@pytest.mark.parametrize("tau", [1.0, 1.7])
def test_matches_reference_in_token_chunks(parallel_tp1, chunk, tau):
    """The KL decoded a few tokens at a time (chunks that split batch rows and positions, and
    chunks whose positions are all masked) equals the reference, value and gradients."""
    p = make_problem(docs=True, prompt=True, seed=31)
    check_against_reference(p, dataclasses.replace(BASE, horizon=3, kl_temperature=tau,
                                                   kl_chunk_tokens=chunk))


@pytest.mark.parametrize(
    "knobs",
    [
        {"smooth_l1_beta": 0.3, "kl_temperature": 1.7},
        {"mask_prompt_in_latent": True},
        {"detach_next_embedding": True},
    ],
    ids=["beta-tau", "mask-prompt-in-latent", "detach-next-embedding"],
)
def test_matches_reference_with_knobs(parallel_tp1, knobs):
    p = make_problem(docs=True, prompt=True, seed=77)
    check_against_reference(p, dataclasses.replace(BASE, horizon=2, **knobs))


def test_knobs_change_the_loss(parallel_tp1):
    """The knob settings above are not no-ops on this problem (so their tests can fail)."""
    p = make_problem(docs=True, prompt=True, seed=77)
    cfg = dataclasses.replace(BASE, horizon=2)
    base = reference(p, cfg)
    bt = reference(p, dataclasses.replace(cfg, smooth_l1_beta=0.3, kl_temperature=1.7))
    masked = reference(p, dataclasses.replace(cfg, mask_prompt_in_latent=True))
    assert abs(bt["latent"] - base["latent"]) > 1e-3 * base["latent"]
    assert abs(bt["kl"] - base["kl"]) > 1e-3 * base["kl"]
    assert abs(masked["latent"] - base["latent"]) > 1e-3 * base["latent"]
    # ... and the documents and prompt mask change each term by far more than the 1e-5
    # tolerance of the comparisons (the parametrized cases can tell them apart)
    plain = reference(dataclasses.replace(p, doc_ids=None, loss_mask=torch.ones(B, T)), cfg)
    for key in ("ce", "latent", "kl"):
        assert abs(plain[key] - base[key]) > 1e-4 * base[key], key


def test_no_valid_pairs_counts_as_zero(parallel_tp1):
    """Every token its own document: no rollout stays in a document; terms are 0, not NaN."""
    p = make_problem(docs=True, prompt=False, seed=5)
    p.doc_ids = torch.arange(T).repeat(B, 1)
    cfg = dataclasses.replace(BASE, horizon=2)
    terms = run_impl(p, cfg)
    ref = reference(p, cfg)
    assert terms.latent.item() == 0.0 and terms.kl.item() == 0.0
    assert_close(terms.total, ref["ce"], "total == ce")
    g_psi = grads(terms.total, p.psi.params)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in g_psi)


def test_step_without_pairs_still_divides_by_d(parallel_tp1):
    """Two-token documents: step 1 has pairs, step 2 none; the latent term is step1 / 2."""
    p = make_problem(docs=True, prompt=False, seed=6)
    p.doc_ids = (torch.arange(T) // 2).repeat(B, 1)
    one = run_impl(p, dataclasses.replace(BASE, horizon=1))
    two = run_impl(p, dataclasses.replace(BASE, horizon=2))
    assert one.latent.item() > 0
    assert_close(two.latent, one.latent / 2, "latent(d=2) == latent(d=1) / 2")
    assert_close(two.kl, one.kl / 2, "kl(d=2) == kl(d=1) / 2")


def test_loss_terms_as_dict(parallel_tp1):
    p = make_problem(docs=False, prompt=False)
    terms = run_impl(p, BASE)
    out = terms.as_dict()
    assert set(out) == {"loss", "ce", "latent", "kl"}
    assert not any(v.requires_grad for v in out.values())
    assert terms.total.requires_grad
    no_kl = run_impl(p, dataclasses.replace(BASE, lambda_kl=0.0))
    assert no_kl.kl is None and set(no_kl.as_dict()) == {"loss", "ce", "latent"}


# ---------------------------------------------------------------------------------------------
# 2. Gradient flow (spec §4)
# ---------------------------------------------------------------------------------------------


def hidden_grad(p: Problem, cfg: NextLatLossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """d(aux loss)/dh for a leaf h, CE logits detached: only the ψ-input path can reach h."""
    h_leaf = trunk(p, torch.float32).detach().transpose(0, 1).contiguous().requires_grad_()
    terms = nextlat_loss(
        hidden=h_leaf,
        logits=h_leaf.detach() @ p.W.detach().T,
        labels=p.labels.transpose(0, 1).contiguous(),
        input_embeddings=p.emb.detach()[p.inputs].transpose(0, 1).contiguous(),
        head_weight=p.W.detach(),
        psi=p.psi,
        loss_mask=p.loss_mask.transpose(0, 1).contiguous(),
        doc_ids=None if p.doc_ids is None else p.doc_ids.transpose(0, 1).contiguous(),
        cfg=cfg,
    )
    (g,) = torch.autograd.grad(terms.total, [h_leaf])
    return g, terms.latent


@pytest.mark.parametrize("d", [1, 2])
def test_no_gradient_through_regression_target(parallel_tp1, d):
    """(a) sg[h_{t+i}]: the gradient on h is that of ψ's input path only."""
    p = make_problem(docs=False, prompt=False, seed=21)
    cfg = NextLatLossConfig(horizon=d, lambda_latent=1.0, lambda_kl=0.0)
    g, _ = hidden_grad(p, cfg)
    # h_{T-1} is never a ψ input (every rollout starting there is empty): only a target.
    assert torch.count_nonzero(g[-1]) == 0, "gradient reached the regression target h_{T-1}"
    assert torch.count_nonzero(g[:-1]) > 0
    # Through the trunk: impl == reference with sg, and != reference without sg.
    impl = grads(run_impl(p, cfg, ce_grad=False).total, [p.A])[0]
    with_sg = grads(reference(p, cfg, ce_grad=False)["total"], [p.A])[0]
    no_sg = grads(reference(p, cfg, ce_grad=False, sg=False)["total"], [p.A])[0]
    assert_close(impl, with_sg, "d latent / d A (sg target)")
    assert rel_diff(no_sg, with_sg) > 1e-2  # the check above can tell the two apart


def test_kl_gives_lm_head_no_gradient(parallel_tp1):
    """(b) The head is frozen inside the KL: W's gradient is the CE's alone."""
    p = make_problem(docs=True, prompt=True, seed=31)
    cfg = NextLatLossConfig(horizon=2, lambda_latent=1.0, lambda_kl=1.0)
    g_total = grads(run_impl(p, cfg).total, [p.W])[0]
    # CE alone, from its own fresh logits
    hidden = trunk(p, torch.float32).transpose(0, 1).contiguous()
    ce = next_token_loss(hidden @ p.W.T, p.labels.transpose(0, 1).contiguous(),
                         p.loss_mask.transpose(0, 1).contiguous())
    g_ce = grads(ce, [p.W])[0]
    assert_close(g_total, g_ce, "d total / d W == d CE / d W")
    # The KL path alone: CE logits from a separate copy of W; the KL's head is p.W.
    w_copy = p.W.detach().clone()
    terms = run_impl(p, cfg, head_for_ce=w_copy)
    assert terms.kl.item() > 1e-2
    g_kl = grads(terms.total, [p.W])[0]
    assert g_kl is None or torch.count_nonzero(g_kl) == 0
    # ... while the KL does move ψ (it is not simply switched off)
    only_kl = dataclasses.replace(cfg, lambda_latent=0.0)
    g_psi = grads(run_impl(p, only_kl, ce_grad=False).total, p.psi.params)
    assert all(g is not None and g.abs().max() > 0 for g in g_psi)


@pytest.mark.parametrize("which", ["latent", "kl"])
def test_trunk_gets_gradient_through_psi_input(parallel_tp1, which):
    """(c) With CE detached, the aux term alone moves the trunk (through ψ's input h_t)."""
    p = make_problem(docs=True, prompt=True, seed=41)
    lam = (1.0, 0.0) if which == "latent" else (0.0, 1.0)
    cfg = NextLatLossConfig(horizon=2, lambda_latent=lam[0], lambda_kl=lam[1])
    g = grads(run_impl(p, cfg, ce_grad=False).total, [p.A])[0]
    want = grads(reference(p, cfg, ce_grad=False)["total"], [p.A])[0]
    assert g is not None and g.abs().max() > 1e-4
    assert_close(g, want, f"d {which} / d A")


def test_rollout_is_recursive(parallel_tp1):
    """(d) d=2 is not two independent one-step losses: step 2 starts from ĥ_{t+1}."""
    p = make_problem(docs=True, prompt=True, seed=51)
    cfg = dataclasses.replace(BASE, horizon=2)
    terms = run_impl(p, cfg)
    rec = reference(p, cfg)
    ind = reference(p, cfg, recursive=False)
    assert_close(terms.latent, rec["latent"], "latent (recursive)")
    assert abs(terms.latent.item() - ind["latent"].item()) > 1e-3 * ind["latent"].item()
    assert abs(terms.kl.item() - ind["kl"].item()) > 1e-3 * ind["kl"].item()
    got = grads(terms.total, p.psi.params)
    want_rec = grads(rec["total"], p.psi.params)
    want_ind = grads(ind["total"], p.psi.params)
    for name, g, wr, wi in zip(LEAF_NAMES[3:], got, want_rec, want_ind):
        assert_close(g, wr, f"d total / d {name}")
        assert rel_diff(g, wi) > 1e-3, f"{name}: ψ gradient equals the one-step version"


def test_detach_next_embedding(parallel_tp1):
    """(e) detach_next_embedding=True: the aux losses send no gradient to E."""
    p = make_problem(docs=False, prompt=False, seed=61)
    cfg = dataclasses.replace(BASE, horizon=2)
    g_on = grads(run_impl(p, cfg).total, [p.emb])[0]
    assert g_on is not None and g_on.abs().max() > 1e-4  # the control: it does train E
    g_off = grads(run_impl(p, dataclasses.replace(cfg, detach_next_embedding=True)).total,
                  [p.emb])[0]
    assert g_off is None or torch.count_nonzero(g_off) == 0
    # ψ and the trunk still train
    terms = run_impl(p, dataclasses.replace(cfg, detach_next_embedding=True))
    g = grads(terms.total, [p.A, *p.psi.params])
    assert all(x is not None and x.abs().max() > 0 for x in g)


# ---------------------------------------------------------------------------------------------
# 3. next_token_loss == masked F.cross_entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [False, True], ids=["no-prompt", "prompt"])
def test_next_token_loss_matches_cross_entropy(parallel_tp1, prompt):
    p = make_problem(docs=False, prompt=prompt, seed=71)
    hidden = trunk(p, torch.float32).transpose(0, 1).contiguous()
    labels = p.labels.transpose(0, 1).contiguous()
    mask = p.loss_mask.transpose(0, 1).contiguous()
    got = next_token_loss(hidden @ p.W.T, labels, mask)

    ref_logits = trunk(p, torch.float64) @ p.W.double().T  # [B, T, V]
    per_tok = F.cross_entropy(ref_logits.reshape(-1, V), p.labels.reshape(-1), reduction="none")
    m = p.loss_mask.reshape(-1).double()
    want = (per_tok * m).sum() / m.sum()
    assert_close(got, want, "CE")
    for name, g, w in zip(["A", "W"], grads(got, [p.A, p.W]), grads(want, [p.A, p.W])):
        assert_close(g, w, f"d CE / d {name}")
    if prompt:  # the mask matters
        unmasked = F.cross_entropy(ref_logits.reshape(-1, V), p.labels.reshape(-1))
        assert abs(unmasked.item() - want.item()) > 1e-3


def test_nextlat_with_zero_lambdas_is_next_token_loss(parallel_tp1):
    p = make_problem(docs=True, prompt=True, seed=72)
    cfg = NextLatLossConfig(horizon=2, lambda_latent=0.0, lambda_kl=0.0)
    terms = run_impl(p, cfg)
    hidden = trunk(p, torch.float32).transpose(0, 1).contiguous()
    ce = next_token_loss(hidden @ p.W.T, p.labels.transpose(0, 1).contiguous(),
                         p.loss_mask.transpose(0, 1).contiguous())
    assert_close(terms.total, ce, "total with λ = 0")
    for g, w in zip(grads(terms.total, [p.A, p.W]), grads(ce, [p.A, p.W])):
        assert_close(g, w, "gradient with λ = 0")


# ---------------------------------------------------------------------------------------------
# 4. LatentDynamics (megatron ψ) and psi_width
# ---------------------------------------------------------------------------------------------


def megatron_config(hidden_size: int, num_heads: int = 2):
    from nextlat_pt.model.gpt import ModelSpec, transformer_config

    spec = ModelSpec(
        num_layers=1,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_query_groups=num_heads,
        ffn_hidden_size=2 * hidden_size,
        vocab_size=32,
        max_position_embeddings=16,
    )
    return transformer_config(spec)


def hand_psi(m: LatentDynamics, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The spec's formula in float64 from the module's weights."""
    eps = m.config.layernorm_epsilon
    u = torch.cat([h, e], dim=-1).double()
    u = u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + eps) * m.norm.weight.double()
    z = F.gelu(u @ m.fc1.weight.double().T)
    z = F.gelu(z @ m.fc2.weight.double().T)
    return h.double() + z @ m.fc3.weight.double().T


def test_latent_dynamics_matches_formula(parallel_tp1):
    torch.manual_seed(0)
    m = LatentDynamics(megatron_config(16), width=24)
    assert tuple(m.fc1.weight.shape) == (24, 32)
    assert tuple(m.fc2.weight.shape) == (24, 24)
    assert tuple(m.fc3.weight.shape) == (16, 24)
    assert tuple(m.norm.weight.shape) == (32,)
    with torch.no_grad():  # non-trivial gain and larger weights, so every factor matters
        m.norm.weight.copy_(1.0 + 0.5 * torch.randn(32))
        for fc in (m.fc1, m.fc2, m.fc3):
            fc.weight.mul_(20.0)
    h = torch.randn(5, 3, 16)
    e = torch.randn(5, 3, 16)
    out = m(h, e)
    assert out.shape == (5, 3, 16)
    want = hand_psi(m, h, e)
    assert rel_diff(want, h.double()) > 1e-2  # the delta is not negligible
    assert_close(out, want, "LatentDynamics(h, e)")
    # no biases anywhere: the parameters are exactly the norm gain and three weights
    assert sorted(n for n, _ in m.named_parameters()) == [
        "fc1.weight", "fc2.weight", "fc3.weight", "norm.weight"]


def test_fused_rollout_equals_concatenating_psi_with_gradients(parallel_tp1):
    """The rollout with E(x) embedded once (`rollout_step`) is the module formula applied per
    step on [ĥ ; E(x_{t+i})]: same states and the same gradients for every ψ weight (both
    halves of W1 and of the norm gain), for h and for E(x)."""
    torch.manual_seed(3)
    m = LatentDynamics(megatron_config(16), width=24)
    with torch.no_grad():
        m.norm.weight.copy_(1.0 + 0.5 * torch.randn(32))
        for fc in (m.fc1, m.fc2, m.fc3):
            fc.weight.mul_(10.0)
    h = torch.randn(9, 2, 16, requires_grad=True)
    e = torch.randn(9, 2, 16, requires_grad=True)
    leaves = [h, e, *m.parameters()]

    def concatenating(state, next_embedding):
        x = m.norm(torch.cat([state, next_embedding], dim=-1))
        x = F.gelu(x @ m.fc1.weight.T)
        x = F.gelu(x @ m.fc2.weight.T)
        return state + x @ m.fc3.weight.T

    fused, reference = h, h
    step = rollout_step(m, e, horizon=3)
    for i in range(1, 4):
        fused = step(fused[:-1], i)
        reference = concatenating(reference[:-1], e[i:])
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    weights = torch.randn(fused.shape)
    got = torch.autograd.grad((fused * weights).sum(), leaves)
    want = torch.autograd.grad((reference * weights).sum(), leaves)
    for name, g, w in zip(["h", "e", *(n for n, _ in m.named_parameters())], got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5,
                                   msg=lambda msg, n=name: f"{n}: {msg}")


def test_latent_dynamics_zero_init_is_identity(parallel_tp1):
    torch.manual_seed(1)
    m = LatentDynamics(megatron_config(16), width=24, zero_init_output=True)
    h = torch.randn(4, 2, 16)
    out = m(h, torch.randn(4, 2, 16))
    torch.testing.assert_close(out, h, rtol=0, atol=0)
    assert torch.count_nonzero(m.fc1.weight) > 0  # only the output layer is zeroed


def test_latent_dynamics_param_count_path_star(parallel_tp1):
    """Spec §2: Path-Star D = 384, H = 384 -> 2D + 2D·H + H² + H·D = 590,592."""
    m = LatentDynamics(megatron_config(384, num_heads=6), width=psi_width(384, 0.5))
    assert sum(x.numel() for x in m.parameters()) == 590_592


def test_latent_dynamics_as_psi_in_loss(parallel_tp1):
    """The megatron ψ plugged into the loss equals the reference with the hand formula."""
    torch.manual_seed(2)
    m = LatentDynamics(megatron_config(D), width=H)
    with torch.no_grad():
        for fc in (m.fc1, m.fc2, m.fc3):
            fc.weight.mul_(20.0)
    p = make_problem(docs=True, prompt=True, seed=81)
    cfg = dataclasses.replace(BASE, horizon=2)
    terms = run_impl(p, cfg, psi=m)
    ref = reference(p, cfg, psi=lambda h, e: hand_psi(m, h, e))
    assert_close(terms.total, ref["total"], "total with LatentDynamics")
    assert_close(terms.latent, ref["latent"], "latent with LatentDynamics")
    assert_close(terms.kl, ref["kl"], "kl with LatentDynamics")
    g = grads(terms.total, [m.fc1.weight, m.fc3.weight, m.norm.weight])
    assert all(x is not None and x.abs().max() > 0 for x in g)


@pytest.mark.parametrize(
    "d_model, factor, width",
    [
        (2048, 1.6, 6528),  # FineWeb-Edu 1.3B
        (384, 0.5, 384),  # Path-Star
        (512, 1.0, 1024),  # A5
        (384, 2.0, 1536),  # Manhattan
        (768, 0.5, 768),  # Countdown
        (768, 1.33, 2048),  # TinyStories
        (48, 1.0, 128),  # 96/128 = 0.75 rounds up
        (16, 1.0, 0),  # tiny D: width 0
    ],
)
def test_psi_width(d_model, factor, width):
    assert psi_width(d_model, factor) == width
    assert psi_width(d_model, factor) == 128 * round(factor * 2 * d_model / 128)
