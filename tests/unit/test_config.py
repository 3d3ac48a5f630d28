"""Run configuration: YAML files, dotted overrides, one-line validation errors, the CLI's
early exit on config mistakes, and derived values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nextlat_pt import cli
from nextlat_pt.config import (
    Config,
    ConfigError,
    find_config_file,
    load_config,
    parse_override,
    save_config,
    validate,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PREFIX = "nextlat-pt: config error:"


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate() reads the world size from the launcher's environment when not given."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)


def _error(fn, *args, **kwargs) -> str:
    """The ConfigError message of fn(*args), checked to be a single line."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"multi-line config error: {message!r}"
    return message


def _assert_contains(message: str, needles: tuple[str, ...]) -> None:
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# ---------------------------------------------------------------- files


def test_tiny_yaml_equals_dataclass_defaults() -> None:
    assert load_config(CONFIGS / "tiny.yaml").to_dict() == Config().to_dict()
    assert load_config("tiny").to_dict() == Config().to_dict()
    assert load_config().to_dict() == Config().to_dict()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.y*ml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path: Path) -> None:
    cfg = load_config(path)
    validate(cfg, world_size=cfg.parallel.tp * cfg.parallel.pp)


def test_find_config_file_resolves_names_and_paths(tmp_path: Path) -> None:
    assert find_config_file("tiny").resolve() == (CONFIGS / "tiny.yaml").resolve()
    own = tmp_path / "mine.yml"
    own.write_text("train:\n  max_steps: 3\n")
    assert find_config_file(str(own)) == own


# ---------------------------------------------------------------- overrides


def test_override_values_are_coerced_to_field_types() -> None:
    cfg = load_config(
        None,
        ["train.max_steps=100", "train.lr=0.0003", "train.min_lr=0", "model.tie_embeddings=true",
         "run.name=exp1", "model.rotary_base=500000", "train.global_batch_size=16.0"],
    )
    assert cfg.train.max_steps == 100 and type(cfg.train.max_steps) is int
    assert cfg.train.lr == pytest.approx(3e-4) and type(cfg.train.lr) is float
    assert cfg.train.min_lr == 0.0 and type(cfg.train.min_lr) is float
    assert cfg.model.tie_embeddings is True
    assert cfg.run.name == "exp1"
    assert cfg.model.rotary_base == 500000.0 and type(cfg.model.rotary_base) is float
    assert cfg.train.global_batch_size == 16 and type(cfg.train.global_batch_size) is int
    assert load_config(None, ["model.tie_embeddings=false"]).model.tie_embeddings is False
    assert load_config(None, ["model.tie_embeddings=True"]).model.tie_embeddings is True


def test_override_exponent_float_without_dot() -> None:
    cfg = load_config(None, ["train.lr=3e-4"])
    assert cfg.train.lr == pytest.approx(3e-4) and type(cfg.train.lr) is float


@pytest.mark.parametrize("raw", ["1.10", "on"])
def test_string_override_keeps_the_text_as_typed(raw: str) -> None:
    assert load_config(None, [f"run.name={raw}"]).run.name == raw


def test_parse_override_splits_section_key_value() -> None:
    assert parse_override("train.max_steps=100") == ("train", "max_steps", 100)
    assert parse_override("run.name=a=b") == ("run", "name", "a=b")
    assert parse_override("data.tokenizer=") == ("data", "tokenizer", "")


def test_later_overrides_win_and_file_beats_defaults(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  max_steps: 42\n  lr: 1.0e-3\nmodel:\n  num_layers: 2\n")
    cfg = load_config(path)
    assert (cfg.train.max_steps, cfg.train.lr, cfg.model.num_layers) == (42, 1e-3, 2)
    assert cfg.model.hidden_size == Config().model.hidden_size  # untouched keys keep defaults

    cfg = load_config(path, ["train.max_steps=7", "model.num_layers=3", "train.max_steps=9"])
    assert cfg.train.max_steps == 9  # the later override wins
    assert cfg.model.num_layers == 3  # the override beats the file
    assert cfg.train.lr == 1e-3  # the file's value stays where not overridden


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        ["run.name=rt", "model.num_layers=2", "train.lr=0.0005", "nextlat.horizon=3",
         "model.tie_embeddings=true", "logging.wandb=disabled", "data.tokenizer=sp.model"],
    )
    path = tmp_path / "resolved.yaml"
    save_config(cfg, path)
    assert load_config(path).to_dict() == cfg.to_dict()
    save_config(Config(), path)
    assert load_config(path).to_dict() == Config().to_dict()


