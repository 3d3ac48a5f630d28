"""Typed run configuration: dataclasses, YAML files, dotted command-line overrides, validation.

    nextlat-pt train [CONFIG.yaml] [section.key=value ...]

The dataclass defaults are the tiny embedded job (`configs/tiny.yaml` spells out the same
values). `validate()` runs before any process group starts and reports each mistake in one
line that names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nextlat_pt.model.shape import ModelShape, llama_ffn_width, psi_width


class ConfigError(ValueError):
    """A configuration mistake, described in one line with the key and the fix."""


def _key(default: Any, meaning: str) -> Any:
    """A config field with its meaning: the one description `train --print-config` prints
    and the README's key table is generated from (`key_table`)."""
    if isinstance(default, list):
        return field(default_factory=list, metadata={"meaning": meaning})
    return field(default=default, metadata={"meaning": meaning})


@dataclass
class RunConfig:
    name: str = _key("tiny", "the run's name (wandb, the model card); names runs/<name>")
    dir: str = _key("", "the run directory: config.yaml, metrics.jsonl, loss.png, "
                        "checkpoints/; empty: runs/<run.name>")
    seed: int = _key(1234, "seed of the initial weights (per parameter, any layout), the data "
                           "order and dropout")


@dataclass
class ModelConfig:
    num_layers: int = _key(4, "transformer blocks (Llama-style: RMSNorm, SwiGLU, RoPE, no "
                              "biases)")
    hidden_size: int = _key(256, "D, the model width")
    num_heads: int = _key(4, "attention heads")
    num_query_groups: int = _key(0, "key/value heads; fewer than the heads: grouped-query "
                                    "attention; 0: one per head")
    ffn_hidden_size: int = _key(0, "the SwiGLU width; 0: Llama's rule 128·round(8D/3/128)")
    seq_len: int = _key(256, "tokens per training window")
    max_position_embeddings: int = _key(0, "the position limit (RoPE); 0: model.seq_len")
    vocab_size: int = _key(0, "the model's vocabulary (≥ the tokenizer's; e.g. a GPT-2-sized "
                                 "head); 0: the tokenizer's vocabulary")
    make_vocab_size_divisible_by: int = _key(128, "the embedding is padded to a multiple of "
                                                  "this × parallel.tp, as megatron does")
    tie_embeddings: bool = _key(False, "share the input embedding and the LM head (the paper "
                                       "unties them)")
    rotary_base: float = _key(10000.0, "RoPE base frequency")
    norm_eps: float = _key(1e-5, "RMSNorm epsilon")
    init_std: float = _key(0.02, "standard deviation of the normal initial weights")
    hidden_dropout: float = _key(0.0, "dropout after attention and the MLP")
    attention_dropout: float = _key(0.0, "dropout on the attention probabilities")
    attention_backend: str = _key("auto", "auto: flash-attn on CUDA in bf16 when importable, "
                                          "else SDPA; sdpa | flash | local (megatron's) | te")


