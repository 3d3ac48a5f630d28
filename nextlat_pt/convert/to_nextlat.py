"""`nextlat-pt convert --to nextlat`: a Hugging Face Llama folder -> a nextlat_pt checkpoint
for continued pretraining.

    OUT_DIR/                      a step directory, usable as `checkpoint.load=OUT_DIR`
      model/                      megatron dist_checkpointing weights (any TP/PP loads them)
      config.yaml                 the model as our config, plus the given overrides
      trainer_state.json          step 0, the tokenizer's fingerprint, a "converted" layout
      tokenizer.model             the folder's sentencepiece model
      COMPLETE                    sha256 of every file, written last

ψ comes from the folder's `nextlat_dynamics.safetensors` when there is one (our exports) and
is freshly initialised from `run.seed` otherwise. The checkpoint holds no optimizer or RNG
state: its recorded layout never equals a run's, so `train` loads it as weights only
("weights resharded; the optimizer state and RNG streams start fresh").

The vocabulary is padded for `parallel.tp` as given here; a run must use a TP whose padding
gives the same size (the same rule as for any checkpoint of ours).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nextlat_pt.checkpointing.format import FORMAT_VERSION, write_marker
from nextlat_pt.config import Config, ConfigError, load_config, save_config, validate
from nextlat_pt.convert import llama_mapping as lm
from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.convert.hf_config import model_overrides, shape_from_llama
from nextlat_pt.convert.hf_weights import HFWeights
from nextlat_pt.convert.jtp_file import load_fetch
from nextlat_pt.convert.mtp_file import load_mtp_heads
from nextlat_pt.convert.out_dir import finish_out_dir, prepare_out_dir
from nextlat_pt.convert.psi_file import load_psi
from nextlat_pt.convert.to_hf import EXPORT_INFO
from nextlat_pt.convert.world import single_process_world
from nextlat_pt.data.tokenizer import MODEL_FILE_NAME, Tokenizer
from nextlat_pt.model.shape import ModelShape

# Sections of an exported training config that describe the old run, not this model.
_RESET_SECTIONS = ("checkpoint",)


@dataclass
class ImportResult:
    """What `import_from_hf` wrote."""

    out_dir: Path
    config: Config
    psi: str  # "loaded", "fresh" or "none"


def _check_hf_dir(hf_dir: Path) -> None:
    if not hf_dir.exists():
        raise ConvertError(f"{hf_dir} does not exist")
    if not hf_dir.is_dir():
        raise ConvertError(f"{hf_dir} is not a directory; give a Hugging Face model folder")
    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"{hf_dir} has no config.json; it is not a Hugging Face model "
                           f"folder (a nextlat_pt checkpoint converts with --to hf)")
    if not (hf_dir / MODEL_FILE_NAME).is_file():
        raise ConvertError(f"{hf_dir} has no {MODEL_FILE_NAME} (a sentencepiece model): "
                           f"nextlat_pt trains with sentencepiece and cannot use a "
                           f"tokenizer.json-only tokenizer")


def _base_config(hf_dir: Path) -> dict[str, Any]:
    """The training config our export recorded (so a round trip keeps the NextLat settings
    and seq_len), without the parts that describe the old run; {} for a foreign folder."""
    info_path = hf_dir / EXPORT_INFO
    if not info_path.is_file():
        return {}
    config = dict(json.loads(info_path.read_text()).get("training_config") or {})
    for section in _RESET_SECTIONS:
        config.pop(section, None)
    config.pop("parallel", None)  # the layout comes from this command's overrides
    config["run"] = {k: v for k, v in (config.get("run") or {}).items() if k != "dir"}
    data = dict(config.get("data") or {})
    for key in ("train", "valid", "tokenizer", "cache_dir"):
        data.pop(key, None)
    config["data"] = data
    return config


def build_config(hf_dir: Path, shape: ModelShape, overrides: list[str], out_dir: Path,
                 psi_width: int | None) -> Config:
    """Our config for the folder's model: the recorded training config (if any), the
    architecture from config.json, then the user's overrides (which may not contradict
    the architecture)."""
    arch = model_overrides(shape)
    if psi_width is not None:
        arch["nextlat.psi_width"] = psi_width
    for text in overrides:
        key, _, value = text.partition("=")
        if key.strip() in arch:
            given = yaml.safe_load(value)
            if given != arch[key.strip()]:
                raise ConvertError(f"{key.strip()}={value} contradicts the folder's model "
                                   f"({arch[key.strip()]}); drop that override")
    base = _base_config(hf_dir)
    base.setdefault("data", {})["tokenizer"] = str((out_dir / MODEL_FILE_NAME).resolve())
    seq_len = (base.get("model") or {}).get("seq_len", Config().model.seq_len)
    arch_list = [f"{k}={json.dumps(v)}" for k, v in arch.items()]
    if seq_len > shape.max_position_embeddings:
        arch_list.append(f"model.seq_len={shape.max_position_embeddings}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(base, f)
        base_path = Path(f.name)
    try:
        cfg = load_config(base_path, arch_list + list(overrides))
        validate(cfg, world_size=cfg.parallel.tp * cfg.parallel.pp)
    except ConfigError as err:
        raise ConvertError(f"config: {err}") from err
    finally:
        base_path.unlink(missing_ok=True)
    return cfg


def _layer_state(prefix: str, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One decoder layer's tensors (keyed as `llama_mapping.LAYER_KEYS`) under our parameter
    names, starting with `prefix`."""
    return {prefix + name: ours[key] for key, name in (
        ("input_norm", "input_layernorm.weight"),
        ("qkv", "self_attention.linear_qkv.weight"),
        ("proj", "self_attention.linear_proj.weight"),
        ("mlp_norm", "pre_mlp_layernorm.weight"),
        ("fc1", "mlp.linear_fc1.weight"),
        ("fc2", "mlp.linear_fc2.weight"))}


