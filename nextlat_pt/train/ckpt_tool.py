"""`nextlat-pt ckpt list|inspect`: what is in a checkpoint directory, without loading it.

    nextlat-pt ckpt list DIR                          # a run dir, a checkpoints dir or a step
    nextlat-pt ckpt inspect STEP_DIR [CONFIG] [k=v]   # details; config difference if given
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from nextlat_pt.checkpointing.format import (
    MARKER,
    TRAINER_STATE,
    format_version,
    has_portable_optimizer,
    is_complete,
    list_checkpoints,
    read_latest,
)
from nextlat_pt.checkpointing.retention import Verdicts, find_latest_valid
from nextlat_pt.config import ConfigError, load_config

# nextlat_pt.checkpointing imports neither torch nor megatron: listing and inspecting
# checkpoints answers in well under a second.


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TB"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _checkpoints_root(path: Path) -> Path:
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    return path


def _status(ckpt: Path, verify: bool, verdicts: Verdicts | None = None) -> str:
    if ckpt.name.endswith(".tmp"):
        return "interrupted save"
    if not is_complete(ckpt):
        return f"incomplete (no {MARKER})"
    if verify:
        problem = (verdicts or Verdicts()).problem(ckpt)
        if problem:
            return f"corrupt: {problem.split(': ', 1)[-1]}"
    return "complete"


def _layout(state: dict[str, Any]) -> str:
    lay = state.get("layout") or {}
    if not lay:
        return "?"
    text = f"tp{lay.get('tp')} pp{lay.get('pp')} dp{lay.get('dp')}"
    if lay.get("vpp"):
        text += f" vpp{lay['vpp']}"
    return text + f" zero{lay.get('zero_stage')}"


def _state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / TRAINER_STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _optimizer_kind(state: dict[str, Any]) -> str:
    """What a resume on another layout gets of the optimizer state."""
    if (state.get("layout") or {}).get("converted_from_hf"):
        return "none (converted from Hugging Face: weights only)"
    if has_portable_optimizer(state):
        return "layout-independent (any layout resumes with masters and moments)"
    return "tied to its layout (another layout starts the moments fresh)"


def list_main(argv: list[str]) -> int:
    """`ckpt list DIR [--verify]`: one aligned row per step directory, then which checkpoint
    a relaunch would resume from. Exit code 1 when --verify finds a corrupt checkpoint."""
    parser = argparse.ArgumentParser(prog="nextlat-pt ckpt list", description=LIST_HELP)
    parser.add_argument("dir", type=Path, help="a run directory, its checkpoints directory "
                                               "or one step directory")
    parser.add_argument("--verify", action="store_true",
                        help="check every file's sha256 against the COMPLETE marker; exit 1 "
                             "if any checkpoint fails")
    args = parser.parse_args(argv)
    root = _checkpoints_root(args.dir)
    if is_complete(root) or root.name.startswith("step_"):
        ckpts = [root]
        root = root.parent
    else:
        ckpts = list_checkpoints(root)
    if not ckpts:
        print(f"nextlat-pt: error: no checkpoints under {args.dir}", file=sys.stderr)
        return 2
    verdicts = Verdicts()
    latest = read_latest(root)
    rows = [("step", "status", "layout", "size", "name")]
    details = []
    for ckpt in ckpts:
        state = _state(ckpt)
        status = _status(ckpt, args.verify, verdicts)
        if status.startswith("corrupt: "):
            details.append(f"{ckpt.name}: {status.removeprefix('corrupt: ')}")
            status = "corrupt"
        rows.append((str(state.get("step", "?")), status, _layout(state),
                     _human(_dir_size(ckpt)),
                     ckpt.name + ("  <- latest" if ckpt.name == latest else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  "
              f"{row[3]:>{widths[3]}}  {row[4]}".rstrip())
    for line in details:
        print(line)
    print(_resume_line(root, ckpts, args.verify, verdicts, latest))
    return 1 if details else 0


def _resume_line(root: Path, ckpts: list[Path], verified: bool, verdicts: Verdicts,
                 latest: str) -> str:
    """Which checkpoint a relaunch of the run would start from, as `train` decides."""
    if not verified:
        newest = next((c for c in reversed(ckpts) if is_complete(c)), None)
        if newest is None:
            return "a relaunch would start from step 0 (no complete checkpoint)"
        return (f"a relaunch would resume from {newest.name} if its checksums pass (check "
                f"with --verify)")
    warnings: list[str] = []
    chosen = find_latest_valid(root, warnings.append, verdicts)
    pointer = "".join(f"{w}\n" for w in warnings if w.startswith(str(root / "latest")))
    if chosen is None:
        return f"{pointer}a relaunch would start from step 0: no checkpoint passes verification"
    note = f" (latest names {latest}, which it skips)" if latest and latest != chosen.name \
        and (root / latest).is_dir() else ""
    return f"{pointer}a relaunch would resume from {chosen.name}{note}"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def inspect_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nextlat-pt ckpt inspect")
    parser.add_argument("ckpt", type=Path, help="a step directory (…/checkpoints/step_N)")
    parser.add_argument("config", nargs="?", help="a config (YAML or name) to compare with")
    parser.add_argument("overrides", nargs="*", help="section.key=value for that config")
    args = parser.parse_args(argv)
    ckpt: Path = args.ckpt
    if not (ckpt / "trainer_state.json").is_file() and not is_complete(ckpt):
        print(f"nextlat-pt: error: {ckpt} is not a checkpoint step directory "
              f"(no trainer_state.json); try `nextlat-pt ckpt list {ckpt}`", file=sys.stderr)
        return 2
    state = _state(ckpt)
    print(f"checkpoint      {ckpt}")
    print(f"status          {_status(ckpt, verify=True)}")
    print(f"step            {state.get('step')}")
    print(f"consumed        {state.get('consumed_samples')} samples, "
          f"{state.get('tokens_seen')} tokens")
    print(f"layout          {_layout(state)} (world {state.get('layout', {}).get('world_size')})")
    print(f"format          {format_version(state)}; optimizer state {_optimizer_kind(state)}")
    tok = state.get("tokenizer", {})
    print(f"tokenizer       {tok.get('path')} (vocab {tok.get('vocab_size')}, "
          f"fingerprint {str(tok.get('fingerprint'))[:16]}…)")
    for part in ("model", "optim", "rng"):
        if (ckpt / part).is_dir():
            print(f"size {part:<10} {_human(_dir_size(ckpt / part))}")
    print(f"size total      {_human(_dir_size(ckpt))}")
    metrics = state.get("last_metrics") or {}
    shown = {k: metrics[k] for k in ("loss", "ce", "latent", "kl", "lr") if metrics.get(k)
             is not None}
    print(f"last metrics    {shown}")
    if args.config is not None or args.overrides:
        config_arg = args.config
        overrides = list(args.overrides)
        if config_arg is not None and "=" in config_arg:
            overrides.insert(0, config_arg)
            config_arg = None
        try:
            other = load_config(config_arg, overrides).to_dict()
        except ConfigError as err:
            print(f"nextlat-pt: config error: {err}", file=sys.stderr)
            return 2
        saved = _flatten(yaml.safe_load((ckpt / "config.yaml").read_text()))
        given = _flatten(other)
        diff = [(k, saved.get(k), given.get(k)) for k in sorted(set(saved) | set(given))
                if saved.get(k) != given.get(k)]
        print(f"config difference ({len(diff)} keys; checkpoint -> given):")
        for key, before, after in diff:
            print(f"  {key}: {before!r} -> {after!r}")
    return 0


LIST_HELP = "steps, status, layout and sizes; which checkpoint a relaunch would resume from"
INSPECT_HELP = ("one checkpoint in detail; with a config (and k=v overrides), the keys that "
                "differ from the checkpoint's")


def main(argv: list[str]) -> int:
    """Dispatch `ckpt list` / `ckpt inspect` (`ckpt --help` lists both)."""
    if argv and argv[0] == "list":
        return list_main(argv[1:])
    if argv and argv[0] == "inspect":
        return inspect_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="nextlat-pt ckpt", description="Look at checkpoints without loading them.",
        epilog="nextlat-pt ckpt list DIR [--verify]\n"
               "nextlat-pt ckpt inspect STEP_DIR [CONFIG] [section.key=value ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{list,inspect}")
    commands.add_parser("list", help=LIST_HELP, add_help=False)
    commands.add_parser("inspect", help=INSPECT_HELP, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    print(f"nextlat-pt: error: ckpt knows list and inspect, got {argv[0]!r}; see "
          f"`nextlat-pt ckpt --help`", file=sys.stderr)
    return 2
