"""`nextlat-pt convert --to hf`: a nextlat_pt checkpoint (any TP/PP layout) -> one Hugging Face
`LlamaForCausalLM` folder.

    OUT_DIR/
      config.json, generation_config.json       LlamaForCausalLM
      model.safetensors | model-*-of-*.safetensors + model.safetensors.index.json
      tokenizer.json, tokenizer_config.json     AutoTokenizer; encodes exactly like ...
      tokenizer.model                           ... the training sentencepiece model
      nextlat_dynamics.safetensors / .json      ψ and its config (NextLat runs only)
      nextlat_export.json                       provenance: step, tokens, metrics, config
      README.md                                 the model card

The weights are read straight from the dist_checkpointing files, one decoder layer at a time
(`megatron_reader.py`), so memory stays bounded by one safetensors shard. The folder is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nextlat_pt import __version__
from nextlat_pt.convert import llama_mapping as lm
from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.convert.hf_config import llama_config, shape_from_config
from nextlat_pt.convert.hf_tokenizer import check_parity, probe_texts, save_hf_tokenizer
from nextlat_pt.convert.jtp_file import PREFIX as JTP_PREFIX
from nextlat_pt.convert.jtp_file import checkpoint_has_fetch, export_fetch
from nextlat_pt.convert.megatron_reader import MegatronCheckpointReader
from nextlat_pt.convert.model_card import model_card
from nextlat_pt.convert.mtp_file import export_mtp_heads, head_count
from nextlat_pt.convert.out_dir import finish_out_dir, prepare_out_dir
from nextlat_pt.convert.psi_file import psi_config, save_psi
from nextlat_pt.convert.safetensors_writer import TensorGroup, write_safetensors
from nextlat_pt.convert.source import NextLatCheckpoint, open_checkpoint
from nextlat_pt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from nextlat_pt.model.shape import ModelShape

EXPORT_INFO = "nextlat_export.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Tensors a Llama-shaped GPT checkpoint may hold; anything else is an architecture we do not
# export (biases, MoE experts, extra heads...).
_KNOWN = {lm.EMBEDDING, lm.FINAL_NORM, lm.OUTPUT_LAYER, *lm.LAYER_KEYS.values(),
          *lm.PSI_KEYS.values()}


@dataclass
class ExportResult:
    """What `export_to_hf` wrote."""

    out_dir: Path
    files: list[str]
    num_parameters: int
    has_psi: bool
    step: int


def _check_architecture(reader: MegatronCheckpointReader, shape: ModelShape) -> None:
    """The saved tensors must be exactly a Llama of `shape` (+ ψ, + MTP heads, + JTP's
    Fetch): refuse anything else."""
    extra = sorted(k for k in reader.keys()
                   if k not in _KNOWN and not k.startswith(("mtp_heads.layers.", JTP_PREFIX)))
    if extra:
        raise ConvertError(f"unsupported architecture: the checkpoint has tensors with no "
                           f"Llama counterpart: {', '.join(extra[:5])}"
                           f"{' …' if len(extra) > 5 else ''}")
    d, layers = shape.hidden_size, shape.num_layers
    qkv_rows = (shape.num_heads + 2 * shape.num_query_groups) * shape.head_dim
    expected = {
        lm.LAYER_KEYS["qkv"]: (layers, qkv_rows, d),
        lm.LAYER_KEYS["proj"]: (layers, d, shape.num_heads * shape.head_dim),
        lm.LAYER_KEYS["fc1"]: (layers, 2 * shape.ffn_hidden_size, d),
        lm.LAYER_KEYS["fc2"]: (layers, d, shape.ffn_hidden_size),
        lm.LAYER_KEYS["input_norm"]: (layers, d),
        lm.LAYER_KEYS["mlp_norm"]: (layers, d),
        lm.FINAL_NORM: (d,),
    }
    for key, want in expected.items():
        got = reader.info(key).shape
        if got != want:
            raise ConvertError(f"{reader.model_dir}: {key} has shape {got}, but config.yaml "
                               f"describes {want}; the config does not match the weights")
    rows, width = reader.info(lm.EMBEDDING).shape
    if width != d or rows < shape.vocab_size:
        raise ConvertError(f"{reader.model_dir}: the embedding is {rows}×{width}, which "
                           f"cannot hold {shape.vocab_size} tokens of width {d}")
    if not shape.tie_embeddings and not reader.has(lm.OUTPUT_LAYER):
        raise ConvertError(f"{reader.model_dir}: untied embeddings but no output layer saved")


def _tensor_groups(reader: MegatronCheckpointReader, shape: ModelShape,
                   dtype: torch.dtype) -> list[TensorGroup]:
    """The export as groups produced on demand: embedding, each layer, final norm + head."""
    item = torch.empty((), dtype=dtype).element_size()

    def nbytes(*keys: str, per_layer: bool = False) -> int:
        total = 0
        for key in keys:
            dims = reader.info(key).shape[1:] if per_layer else reader.info(key).shape
            total += int(torch.Size(dims).numel())
        return total * item

    vocab, d = shape.vocab_size, shape.hidden_size
    groups = [TensorGroup(
        "embedding", vocab * d * item,
        lambda: {"model.embed_tokens.weight": lm.unpad_vocab(
            reader.read({"w": (lm.EMBEDDING, None)})["w"], vocab)})]

    def layer_group(i: int) -> TensorGroup:
        def produce() -> dict[str, torch.Tensor]:
            tensors = reader.read({name: (key, i) for name, key in lm.LAYER_KEYS.items()})
            return lm.megatron_layer_to_hf(i, tensors, shape.num_heads, shape.num_query_groups,
                                           shape.head_dim)
        return TensorGroup(f"layer {i}", nbytes(*lm.LAYER_KEYS.values(), per_layer=True),
                           produce)

    groups += [layer_group(i) for i in range(shape.num_layers)]

    def final() -> dict[str, torch.Tensor]:
        out = {"model.norm.weight": reader.read({"w": (lm.FINAL_NORM, None)})["w"]}
        if not shape.tie_embeddings:
            head = reader.read({"w": (lm.OUTPUT_LAYER, None)})["w"]
            out["lm_head.weight"] = lm.unpad_vocab(head, vocab)
        return out

    head_bytes = 0 if shape.tie_embeddings else vocab * d * item
    groups.append(TensorGroup("final norm + head", d * item + head_bytes, final))
    return groups


def hf_state_dict(reader: MegatronCheckpointReader, shape: ModelShape,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The whole model as Hugging Face Llama tensors in memory (what the export would write),
    for in-process users such as `nextlat-pt generate`; refuses non-Llama checkpoints."""
    _check_architecture(reader, shape)
    tensors: dict[str, torch.Tensor] = {}
    for group in _tensor_groups(reader, shape, dtype):
        tensors.update({name: t.to(dtype) for name, t in group.produce().items()})
    return tensors