@dataclass
class NextLatConfig:
    objective: str = _key("nextlat", "nextlat | ntp (plain next-token baseline: no ψ) | mtp "
                                     "(multi-token prediction, Gloeckle et al. 2024: no ψ) | "
                                     "jtp (joint multi-token prediction, Ahn et al. 2025: "
                                     "no ψ, a Fetch module)")
    horizon: int = _key(1, "d, the latent rollout steps of ψ (jtp: the teacher-forced "
                           "steps beyond the next token)")
    lambda_latent: float = _key(1.0, "λ_h, weight of the SmoothL1 latent term")
    lambda_kl: float = _key(1.0, "λ_KL, weight of the KL term through the frozen LM head")
    proj_factor: float = _key(1.0, "ψ's width is 128·round(proj_factor·2D/128)")
    psi_width: int = _key(0, "ψ's width set directly; 0: from nextlat.proj_factor")
    psi_zero_init: bool = _key(False, "ψ's last layer starts at zero, so ψ starts as the "
                                      "identity (the paper does not say; default: normal(0, "
                                      "model.init_std) like the trunk)")
    smooth_l1_beta: float = _key(1.0, "SmoothL1's beta (PyTorch's default)")
    kl_temperature: float = _key(1.0, "temperature of both distributions in the KL")
    detach_next_embedding: bool = _key(False, "stop the auxiliary gradients at ψ's input "
                                              "embedding E(x_{t+1})")
    mask_prompt_in_latent: bool = _key(False, "mask prompt positions in the latent term too "
                                              "(CE and KL always mask them)")
    kl_chunk_tokens: int = _key(1024, "tokens decoded through the frozen head at once: bounds "
                                      "the KL's memory, not a modelling choice")
    mtp_heads: int = _key(2, "mtp: n output heads, head k predicting x_{t+k}; head 1 is the "
                             "trunk's last layer, heads 2..n one extra layer each")
    mtp_recompute_heads: bool = _key(True, "mtp, jtp: keep one extra head's (JTP: step's) "
                                           "logits at a time (its forward is recomputed in "
                                           "backward)")
    jtp_lambda: float = _key(1.0, "jtp: λ, the weight of the d teacher-forced terms' mean "
                                  "(the paper's λ_MTP; 1.0 in its FineWeb runs)")


@dataclass
class TrainConfig:
    max_steps: int = _key(250, "optimizer steps to train; a relaunch resumes up to it")
    micro_batch_size: int = _key(8, "windows per micro-batch on one data-parallel rank")
    global_batch_size: int = _key(8, "windows per step: micro_batch_size × micro-batches × "
                                     "data-parallel size (gradient accumulation)")
    optimizer: str = _key("adamw", "adamw | sgd (plain SGD: exposes gradient-scale errors in "
                                   "tests) | muon (Muon for the decoder's and ψ's hidden "
                                   "matrices, AdamW for the embeddings, the LM head and all "
                                   "1-D parameters; TP 1, ZeRO-1/2)")
    lr: float = _key(2e-3, "peak learning rate, reached after the warmup")
    min_lr: float = _key(2e-4, "the rate at the end of the cosine or wsd decay")
    lr_schedule: str = _key("cosine", "cosine | wsd (warmup-stable-decay) | constant; linear "
                                      "warmup first")
    warmup_steps: int = _key(20, "steps of linear warmup from 0 to train.lr")
    decay_steps: int = _key(0, "wsd: the final steps of linear decay to train.min_lr")
    weight_decay: float = _key(0.1, "AdamW weight decay (matrices only, not norms)")
    beta1: float = _key(0.9, "AdamW β1")
    beta2: float = _key(0.95, "AdamW β2")
    adam_eps: float = _key(1e-8, "AdamW epsilon")
    muon_lr: float = _key(0.0, "train.optimizer=muon: Muon's peak rate, on train.lr's "
                               "schedule; 0: train.lr itself (the paper's App. E, with "
                               "match_rms_adamw)")
    muon_momentum: float = _key(0.95, "Muon's momentum μ")
    muon_nesterov: bool = _key(True, "Muon's Nesterov blend of gradient and momentum")
    muon_ns_steps: int = _key(5, "Newton-Schulz iterations orthogonalising each update")
    muon_adjust_lr: str = _key("match_rms_adamw", "Muon's per-matrix rate: match_rms_adamw "
                                                  "(0.2·√max(A, B)·lr, AdamW's update RMS: "
                                                  "Liu et al. 2025, the paper's choice) | "
                                                  "original (√max(1, A/B)·lr, Keller Jordan's;"
                                                  " wants a larger train.muon_lr, ~0.02)")
    grad_clip: float = _key(1.0, "clip the global gradient norm to this; 0: no clipping")
    eval_interval: int = _key(0, "validate every N steps; 0: only at the end")
    eval_batches: int = _key(8, "validation micro-batches (the first windows of the split)")
    recompute_activations: bool = _key(False, "recompute each layer's activations in the "
                                              "backward pass (memory for compute)")
    compile: str = _key("auto", "torch.compile each decoder layer and the loss's fused "
                                "pieces: auto (on for CUDA, off on CPU, where compiling does "
                                "not pay) | true | false")
    exit_duration_mins: float = _key(0.0, "save and exit with code 75 after this wall time "
                                          "(a Slurm time limit); 0: off")


