"""One fp32 data-parallel rank trains without DeepSpeed (`LocalEngine`): the same update as
DeepSpeed's ZeRO engine, bit for bit, with clipping active, for AdamW, SGD and Muon (whose
ZeRO path orthogonalises each matrix gathered from the flat partition)."""

from __future__ import annotations

import pytest
import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from nextlat_pt.config import load_config, validate
from nextlat_pt.parallel.deepspeed_engine import build_engine, no_sync_func, set_lr
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.parallel.local_engine import LocalEngine, wants_local_engine
from nextlat_pt.train.build import build_model_chunks, loss_config, model_spec
from nextlat_pt.train.optim import build_optimizer
from nextlat_pt.train.step import MicroBatch, make_forward_step
from nextlat_pt.train.train_module import NextLatTrainModule

VOCAB, T = 512, 32
OVERRIDES = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=4",
             "model.num_query_groups=2", f"model.seq_len={T}", "train.micro_batch_size=2",
             "train.global_batch_size=8", "nextlat.horizon=2", "train.grad_clip=0.5"]


def batches() -> list[MicroBatch]:
    """Four micro-batches of packed documents (document boundaries inside windows)."""
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, VOCAB, (8, T + 1), generator=gen)
    docs = torch.cumsum((torch.rand(8, T + 1, generator=gen) < 0.1).long(), dim=1)
    return [MicroBatch.from_sample({"tokens": t, "doc_ids": d}, torch.device("cpu"))
            for t, d in zip(tokens.split(2), docs.split(2))]


def train(kind: str, optimizer: str, steps: int = 3, extra: tuple[str, ...] = ()
          ) -> tuple[list[float], list[torch.Tensor]]:
    """`steps` steps on the same four micro-batches (on every data-parallel rank)."""
    cfg = load_config(None, [*OVERRIDES, f"train.optimizer={optimizer}", "train.lr=0.05",
                             *extra])
    validate(cfg, world_size=1)
    chunks = [NextLatTrainModule(m, loss_config(cfg))
              for m in build_model_chunks(model_spec(cfg, VOCAB), torch.device("cpu"))]
    opt = build_optimizer(chunks[0], cfg.train)
    if kind == "local":
        engine = LocalEngine(chunks[0], opt, cfg.train.grad_clip)
    else:
        engine = build_engine(chunks[0], opt, 1, 2, cfg.train.grad_clip, bf16=False)
        chunks[0].config.no_sync_func = no_sync_func(engine)
    # Both engines provide what the trainer and the checkpoints call (the typed protocol).
    assert isinstance(engine, TrainingEngine)
    norms = []
    for _ in range(steps):
        set_lr(engine, cfg.train.lr)
        get_forward_backward_func()(
            forward_step_func=make_forward_step(engine), data_iterator=iter(batches()),
            model=chunks, num_microbatches=4, seq_length=T, micro_batch_size=2,
            forward_only=False)
        engine.step()
        norms.append(float(engine.get_global_grad_norm()))
    return norms, [p.detach().clone() for p in chunks[0].parameters()]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "muon"])
def test_local_engine_matches_deepspeed_bit_for_bit(parallel_tp1, optimizer):
    local_norms, local_params = train("local", optimizer)
    ds_norms, ds_params = train("deepspeed", optimizer)
    assert max(local_norms) > 0.5, "clipping must be active for the test to mean something"
    assert local_norms == ds_norms
    for a, b in zip(local_params, ds_params, strict=True):
        assert torch.equal(a, b)


def test_which_runs_skip_deepspeed():
    assert wants_local_engine(dp=1, pp=1, bf16=False)
    assert not wants_local_engine(dp=2, pp=1, bf16=False)  # ZeRO shards across ranks
    assert not wants_local_engine(dp=1, pp=2, bf16=False)  # embedding replica in the norm
    assert not wants_local_engine(dp=1, pp=1, bf16=True)  # fp32 master weights


def test_an_object_without_the_engine_api_is_not_an_engine():
    """The protocol check can fail: a bare module lacks `step`, `backward`, `optimizer`..."""
    assert not isinstance(torch.nn.Linear(2, 2), TrainingEngine)