def _state_dict_from_hf(weights: HFWeights, shape: ModelShape, padded_vocab: int
                        ) -> dict[str, torch.Tensor]:
    """Our TP=1 parameter names -> tensors."""
    d = {"gpt.embedding.word_embeddings.weight":
         lm.pad_vocab(weights.get("model.embed_tokens.weight"), padded_vocab)}
    for i in range(shape.num_layers):
        names = lm.hf_layer_names(i)
        hf = {n: weights.get(n) for n in names.values()}
        ours = lm.hf_layer_to_megatron(i, hf, shape.num_heads, shape.num_query_groups,
                                       shape.head_dim)
        d.update(_layer_state(f"gpt.decoder.layers.{i}.", ours))
    d["gpt.decoder.final_layernorm.weight"] = weights.get("model.norm.weight")
    if not shape.tie_embeddings:
        d["gpt.output_layer.weight"] = lm.pad_vocab(weights.get("lm_head.weight"), padded_vocab)
    return d


def _check_hf_names(weights: HFWeights, shape: ModelShape) -> None:
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(shape.num_layers):
        expected |= set(lm.hf_layer_names(i).values())
    if not shape.tie_embeddings:
        expected.add("lm_head.weight")
    names = weights.names() - {"lm_head.weight"} if shape.tie_embeddings else weights.names()
    extra = sorted(n for n in names - expected if not n.endswith("rotary_emb.inv_freq"))
    missing = sorted(expected - weights.names())
    if missing:
        raise ConvertError(f"the weights lack {', '.join(missing[:4])}"
                           f"{' …' if len(missing) > 4 else ''}; incomplete folder?")
    if extra:
        raise ConvertError(f"unsupported architecture: tensors with no counterpart in our GPT: "
                           f"{', '.join(extra[:4])}{' …' if len(extra) > 4 else ''}")


def _mtp_state(hf_dir: Path, shape: ModelShape) -> dict[str, torch.Tensor]:
    """The extra heads' tensors from the folder's mtp_heads.safetensors, as our state dict
    names ({} when the folder has none: the heads stay freshly initialised)."""
    heads = load_mtp_heads(hf_dir, shape) or {}
    state = {}
    for k, tensors in heads.items():
        state.update(_layer_state(f"mtp_heads.layers.{k - 2}.",
                                  {n: t.to(torch.float32) for n, t in tensors.items()}))
    return state


