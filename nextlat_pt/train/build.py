"""Build the trainable pieces from a config: model chunks, train modules, DeepSpeed engine."""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from nextlat_pt.config import Config, resolved_grad_accum_dtype
from nextlat_pt.model.gpt import ModelSpec, NextLatGPT
from nextlat_pt.model.jtp_loss import JTPLossConfig
from nextlat_pt.model.mtp_loss import MTPLossConfig
from nextlat_pt.model.nextlat_loss import NextLatLossConfig
from nextlat_pt.model_from_config import model_spec
from nextlat_pt.parallel.deepspeed_engine import build_engine, no_sync_func
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.parallel.grads import register_sequence_parallel_grad_hooks
from nextlat_pt.parallel.local_engine import LocalEngine, wants_local_engine
from nextlat_pt.train.compile import compile_layers, compile_psi, compile_wanted
from nextlat_pt.train.optim import build_optimizer
from nextlat_pt.train.train_module import NextLatTrainModule


def loss_config(cfg: Config, compiled: bool = False,
                ) -> NextLatLossConfig | MTPLossConfig | JTPLossConfig | None:
    """The NextLat, MTP or JTP loss settings, or None for the plain next-token objective.
    `compiled`: `train.compile` is on for this device (the KL's chunks run fused)."""
    if cfg.mtp_heads > 1:
        return MTPLossConfig(heads=cfg.mtp_heads,
                             recompute_heads=cfg.nextlat.mtp_recompute_heads)
    if cfg.jtp_steps:
        return JTPLossConfig(steps=cfg.jtp_steps, lambda_jtp=cfg.nextlat.jtp_lambda,
                             recompute=cfg.nextlat.mtp_recompute_heads)
    if not cfg.uses_psi:
        return None
    n = cfg.nextlat
    return NextLatLossConfig(
        horizon=n.horizon,
        lambda_latent=n.lambda_latent,
        lambda_kl=n.lambda_kl,
        smooth_l1_beta=n.smooth_l1_beta,
        kl_temperature=n.kl_temperature,
        detach_next_embedding=n.detach_next_embedding,
        mask_prompt_in_latent=n.mask_prompt_in_latent,
        kl_chunk_tokens=n.kl_chunk_tokens,
        fused_kl=compiled,
    )


def build_model_chunks(spec: ModelSpec, device: torch.device) -> list[NextLatGPT]:
    """This rank's model: one chunk per virtual pipeline stage (one without interleaving)."""
    if not spec.vpp:
        return [NextLatGPT(spec, pre_process=ps.is_pipeline_first_stage(),
                           post_process=ps.is_pipeline_last_stage()).to(device)]
    return [
        NextLatGPT(
            spec,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=i),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=i),
            vp_stage=i,
        ).to(device)
        for i in range(spec.vpp)
    ]


def build_training(cfg: Config, vocab_size: int,
                   device: torch.device) -> tuple[list[NextLatTrainModule], TrainingEngine]:
    """Model chunks wrapped with the loss, AdamW, and the engine over them: DeepSpeed
    (ZeRO), or on one fp32 data-parallel rank without PP the optimizer itself
    (`LocalEngine`).

    """
    spec = model_spec(cfg, vocab_size)
    compiled = compile_wanted(cfg.train.compile, device)
    chunks = [NextLatTrainModule(model, loss_config(cfg, compiled))
              for model in build_model_chunks(spec, device)]
    if compiled:
        for chunk in chunks:
            compile_layers(chunk.model)
            compile_psi(chunk.model)
    if torch.distributed.get_backend() != "nccl":
        # gloo pairs point-to-point messages by posting order. megatron's batched
        # isend/irecv can then hand a backward gradient to a forward receive of the same
        # shape when both directions run between the same two ranks (interleaved PP=2):
        # silently wrong losses. Unbatched, megatron orders the ops by rank parity.
        for chunk in chunks:
            chunk.config.batch_p2p_comm = False
    if cfg.parallel.sp:
        for chunk in chunks:
            register_sequence_parallel_grad_hooks(chunk)
    module = chunks[0] if len(chunks) == 1 else torch.nn.ModuleList(chunks)
    optimizer = build_optimizer(module, cfg.train)
    bf16 = spec.params_dtype == torch.bfloat16
    if wants_local_engine(ps.get_data_parallel_world_size(), cfg.parallel.pp, bf16):
        return chunks, LocalEngine(module, optimizer, cfg.train.grad_clip)
    engine = build_engine(module, optimizer, cfg.parallel.zero_stage,
                          cfg.train.micro_batch_size, cfg.train.grad_clip, bf16=bf16,
                          grad_accum_dtype=resolved_grad_accum_dtype(cfg))
    if cfg.parallel.pp == 1:
        # Let megatron's schedule tell DeepSpeed which micro-batch ends the accumulation.
        chunks[0].config.no_sync_func = no_sync_func(engine)
    return chunks, engine
