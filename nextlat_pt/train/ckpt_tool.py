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

from nextlat_pt.config import ConfigError, load_config
from nextlat_pt.train.checkpoint import (
    MARKER,
    CheckpointError,
    is_complete,
    list_checkpoints,
    verify_checksums,
)


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


def _status(ckpt: Path, verify: bool) -> str:
    if ckpt.name.endswith(".tmp"):
        return "interrupted save"
    if not is_complete(ckpt):
        return f"incomplete (no {MARKER})"
    if verify:
        try:
            verify_checksums(ckpt)
        except CheckpointError as err:
            return f"corrupt: {str(err).split(': ', 1)[-1]}"
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
        return json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def list_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nextlat-pt ckpt list")
    parser.add_argument("dir", type=Path)
    parser.add_argument("--verify", action="store_true", help="check every file's sha256")
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
    latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else ""
    print(f"{'step':>8}  {'status':<28} {'layout':<22} {'size':>10}  name")
    for ckpt in ckpts:
        state = _state(ckpt)
        step = state.get("step", "?")
        mark = "  <- latest" if ckpt.name == latest else ""
        print(f"{step:>8}  {_status(ckpt, args.verify):<28} {_layout(state):<22} "
              f"{_human(_dir_size(ckpt)):>10}  {ckpt.name}{mark}")
    return 0


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


def main(argv: list[str]) -> int:
    """Dispatch `ckpt list` / `ckpt inspect`."""
    if not argv or argv[0] not in ("list", "inspect"):
        print("usage: nextlat-pt ckpt {list,inspect} ...", file=sys.stderr)
        return 2
    return list_main(argv[1:]) if argv[0] == "list" else inspect_main(argv[1:])