def resolve_tokenizer(ckpt: NextLatCheckpoint, override: str | Path | None) -> Tokenizer:
    """The checkpoint's sentencepiece model (or `override`), checked by fingerprint."""
    recorded = ckpt.state["tokenizer"]
    if override is not None:
        path = Path(override)
        path = path / "tokenizer.model" if path.is_dir() else path
    else:
        found = ckpt.tokenizer_file()
        if found is None:
            raise ConvertError(f"{ckpt.path} holds no tokenizer.model and the one it recorded "
                               f"({recorded.get('path')}) is gone; pass --tokenizer PATH (the "
                               f"tokenizer.model it was trained with)")
        path = found
    if not path.is_file():
        raise ConvertError(f"tokenizer {path} not found")
    tokenizer = Tokenizer.load(path)
    want = recorded.get("fingerprint")
    if want and tokenizer.fingerprint != want:
        raise ConvertError(f"tokenizer {path} (fingerprint {tokenizer.fingerprint[:12]}…) is "
                           f"not the one the checkpoint was trained with ({want[:12]}…)")
    if tokenizer.vocab_size != ckpt.vocab_size:
        raise ConvertError(f"tokenizer {path} has {tokenizer.vocab_size} tokens, the "
                           f"checkpoint {ckpt.vocab_size}")
    return tokenizer