def _build_model(cfg: Config, vocab_size: int, weights: HFWeights, shape: ModelShape,
                 psi: tuple[dict[str, torch.Tensor], dict[str, Any]] | None,
                 hf_dir: Path):
    """Our TP=1 model holding the folder's weights; ψ loaded or fresh, MTP's extra heads (when
    the config has them) loaded from mtp_heads.safetensors or fresh. -> (model, ψ status)"""
    from nextlat_pt.model.gpt import NextLatGPT
    from nextlat_pt.model_from_config import model_spec

    # One process writes the checkpoint; dist_checkpointing makes it loadable by any layout.
    # Only the vocabulary padding depends on the target TP: pad for it here.
    spec = model_spec(cfg, vocab_size)
    spec = dataclasses.replace(
        spec, tp=1, pp=1, vpp=None, sequence_parallel=False, params_dtype=torch.float32,
        attention_backend="sdpa",
        make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by * cfg.parallel.tp)
    model = NextLatGPT(spec)  # ψ, if any, is freshly initialised from run.seed here
    state = _state_dict_from_hf(weights, shape, model.padded_vocab_size)
    psi_status = "none"
    if model.psi is not None:
        psi_status = "fresh"
        if psi is not None:
            state.update({f"psi.{k}": v.to(torch.float32) for k, v in psi[0].items()})
            psi_status = "loaded"
    if model.mtp_heads is not None:
        state.update(_mtp_state(hf_dir, shape))
    if model.jtp_fetch is not None:  # loaded from jtp_fetch.safetensors, or fresh
        state.update({k: v.to(torch.float32) for k, v in load_fetch(hf_dir).items()})
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    for key, tensor in state.items():
        if key not in own:
            raise ConvertError(f"internal: no parameter {key} in the model")
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise ConvertError(f"{key}: the folder's tensor has shape {tuple(tensor.shape)}, "
                               f"the model expects {tuple(own[key].shape)}")
    not_set = sorted(k for k in own if k not in state
                     and not k.startswith(("psi.", "mtp_heads.", "jtp_fetch.")))
    if not_set:
        raise ConvertError(f"internal: parameters not converted: {not_set[:4]}")
    model.load_state_dict(state, strict=False)
    return model, psi_status


def import_from_hf(hf_dir: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
                   *, force: bool = False) -> ImportResult:
    """Convert the Llama folder `hf_dir` into a nextlat_pt checkpoint at `out_dir`."""
    from megatron.core import dist_checkpointing
    from transformers import AutoConfig

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    _check_hf_dir(hf_dir)
    try:
        hf_config = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    except Exception as err:  # transformers raises ValueError/OSError/KeyError variously
        raise ConvertError(f"{hf_dir}/config.json cannot be read ({err})") from err
    shape = shape_from_llama(hf_config)
    weights = HFWeights(hf_dir)
    _check_hf_names(weights, shape)
    tokenizer = Tokenizer.load(hf_dir / MODEL_FILE_NAME)
    if tokenizer.vocab_size != shape.vocab_size:
        raise ConvertError(f"{hf_dir}: {MODEL_FILE_NAME} has {tokenizer.vocab_size} tokens but "
                           f"config.json's vocab_size is {shape.vocab_size}; not supported")
    psi = load_psi(hf_dir)
    psi_width = int(psi[0]["fc1.weight"].shape[0]) if psi is not None else None
    cfg = build_config(hf_dir, shape, list(overrides or []), out_dir, psi_width)

    with single_process_world(cfg.run.seed):
        model, psi_status = _build_model(cfg, tokenizer.vocab_size, weights, shape, psi,
                                         hf_dir)

    tmp = prepare_out_dir(out_dir, force)
    try:
        (tmp / "model").mkdir()
        dist_checkpointing.save(model.sharded_state_dict(), str(tmp / "model"))
        shutil.copyfile(hf_dir / MODEL_FILE_NAME, tmp / MODEL_FILE_NAME)
        save_config(cfg, tmp / "config.yaml")
        trainer_state = _trainer_state(cfg, tokenizer, out_dir, hf_dir)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        write_marker(tmp, step=0)
        finish_out_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportResult(out_dir=out_dir, config=cfg, psi=psi_status)


def _trainer_state(cfg: Config, tokenizer: Tokenizer, out_dir: Path, hf_dir: Path
                   ) -> dict[str, Any]:
    info_path = hf_dir / EXPORT_INFO
    source = json.loads(info_path.read_text()) if info_path.is_file() else {}
    p = cfg.parallel
    return {
        "step": 0,
        "consumed_samples": 0,
        "tokens_seen": 0,
        "tokenizer": {"path": str((out_dir / MODEL_FILE_NAME).resolve()),
                      "fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size},
        "data": None,
        "wandb_id": None,
        "last_metrics": None,
        "converted_from": {"hf_dir": str(hf_dir.resolve()), "step": source.get("step"),
                           "tokens_seen": source.get("tokens_seen"),
                           "source": source.get("source")},
        "format_version": FORMAT_VERSION,
        # Never equal to a run's layout (the extra key): `train` loads weights only, since
        # there is no optimizer or RNG state to restore.
        "layout": {"tp": p.tp, "pp": p.pp, "dp": 1, "vpp": p.vpp, "zero_stage": p.zero_stage,
                   "world_size": p.tp * p.pp, "converted_from_hf": True},
    }