# ---------------------------------------------------------------- one-line error messages

LOAD_ERRORS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unknown_key": (["train.max_step=5"],
                    ("unknown config key 'train.max_step'", "did you mean 'train.max_steps'")),
    "unknown_section": (["modle.num_layers=2"],
                        ("unknown config section 'modle'", "did you mean 'model'")),
    "no_equals": (["train.max_steps"],
                  ("'train.max_steps'", "not of the form section.key=value")),
    "no_section": (["max_steps=5"], ("'max_steps=5'", "the key must be section.key")),
    "too_many_dots": (["train.max.steps=5"], ("the key must be section.key",)),
    "int_type": (["train.max_steps=abc"], ("train.max_steps", "expected an integer", "'abc'")),
    "int_not_whole": (["train.max_steps=1.5"], ("train.max_steps", "expected an integer")),
    "bool_type": (["model.tie_embeddings=maybe"],
                  ("model.tie_embeddings", "expected true or false", "'maybe'")),
    "float_type": (["train.lr=fast"], ("train.lr", "expected a number")),
}


@pytest.mark.parametrize("overrides,needles", list(LOAD_ERRORS.values()), ids=list(LOAD_ERRORS))
def test_load_errors_are_one_line_and_name_the_fix(overrides: list[str],
                                                   needles: tuple[str, ...]) -> None:
    _assert_contains(_error(load_config, None, overrides), needles)


# (overrides, world size, substrings). Each case changes only what its check needs, so that it
# is the first check in validate() to fire.
VALIDATE_ERRORS: dict[str, tuple[list[str], int, tuple[str, ...]]] = {
    "choice_objective": (["nextlat.objective=jtp2"], 1,
                         ("nextlat.objective='jtp2'", "is not one of nextlat, ntp, mtp")),
    "choice_wandb": (["logging.wandb=sometimes"], 1,
                     ("logging.wandb='sometimes'", "offline, online, disabled")),
    "choice_dtype": (["precision.dtype=fp16"], 1, ("precision.dtype='fp16'", "bf16")),
    "not_positive": (["model.num_layers=0"], 1, ("model.num_layers must be at least 1",)),
    "min_lr_above_lr": (["train.min_lr=0.01"], 1,
                        ("train.min_lr must lie in [0, train.lr=0.002]", "got 0.01")),
    "hidden_dropout": (["model.hidden_dropout=1.0"], 1,
                       ("model.hidden_dropout must lie in [0, 1)", "got 1.0")),
    "attention_dropout": (["model.attention_dropout=-0.1"], 1,
                          ("model.attention_dropout must lie in [0, 1)",)),
    "hidden_not_div_heads": (["model.hidden_size=250"], 1,
                             ("model.hidden_size=250 is not divisible by model.num_heads=4",
                              "pick a head count")),
    "groups_not_div_heads": (["model.num_query_groups=3"], 1,
                             ("model.num_query_groups=3 must divide model.num_heads=4",)),
    "seq_len_above_positions": (["model.max_position_embeddings=128", "model.seq_len=256"], 1,
                                ("model.seq_len=256 exceeds the position limit",
                                 "model.max_position_embeddings=128",
                                 "raise max_position_embeddings")),
    "horizon_zero": (["nextlat.horizon=0"], 1,
                     ("nextlat.horizon must be at least 1", "nextlat.objective=ntp")),
    "horizon_ge_seq_len": (["model.seq_len=8", "nextlat.horizon=8"], 1,
                           ("nextlat.horizon=8 must be smaller than model.seq_len=8",)),
    "mtp_heads_zero": (["nextlat.objective=mtp", "nextlat.mtp_heads=0"], 1,
                       ("nextlat.mtp_heads must be at least 1",)),
    "mtp_heads_ge_seq_len": (["nextlat.objective=mtp", "model.seq_len=8", "nextlat.mtp_heads=8"],
                             1, ("nextlat.mtp_heads=8 must be smaller than model.seq_len=8",)),
    "lambda_latent_negative": (["nextlat.lambda_latent=-0.5"], 1,
                               ("nextlat.lambda_latent must be >= 0", "-0.5")),
    "lambda_kl_negative": (["nextlat.lambda_kl=-1"], 1, ("nextlat.lambda_kl must be >= 0",)),
    # D=32: ψ width 128·round(2·32/128) = 128·round(0.5) = 0 (the MLP width is still 128).
    "psi_width_zero": (["model.hidden_size=32"], 1,
                       ("gives ψ width 0", "model.hidden_size=32", "set nextlat.psi_width")),
    "heads_not_div_tp": (["model.num_heads=4", "parallel.tp=3"], 3,
                         ("model.num_heads=4 is not divisible by parallel.tp=3",
                          "choose a tp that divides")),
    "groups_not_div_tp": (["model.num_heads=8", "model.num_query_groups=2", "parallel.tp=4"], 4,
                          ("model.num_query_groups=2 is not divisible by parallel.tp=4",
                           "whole key/value groups")),
    "zero2_with_pp": (["parallel.pp=2", "parallel.zero_stage=2"], 2,
                      ("parallel.zero_stage=2 cannot be combined with pipeline parallelism",
                       "parallel.zero_stage=1")),
    "layers_not_divisible_by_pp": (["parallel.pp=3"], 3,
                                   ("model.num_layers=4 is not divisible by parallel.pp=3",)),
    "vpp_without_pp": (["parallel.vpp=2"], 1, ("needs parallel.pp > 1",)),
    "sp_without_tp": (["parallel.sp=true"], 1, ("parallel.sp", "needs parallel.tp > 1")),
    "zero_stage_0": (["parallel.zero_stage=0"], 1, ("parallel.zero_stage=0",)),
    "wsd_without_decay": (["train.lr_schedule=wsd"], 1, ("train.decay_steps=0",)),
    "world_not_multiple_of_tp": (["parallel.tp=2"], 3,
                                 ("world size 3 is not a multiple of parallel.tp × parallel.pp",
                                  "2×1")),
    "global_not_div_micro": (["train.global_batch_size=12"], 1,
                             ("train.global_batch_size=12 is not divisible by "
                              "train.micro_batch_size=8",)),
}