@dataclass
class ParallelConfig:
    tp: int = _key(1, "tensor-parallel size")
    pp: int = _key(1, "pipeline stages (1F1B schedule)")
    vpp: int = _key(0, "virtual stages per pipeline rank (interleaved 1F1B); 0: off")
    sp: bool = _key(False, "sequence parallelism (needs parallel.tp > 1)")
    zero_stage: int = _key(1, "DeepSpeed ZeRO: 1 (optimizer states), 2 (+ gradients), 3 (+ "
                              "parameters); 1 with parallel.pp > 1")


@dataclass
class PrecisionConfig:
    dtype: str = _key("auto", "auto (bf16 on GPUs that have it, else fp32) | fp32 | bf16 (bf16 "
                              "weights and activations, fp32 master weights)")
    grad_accum_dtype: str = _key("auto", "bf16 runs: the dtype gradients accumulate and are "
                                         "reduced in. fp32 (as Megatron-LM does for bf16): "
                                         "DeepSpeed's bf16 optimizer, fp32 gradient buffers, "
                                         "an fp32 norm; bf16: DeepSpeed's ZeRO optimizer over "
                                         "bf16 gradients (half the gradient memory, lossy "
                                         "accumulation, an fp64 norm pass); auto: fp32, but "
                                         "bf16 with train.optimizer=muon (Muon binds to the "
                                         "ZeRO optimizer's partitions)")


@dataclass
class DataConfig:
    train: list[dict[str, Any]] = _key([], "prepared datasets blended by weight: [{path: DIR, "
                                           "weight: w}, ...]; []: the built-in corpus")
    valid: str = _key("", "a prepared dataset for validation; empty: the first training "
                          "dataset's valid split")
    tokenizer: str = _key("", "tokenizer.model or its directory; empty: the one prepare-data "
                              "stored with the first dataset (fingerprints must match)")
    on_error: str = _key("raise", "raise | skip (corrupt samples skipped and counted)")
    prefetch: int = _key(2, "global batches read ahead in a background thread")
    builtin_vocab_size: int = _key(4096, "the built-in corpus's tokenizer vocabulary")
    cache_dir: str = _key("", "where the built-in corpus is cached; empty: runs/.cache")


@dataclass
class LoggingConfig:
    interval: int = _key(10, "a progress line and a metrics.jsonl record every N steps")
    wandb: str = _key("offline", "offline | online | disabled")
    wandb_project: str = _key("nextlat_pt", "the wandb project")
    plot: bool = _key(True, "write loss.png when the run ends")