def export_to_hf(src: str | Path, out_dir: str | Path, *, dtype: str = "auto",
                 max_shard_bytes: int = 2 * 10**9, tokenizer: str | Path | None = None,
                 progress: bool = True, force: bool = False,
                 allow_tokenizer_mismatch: bool = False) -> ExportResult:
    """Export the checkpoint at `src` (step, checkpoints or run dir) to `out_dir`."""
    ckpt = open_checkpoint(src)
    reader = MegatronCheckpointReader(ckpt.path / "model")
    shape = shape_from_config(ckpt.config, ckpt.vocab_size)
    _check_architecture(reader, shape)
    sp = resolve_tokenizer(ckpt, tokenizer)
    saved_dtype = reader.info(lm.EMBEDDING).dtype
    if dtype == "auto":
        out_dtype = saved_dtype
    elif dtype in DTYPES:
        out_dtype = DTYPES[dtype]
    else:
        raise ConvertError(f"--dtype {dtype} is not one of auto, {', '.join(DTYPES)}")
    dtype_name = str(out_dtype).removeprefix("torch.")

    out_dir = Path(out_dir)
    tmp = prepare_out_dir(out_dir, force)
    try:
        # The tokenizer first: a mismatch stops the export before the (long) weights.
        save_hf_tokenizer(sp.model_path, tmp, shape.max_position_embeddings)
        try:
            check_parity(tmp, sp.model_path, probe_texts())
        except ConvertError as err:
            if not allow_tokenizer_mismatch:
                raise ConvertError(f"{err} (a unigram model's tie-breaking can differ; pass "
                                   f"--allow-tokenizer-mismatch to export anyway)") from err
            print(f"warning: {err}")
        groups = _tensor_groups(reader, shape, out_dtype)
        write_safetensors(tmp, groups, max_shard_bytes, out_dtype, progress)
        num_parameters = sum(g.nbytes for g in groups) // out_dtype.itemsize
        llama_config(shape, dtype_name).save_pretrained(str(tmp))
        _generation_config().save_pretrained(str(tmp))
        has_psi = reader.has(lm.PSI_KEYS["fc1.weight"])
        if has_psi:
            psi = reader.read({name: (key, None) for name, key in lm.PSI_KEYS.items()})
            width = psi["fc1.weight"].shape[0]
            save_psi(tmp, {k: v.to(out_dtype) for k, v in psi.items()},
                     psi_config(ckpt.config, width))
        heads = head_count(reader.keys())
        if heads > 1:  # beside the Llama (trunk + head 1), as ψ is
            export_mtp_heads(reader, shape, heads, out_dtype, tmp)
        jtp_steps = 0
        if checkpoint_has_fetch(reader.keys()):  # beside the Llama, as ψ is
            export_fetch(reader, ckpt.config, out_dtype, tmp)
            jtp_steps = ckpt.config.jtp_steps
        info = _export_info(ckpt, shape, num_parameters, sp)
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(info, ckpt.config.to_dict(), has_psi,
                                                  mtp_heads=heads, jtp_steps=jtp_steps))
        finish_out_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir=out_dir, files=sorted(p.name for p in out_dir.iterdir()),
                        num_parameters=num_parameters, has_psi=has_psi,
                        step=int(ckpt.state.get("step", 0)))


def final_metrics(ckpt: NextLatCheckpoint) -> dict[str, Any]:
    """The last logged losses up to the checkpoint's step: the trainer state's, completed from
    the run's metrics.jsonl (with PP > 1 the state is written by rank 0, which has no losses;
    metrics.jsonl also has the validation CE)."""
    metrics = {k: v for k, v in (ckpt.state.get("last_metrics") or {}).items() if v is not None}
    step = ckpt.state.get("step", 0)
    for run_dir in (Path(ckpt.config.run_dir), ckpt.path.parent.parent):
        path = run_dir / "metrics.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) > step:
                continue
            for key, value in record.items():
                if value is not None and (key == "val_ce" or "loss" in record):
                    metrics[key] = value
        break
    return metrics


def _generation_config():
    from transformers import GenerationConfig

    # No max_length: transformers warns on every generate(max_new_tokens=...) when the
    # config sets one; the position limit is in config.json.
    return GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)


def _resolved_data(ckpt: NextLatCheckpoint) -> dict[str, Any] | None:
    """The trainer state's data record with its paths made absolute where they still exist
    (`eval` on the export reads the validation split from here)."""
    data = ckpt.state.get("data")
    if not data:
        return data
    valid = ckpt.recorded_path(data.get("valid"))
    sources = [dict(s, path=str((ckpt.recorded_path(s.get("path")) or Path(s["path"]))
                               .resolve())) for s in data.get("sources") or []]
    return dict(data, sources=sources,
                valid=str(valid.resolve()) if valid is not None else data.get("valid"))


def _export_info(ckpt: NextLatCheckpoint, shape: ModelShape, num_parameters: int,
                 sp: Tokenizer) -> dict[str, Any]:
    """Provenance, read back by `convert --to nextlat` and `eval`."""
    state = ckpt.state
    return {
        "format": "nextlat_export/1",
        "nextlat_pt_version": __version__,
        "source": str(ckpt.path.resolve()),
        "run_name": ckpt.config.run.name,
        "step": state.get("step"),
        "tokens_seen": state.get("tokens_seen"),
        "consumed_samples": state.get("consumed_samples"),
        "layout": ckpt.layout,
        "last_metrics": final_metrics(ckpt),
        "tokenizer": {"fingerprint": sp.fingerprint, "vocab_size": sp.vocab_size,
                      "file": "tokenizer.model"},
        "data": _resolved_data(ckpt),
        # The Llama's shape (ψ ships beside it, in its own file).
        "shape": {k: v for k, v in asdict(shape).items() if k != "psi_width"},
        "num_parameters": num_parameters,
        "training_config": ckpt.config.to_dict(),
    }