@pytest.mark.parametrize("overrides,world_size,needles", list(VALIDATE_ERRORS.values()),
                         ids=list(VALIDATE_ERRORS))
def test_validate_errors_are_one_line_and_name_the_fix(overrides: list[str], world_size: int,
                                                       needles: tuple[str, ...]) -> None:
    cfg = load_config(None, overrides)
    _assert_contains(_error(validate, cfg, world_size=world_size), needles)


def test_validate_accepts_good_layouts() -> None:
    validate(Config(), world_size=1)
    validate(load_config(None, ["parallel.tp=2"]), world_size=2)
    validate(load_config(None, ["model.num_heads=8", "model.num_query_groups=2",
                                "parallel.tp=2"]), world_size=2)
    # ψ width 0 only matters when ψ exists.
    validate(load_config(None, ["model.hidden_size=32", "nextlat.objective=ntp"]), world_size=1)
    validate(load_config(None, ["model.hidden_size=32", "nextlat.lambda_latent=0",
                                "nextlat.lambda_kl=0"]), world_size=1)


def test_validate_reads_world_size_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, ["parallel.tp=2"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    validate(cfg)
    monkeypatch.setenv("WORLD_SIZE", "3")
    _assert_contains(_error(validate, cfg), ("world size 3",))


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    _assert_contains(_error(load_config, missing), (str(missing), "does not exist"))
    _assert_contains(_error(load_config, "no_such_config_name"),
                     ("'no_such_config_name'", "neither a YAML file nor a name in configs/"))


def _invalid_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  num_layers: [1, 2\n")
    return path


def test_invalid_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = _invalid_yaml(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML")


def test_invalid_yaml_file_error_is_one_line(tmp_path: Path) -> None:
    _assert_contains(_error(load_config, _invalid_yaml(tmp_path)), ("not valid YAML",))


@pytest.mark.parametrize(
    "text,needles",
    [
        ("model: 5\n", ("section 'model' must be a mapping of key: value",)),
        ("train:\n  - 1\n", ("section 'train' must be a mapping",)),
        ("- a\n- b\n", ("expected a mapping of sections, got list",)),
        ("modle:\n  num_layers: 2\n", ("unknown config section 'modle'", "did you mean 'model'")),
        ("train:\n  max_step: 5\n", ("unknown config key 'train.max_step'",
                                     "did you mean 'train.max_steps'")),
        ("train:\n  max_steps: abc\n", ("train.max_steps: expected an integer",)),
    ],
    ids=["section_scalar", "section_list", "top_level_list", "unknown_section", "unknown_key",
         "wrong_type"],
)
def test_file_structure_errors(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    _assert_contains(_error(load_config, path), needles)


# ---------------------------------------------------------------- CLI


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(PREFIX)
    return lines[0]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "train.max_step=5"], "did you mean 'train.max_steps'"),
        (["train", "tiny", "train.max_step=5"], "did you mean 'train.max_steps'"),
        (["train", "tiny", "model.num_heads=4", "parallel.tp=3"],
         "model.num_heads=4 is not divisible by parallel.tp=3"),
        (["train", "no_such_config_name"], "neither a YAML file nor a name in configs/"),
        (["train", "nextlat.horizon=0"], "nextlat.objective=ntp"),
        (["train", "data.tokenizer=/no/such/tokenizer.model"],
         "data.tokenizer=/no/such/tokenizer.model does not exist"),
    ],
    ids=["bad_key", "named_config_bad_key", "validate_error", "unknown_config", "horizon",
         "missing_tokenizer"],
)
def test_cli_config_error_exits_2_with_one_line(capsys: pytest.CaptureFixture[str],
                                                argv: list[str], needle: str) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert needle in _one_error_line(err)