@dataclass
class CheckpointConfig:
    interval: int = _key(0, "save every N steps; 0: only at the end (and when stopped)")
    dir: str = _key("", "where checkpoints go; empty: <run.dir>/checkpoints")
    keep: int = _key(3, "keep the newest N checkpoints that pass verification; 0: all")
    async_save: bool = _key(False, "write in background processes while training goes on")
    resume: bool = _key(True, "continue from the newest usable checkpoint in checkpoint.dir")
    load: str = _key("", "start from another run's checkpoint: a run, checkpoints or step "
                         "directory")
    load_weights_only: bool = _key(False, "with checkpoint.load: weights only (fine-tuning); "
                                          "optimizer, RNG and data position start fresh")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    nextlat: NextLatConfig = field(default_factory=NextLatConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    # ---- derived values (never stored in YAML) ----
    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir or f"runs/{self.run.name}")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.run_dir / "checkpoints"

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir or "runs/.cache")

    @property
    def num_query_groups(self) -> int:
        return self.model.num_query_groups or self.model.num_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.model.ffn_hidden_size or llama_ffn_width(self.model.hidden_size)

    @property
    def max_position_embeddings(self) -> int:
        return self.model.max_position_embeddings or self.model.seq_len

    @property
    def uses_psi(self) -> bool:
        """ψ exists only for the NextLat objective with a non-zero auxiliary weight."""
        n = self.nextlat
        return n.objective == "nextlat" and (n.lambda_latent > 0 or n.lambda_kl > 0)

    @property
    def mtp_heads(self) -> int:
        """n, the output heads: `nextlat.mtp_heads` for the MTP objective, else 1."""
        return self.nextlat.mtp_heads if self.nextlat.objective == "mtp" else 1

    @property
    def jtp_steps(self) -> int:
        """d of JTP's Fetch: `nextlat.horizon` for the JTP objective, else 0 (no Fetch)."""
        return self.nextlat.horizon if self.nextlat.objective == "jtp" else 0

    @property
    def psi_width(self) -> int:
        return self.nextlat.psi_width or psi_width(self.model.hidden_size,
                                                   self.nextlat.proj_factor)

    def model_shape(self, vocab_size: int) -> ModelShape:
        """The network's shape with every automatic (0) value resolved; `vocab_size`: the
        tokenizer's, which `model.vocab_size` may only enlarge. ψ's width is 0 without ψ."""
        m = self.model
        if m.vocab_size and m.vocab_size < vocab_size:
            raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the "
                              f"tokenizer's vocabulary ({vocab_size}); set it to 0 (the "
                              f"tokenizer's) or at least {vocab_size}")
        return ModelShape(
            num_layers=m.num_layers, hidden_size=m.hidden_size, num_heads=m.num_heads,
            num_query_groups=self.num_query_groups, ffn_hidden_size=self.ffn_hidden_size,
            vocab_size=m.vocab_size or vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            tie_embeddings=m.tie_embeddings, rotary_base=m.rotary_base, norm_eps=m.norm_eps,
            psi_width=self.psi_width if self.uses_psi else 0,
            mtp_heads=self.mtp_heads, jtp_steps=self.jtp_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}