def test_cli_reports_config_errors_before_importing_megatron() -> None:
    code = (
        "import sys; from nextlat_pt.cli import main; rc = main(['train','train.max_step=5']); "
        "print('megatron' in ' '.join(sys.modules)); sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "SLURM_NTASKS")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == "False"
    errors = [line for line in proc.stderr.splitlines() if line.startswith(PREFIX)]
    assert len(errors) == 1 and "did you mean 'train.max_steps'" in errors[0], proc.stderr


# ---------------------------------------------------------------- derived values


@pytest.mark.parametrize("hidden,ffn", [(256, 640), (2048, 5504)])
def test_ffn_hidden_size_llama_rule(hidden: int, ffn: int) -> None:
    assert load_config(None, [f"model.hidden_size={hidden}"]).ffn_hidden_size == ffn
    explicit = load_config(None, [f"model.hidden_size={hidden}", "model.ffn_hidden_size=1000"])
    assert explicit.ffn_hidden_size == 1000


def test_psi_width() -> None:
    assert Config().psi_width == 512  # D=256, proj_factor 1.0: 128·round(2·256/128)
    assert load_config(None, ["nextlat.proj_factor=0.5"]).psi_width == 256
    assert load_config(None, ["nextlat.psi_width=384"]).psi_width == 384


def test_uses_psi() -> None:
    assert Config().uses_psi is True
    assert load_config(None, ["nextlat.objective=ntp"]).uses_psi is False
    both_zero = ["nextlat.lambda_latent=0", "nextlat.lambda_kl=0"]
    assert load_config(None, both_zero).uses_psi is False
    assert load_config(None, ["nextlat.lambda_latent=0"]).uses_psi is True
    assert load_config(None, ["nextlat.lambda_kl=0"]).uses_psi is True


def test_run_dir_and_other_defaults() -> None:
    cfg = Config()
    assert cfg.run_dir == Path("runs/tiny")
    assert cfg.checkpoint_dir == Path("runs/tiny/checkpoints")
    assert cfg.cache_dir == Path("runs/.cache")
    assert cfg.num_query_groups == cfg.model.num_heads
    assert cfg.max_position_embeddings == cfg.model.seq_len
    assert load_config(None, ["run.name=exp"]).run_dir == Path("runs/exp")
    custom = load_config(None, ["run.dir=/tmp/x", "checkpoint.dir=/tmp/ck"])
    assert custom.run_dir == Path("/tmp/x") and custom.checkpoint_dir == Path("/tmp/ck")


def test_bool_override_accepts_one_and_zero() -> None:
    assert load_config(None, ["model.tie_embeddings=1"]).model.tie_embeddings is True
    assert load_config(None, ["model.tie_embeddings=0"]).model.tie_embeddings is False


def test_mlp_width_rule_giving_zero_is_refused() -> None:
    cfg = load_config(None, ["model.hidden_size=16", "model.num_heads=2",
                             "nextlat.objective=ntp"])
    _assert_contains(_error(validate, cfg, 1), ("model.ffn_hidden_size",))


def test_list_for_a_string_field_in_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  name: [1, 2]\n")
    _assert_contains(_error(load_config, path), ("run.name", "expected a string"))


def test_data_sources_parse_from_overrides_and_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.train=[{path: /a, weight: 0.7}, {path: /b, weight: 3}]"])
    assert cfg.data.train == [{"path": "/a", "weight": 0.7}, {"path": "/b", "weight": 3.0}]
    assert load_config(None, ["data.train=/x"]).data.train == [{"path": "/x", "weight": 1.0}]
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train:\n    - path: /d\n      weight: 2\n")
    assert load_config(path).data.train == [{"path": "/d", "weight": 2.0}]


@pytest.mark.parametrize("value,needle", [
    ("[{path: /a, weight: -1}]", "must be a positive number"),
    ("[{path: /a, wieght: 1}]", "unknown field"),
    ("[{weight: 1}]", "expected a list of {path: DIR, weight: w}"),
])
def test_bad_data_sources_are_refused(value: str, needle: str) -> None:
    _assert_contains(_error(load_config, None, [f"data.train={value}"]), (needle,))


# ---------------------------------------------------------------- paths


def test_path_keys_that_name_nothing_usable_are_one_line(tmp_path) -> None:
    from nextlat_pt.config import check_paths

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (tmp_path / "file.bin").write_text("x")
    (tmp_path / "tok").mkdir()
    check_paths(load_config(None, [f"data.train={data}", f"data.valid={data}"]))  # control
    cases = {
        f"data.tokenizer={tmp_path / 'missing.model'}": ("data.tokenizer=", "does not exist",
                                                          "tokenizer.model"),
        f"data.tokenizer={tmp_path / 'tok'}": ("data.tokenizer=", "without tokenizer.model"),
        f"data.train={tmp_path / 'file.bin'}": ("data.train[0].path=", "is a file",
                                                "prepare-data"),
        f"data.train={tmp_path / 'nope'}": ("data.train[0].path=", "does not exist"),
        f"data.valid={tmp_path / 'file.bin'}": ("data.valid=", "is a file"),
        f"checkpoint.load={tmp_path / 'nope'}": ("checkpoint.load=", "does not exist",
                                                 "run directory"),
    }
    for override, needles in cases.items():
        _assert_contains(_error(check_paths, load_config(None, [override])), needles)


# ---------------------------------------------------------------- key meanings


def test_every_key_has_a_meaning_and_the_readme_table_is_current() -> None:
    from nextlat_pt.config_keys import key_table, keys

    missing = [f"{s}.{k}" for s, k, _, meaning in keys(Config()) if not meaning.strip()]
    assert not missing, f"config fields without a meaning: {missing}"
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- config-keys:start -->\n", 1)[1].split("\n<!-- config-keys:end", 1)[0]
    assert table == key_table(), ("README's key table is stale: regenerate it with "
                                  "`python -m nextlat_pt.config_keys --markdown`")


def test_print_config_shows_every_key_resolved_and_loads_back(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    from nextlat_pt.config_keys import keys

    argv = ["train", "--print-config", "tiny", "model.num_layers=8", "model.num_heads=8"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for section, key, _, meaning in keys(Config()):
        assert f"  {key}: " in out and meaning.split(";")[0] in out, f"{section}.{key}"
    assert "num_query_groups: 0" in out and "# -> 8; key/value heads" in out  # resolved 0
    saved = tmp_path / "printed.yaml"
    saved.write_text(out)
    assert load_config(saved) == load_config("tiny", argv[3:])


def test_model_shape_resolves_every_automatic_value() -> None:
    """One resolution of the shape: the width rules, GQA's default, the position limit, ψ."""
    shape = load_config(None, ["model.hidden_size=384", "model.num_heads=6"]).model_shape(1000)
    assert shape.ffn_hidden_size == 128 * round(8 * 384 / 3 / 128)
    assert shape.num_query_groups == 6 and shape.head_dim == 64
    assert shape.max_position_embeddings == 256 and shape.vocab_size == 1000
    assert shape.psi_width == 768
    assert load_config(None, ["nextlat.objective=ntp"]).model_shape(1000).psi_width == 0


def test_model_vocab_size_enlarges_the_tokenizers_and_never_shrinks_it() -> None:
    assert load_config(None, ["model.vocab_size=50257"]).model_shape(4096).vocab_size == 50257
    with pytest.raises(ConfigError, match=r"model.vocab_size=100 is smaller than the "
                                          r"tokenizer's vocabulary \(4096\)"):
        load_config(None, ["model.vocab_size=100"]).model_shape(4096)