# ---------------------------------------------------------------------------------------------
# Loading: YAML + overrides
# ---------------------------------------------------------------------------------------------


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(options)}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _coerce_sources(key: str, value: Any) -> list[dict[str, Any]]:
    """A list of {path, weight} (a bare path, or a list of paths, means weight 1 each)."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else [value]
    sources = []
    for item in items:
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) \
                or not item["path"]:
            raise ConfigError(
                f"{key}: expected a list of {{path: DIR, weight: w}}, got {item!r}"
            )
        unknown = set(item) - {"path", "weight"}
        if unknown:
            raise ConfigError(f"{key}: unknown field(s) {sorted(unknown)} in {item!r}; "
                              f"each source has path and weight")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise ConfigError(f"{key}: the weight of {item['path']} must be a positive number, "
                              f"got {weight!r}")
        sources.append({"path": item["path"], "weight": float(weight)})
    return sources


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check/convert a YAML or CLI value to the field's declared type.

    YAML reads `3e-4` (no dot) as a string, so numeric strings are accepted for numbers.
    """
    origin = typing.get_origin(typ)
    if origin is list:
        return _coerce_sources(key, value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(value, str) and typ in (int, float) and _number(value) is not None:
        value = _number(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        if isinstance(value, bool):  # `compile: true` in a YAML file
            return str(value).lower()
        return "" if value is None else str(value)
    return value


def _apply(cfg: Config, section: str, key: str, value: Any, raw: str | None = None) -> None:
    """Set one key. `raw` is the override's text, kept verbatim for string fields."""
    sections = list(SECTIONS)
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section '{section}'{_closest(section, sections)}")
    sec_obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(sec_obj))
    if key not in hints:
        full = [f"{section}.{k}" for k in hints]
        guess = _closest(f"{section}.{key}", full)
        raise ConfigError(f"unknown config key '{section}.{key}'{guess}")
    if hints[key] is str and raw is not None:
        value = raw
    setattr(sec_obj, key, _coerce(f"{section}.{key}", value, hints[key]))


def _apply_mapping(cfg: Config, data: dict[str, Any], source: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown config section '{section}'{_closest(section, list(SECTIONS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of key: value")
        for key, value in values.items():
            _apply(cfg, section, key, value)


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.key=value' -> (section, key, value); the value is parsed as YAML.

    String fields take the text as typed instead (see `_apply`).
    """
    if "=" not in text:
        raise ConfigError(
            f"override '{text}' is not of the form section.key=value (e.g. train.max_steps=100)"
        )
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"override '{text}': the key must be section.key (e.g. model.num_layers=2)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts[0], parts[1], value


def find_config_file(name_or_path: str) -> Path:
    """A YAML path, or a bare name ('tiny', '1b') looked up in the project's configs/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist; check the path")
        return path
    candidate = Path(__file__).resolve().parent.parent / "configs" / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(f"config '{name_or_path}' is neither a YAML file nor a name in configs/")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then the dotted overrides, in that order."""
    cfg = Config()
    if path is not None:
        file = find_config_file(str(path))
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"{file}: not valid YAML{where}: {problem}") from err
        _apply_mapping(cfg, data, str(file))
    for text in overrides or []:
        section, key, value = parse_override(text)
        _apply(cfg, section, key, value, raw=text.split("=", 1)[1].strip())
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

_CHOICES = {
    "model.attention_backend": ("auto", "sdpa", "flash", "local", "te"),
    "nextlat.objective": ("nextlat", "ntp", "mtp", "jtp"),
    "train.lr_schedule": ("cosine", "wsd", "constant"),
    "train.optimizer": ("adamw", "sgd", "muon"),
    "train.muon_adjust_lr": ("match_rms_adamw", "original"),
    "train.compile": ("auto", "true", "false"),
    "parallel.zero_stage": (1, 2, 3),
    "precision.dtype": ("auto", "fp32", "bf16"),
    "precision.grad_accum_dtype": ("auto", "fp32", "bf16"),
    "logging.wandb": ("offline", "online", "disabled"),
    "data.on_error": ("raise", "skip"),
}


def validate(cfg: Config, world_size: int | None = None) -> None:
    """Raise ConfigError on the first mistake. `world_size` defaults to $WORLD_SIZE or 1."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    _check_choices_and_ranges(cfg)
    _check_shape(cfg)
    _check_nextlat(cfg)
    _check_muon(cfg)
    _check_layout(cfg, world_size)
    _check_schedule_and_checkpoints(cfg)


def _check_choices_and_ranges(cfg: Config) -> None:
    """Every choice key holds one of its choices; counts, rates and dropouts in range."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")

    positive = {
        "model.num_layers": m.num_layers, "model.hidden_size": m.hidden_size,
        "model.num_heads": m.num_heads, "model.seq_len": m.seq_len,
        "train.max_steps": t.max_steps, "train.micro_batch_size": t.micro_batch_size,
        "train.global_batch_size": t.global_batch_size, "parallel.tp": p.tp,
        "parallel.pp": p.pp, "logging.interval": cfg.logging.interval,
        "model.make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1 (got {value})")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be positive (got {t.lr})")
    if not 0 <= t.min_lr <= t.lr:
        raise ConfigError(f"train.min_lr must lie in [0, train.lr={t.lr}] (got {t.min_lr})")
    for key, value in {"model.hidden_dropout": m.hidden_dropout,
                       "model.attention_dropout": m.attention_dropout}.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{key} must lie in [0, 1) (got {value})")


def _check_shape(cfg: Config) -> None:
    """Heads divide the width (even head size for RoPE), groups divide the heads, the
    window fits the position limit."""
    m = cfg.model
    if m.hidden_size % m.num_heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads="
            f"{m.num_heads}; pick a head count that divides the width"
        )
    if (m.hidden_size // m.num_heads) % 2:
        raise ConfigError("model.hidden_size / model.num_heads must be even for RoPE")
    groups = cfg.num_query_groups
    if groups < 1 or m.num_heads % groups:
        raise ConfigError(
            f"model.num_query_groups={m.num_query_groups} must divide model.num_heads="
            f"{m.num_heads} (0 means one group per head)"
        )
    if m.seq_len > cfg.max_position_embeddings:
        raise ConfigError(
            f"model.seq_len={m.seq_len} exceeds the position limit "
            f"model.max_position_embeddings={cfg.max_position_embeddings}; lower seq_len or "
            f"raise max_position_embeddings"
        )


def _check_nextlat(cfg: Config) -> None:
    """The horizon fits the window; the weights, β, temperature, KL chunk and ψ's width are
    in range."""
    m, n = cfg.model, cfg.nextlat
    if n.horizon < 1:
        raise ConfigError(
            f"nextlat.horizon must be at least 1 (got {n.horizon}); use nextlat.objective=ntp "
            f"for the plain next-token baseline"
        )
    if n.horizon >= m.seq_len:
        raise ConfigError(
            f"nextlat.horizon={n.horizon} must be smaller than model.seq_len={m.seq_len}"
        )
    for key, value in {"nextlat.lambda_latent": n.lambda_latent,
                       "nextlat.lambda_kl": n.lambda_kl}.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0 (got {value}); the paper uses 0.1 to 2")
    if n.smooth_l1_beta <= 0:
        raise ConfigError(f"nextlat.smooth_l1_beta must be positive (got {n.smooth_l1_beta})")
    if n.kl_temperature <= 0:
        raise ConfigError(f"nextlat.kl_temperature must be positive (got {n.kl_temperature})")
    if n.kl_chunk_tokens < 1:
        raise ConfigError(f"nextlat.kl_chunk_tokens must be at least 1 (got "
                          f"{n.kl_chunk_tokens}); it bounds the KL's memory, 1024 is typical")
    if n.proj_factor <= 0:
        raise ConfigError(f"nextlat.proj_factor must be positive (got {n.proj_factor})")
    if n.psi_width < 0:
        raise ConfigError(f"nextlat.psi_width must be >= 0 (got {n.psi_width}; 0 = automatic)")
    if cfg.uses_psi and cfg.psi_width < 1:
        raise ConfigError(
            f"nextlat.proj_factor={n.proj_factor} gives ψ width 0 for model.hidden_size="
            f"{m.hidden_size}; raise proj_factor or set nextlat.psi_width"
        )
    if n.objective == "mtp":
        if n.mtp_heads < 1:
            raise ConfigError(f"nextlat.mtp_heads must be at least 1 (got {n.mtp_heads}); "
                              f"the paper uses 2 to 8, 1 is plain next-token prediction")
        if n.mtp_heads >= m.seq_len:
            raise ConfigError(f"nextlat.mtp_heads={n.mtp_heads} must be smaller than "
                              f"model.seq_len={m.seq_len}")
    if n.objective == "jtp" and n.jtp_lambda < 0:
        raise ConfigError(f"nextlat.jtp_lambda must be >= 0 (got {n.jtp_lambda}); the paper "
                          f"uses 0.1 to 1")


def _check_muon(cfg: Config) -> None:
    """Muon's momentum, Newton-Schulz steps and rate in range."""
    t = cfg.train
    if not 0 <= t.muon_momentum < 1:
        raise ConfigError(f"train.muon_momentum must lie in [0, 1) (got {t.muon_momentum})")
    if t.muon_ns_steps < 1:
        raise ConfigError(f"train.muon_ns_steps must be at least 1 (got {t.muon_ns_steps})")
    if t.muon_lr < 0:
        raise ConfigError(f"train.muon_lr must be >= 0 (got {t.muon_lr}; 0: train.lr)")


def resolved_grad_accum_dtype(cfg: Config) -> str:
    """`precision.grad_accum_dtype` with `auto` resolved (fp32; bf16 for Muon)."""
    setting = cfg.precision.grad_accum_dtype
    if setting == "auto":
        return "bf16" if cfg.train.optimizer == "muon" else "fp32"
    return setting


def _check_muon_layout(cfg: Config) -> None:
    """Muon orthogonalises whole matrices: layouts that cut them where the step cannot
    gather them back are refused."""
    p = cfg.parallel
    if cfg.train.optimizer != "muon":
        return
    if p.zero_stage == 3:
        raise ConfigError("train.optimizer=muon is not supported with parallel.zero_stage=3 "
                          "(ZeRO-3 partitions each matrix); use parallel.zero_stage=1 or 2")
    if p.tp > 1:
        raise ConfigError(f"train.optimizer=muon is not supported with parallel.tp={p.tp} "
                          f"(TP shards each matrix); use parallel.tp=1")
    if cfg.precision.grad_accum_dtype == "fp32" and cfg.precision.dtype != "fp32":
        raise ConfigError("train.optimizer=muon with bf16 weights needs "
                          "precision.grad_accum_dtype=bf16 or auto (Muon binds to DeepSpeed's "
                          "ZeRO optimizer, which its fp32 accumulation replaces)")


def _check_layout(cfg: Config, world_size: int) -> None:
    """TP divides the heads, groups and widths; the world is a multiple of TP × PP; ZeRO,
    PP, VPP and SP combine as megatron and DeepSpeed allow; the batch splits evenly."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    groups = cfg.num_query_groups
    if m.num_heads % p.tp:
        raise ConfigError(
            f"model.num_heads={m.num_heads} is not divisible by parallel.tp={p.tp}; "
            f"choose a tp that divides the head count"
        )
    if groups % p.tp:
        raise ConfigError(
            f"model.num_query_groups={groups} is not divisible by parallel.tp={p.tp}; "
            f"each TP rank needs whole key/value groups"
        )
    if cfg.ffn_hidden_size < 1:
        raise ConfigError(
            f"the Llama MLP-width rule gives 0 for model.hidden_size={m.hidden_size}; "
            f"set model.ffn_hidden_size"
        )
    if cfg.ffn_hidden_size % p.tp:
        raise ConfigError(
            f"the MLP width {cfg.ffn_hidden_size} is not divisible by parallel.tp={p.tp}; "
            f"set model.ffn_hidden_size to a multiple of tp"
        )
    if cfg.uses_psi and (cfg.psi_width % p.tp or m.hidden_size % p.tp):
        raise ConfigError(
            f"ψ is sharded over TP: its width {cfg.psi_width} and model.hidden_size="
            f"{m.hidden_size} must be divisible by parallel.tp={p.tp}"
        )
    if world_size % (p.tp * p.pp):
        raise ConfigError(
            f"the world size {world_size} is not a multiple of parallel.tp × parallel.pp = "
            f"{p.tp}×{p.pp}; launch a multiple of {p.tp * p.pp} processes"
        )
    dp = world_size // (p.tp * p.pp)
    _check_muon_layout(cfg)
    if p.pp > 1 and p.zero_stage > 1:
        raise ConfigError(
            f"parallel.zero_stage={p.zero_stage} cannot be combined with pipeline parallelism "
            f"(parallel.pp={p.pp}): DeepSpeed shards gradients per micro-batch; use "
            f"parallel.zero_stage=1 or parallel.pp=1"
        )
    if m.num_layers % p.pp:
        raise ConfigError(
            f"model.num_layers={m.num_layers} is not divisible by parallel.pp={p.pp}; "
            f"each pipeline stage needs the same number of layers"
        )
    if p.vpp < 0:
        raise ConfigError(f"parallel.vpp must be >= 0 (got {p.vpp}; 0 = no virtual stages)")
    if p.vpp:
        if p.pp < 2:
            raise ConfigError("parallel.vpp (interleaved virtual stages) needs parallel.pp > 1")
        if m.num_layers % (p.pp * p.vpp):
            raise ConfigError(
                f"model.num_layers={m.num_layers} is not divisible by parallel.pp × "
                f"parallel.vpp = {p.pp * p.vpp}; choose vpp so every virtual stage has layers"
            )
        micro_batches = t.global_batch_size // max(t.micro_batch_size * dp, 1)
        if micro_batches % p.pp:
            raise ConfigError(
                f"interleaved pipelining needs the number of micro-batches per step "
                f"({micro_batches}) to be a multiple of parallel.pp={p.pp}; adjust "
                f"train.global_batch_size"
            )
    if p.sp and p.tp < 2:
        raise ConfigError("parallel.sp (sequence parallelism) needs parallel.tp > 1")
    if p.sp and m.seq_len % p.tp:
        raise ConfigError(
            f"model.seq_len={m.seq_len} must be divisible by parallel.tp={p.tp} for sequence "
            f"parallelism"
        )
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not divisible by "
            f"train.micro_batch_size={t.micro_batch_size} × data-parallel size {dp}"
        )

def _check_schedule_and_checkpoints(cfg: Config) -> None:
    t = cfg.train
    if cfg.checkpoint.keep < 0 or cfg.checkpoint.interval < 0:
        raise ConfigError("checkpoint.keep and checkpoint.interval must be >= 0")
    if t.exit_duration_mins < 0:
        raise ConfigError(f"train.exit_duration_mins must be >= 0 (got {t.exit_duration_mins})")
    if t.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps must be >= 0 (got {t.warmup_steps})")
    if t.lr_schedule == "wsd" and not 0 < t.decay_steps <= t.max_steps - t.warmup_steps:
        raise ConfigError(
            f"train.decay_steps={t.decay_steps} must lie in [1, max_steps - warmup_steps = "
            f"{t.max_steps - t.warmup_steps}] for train.lr_schedule=wsd"
        )


def check_paths(cfg: Config) -> None:
    """Raise ConfigError for a path key that names nothing usable, before anything heavy is
    imported: `data.train`, `data.valid`, `data.tokenizer`, `checkpoint.load`."""
    for i, source in enumerate(cfg.data.train):
        _check_dataset_dir(f"data.train[{i}].path", source["path"])
    if cfg.data.valid:
        _check_dataset_dir("data.valid", cfg.data.valid)
    if cfg.data.tokenizer:
        path = Path(cfg.data.tokenizer)
        if not path.exists():
            raise ConfigError(
                f"data.tokenizer={cfg.data.tokenizer} does not exist; set it to the "
                f"tokenizer.model (or its directory) the data was prepared with, or leave it "
                f"empty to use the one prepare-data stored with the first dataset")
        if path.is_dir() and not (path / "tokenizer.model").is_file():
            raise ConfigError(f"data.tokenizer={cfg.data.tokenizer} is a directory without "
                              f"tokenizer.model; point at the .model file itself")
    if cfg.checkpoint.load and not Path(cfg.checkpoint.load).exists():
        raise ConfigError(f"checkpoint.load={cfg.checkpoint.load} does not exist; give a run "
                          f"directory, its checkpoints directory or one step_N directory")


def _check_dataset_dir(key: str, value: str) -> None:
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{key}={value} does not exist; run `nextlat-pt prepare-data ... "
                          f"--output {value}` or fix the path")
    if not path.is_dir():
        raise ConfigError(f"{key}={value} is a file; give the directory `nextlat-pt "
                          f"prepare-data --output` wrote (or its train/valid split)")


def weight_shape(cfg: Config) -> dict[str, Any]:
    """The resolved settings that fix the shapes of the saved weights: a checkpoint loads only
    into a model that agrees on all of them (ψ's width only when both have ψ)."""
    shape = {
        "model.num_layers": cfg.model.num_layers,
        "model.hidden_size": cfg.model.hidden_size,
        "model.num_heads": cfg.model.num_heads,
        "model.num_query_groups": cfg.num_query_groups,
        "model.ffn_hidden_size": cfg.ffn_hidden_size,
        "model.tie_embeddings": cfg.model.tie_embeddings,
    }
    if cfg.uses_psi:
        shape["nextlat.psi_width"] = cfg.psi_width
    if cfg.mtp_heads > 1:
        shape["nextlat.mtp_heads"] = cfg.mtp_heads
    if cfg.jtp_steps:
        shape["nextlat.horizon"] = cfg.jtp_steps
    return shape
