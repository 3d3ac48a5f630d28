"""Every config key with its value and meaning, from the dataclass fields' metadata.

    nextlat-pt train --print-config [CONFIG] [section.key=value ...]   the resolved config
    python -m nextlat_pt.config_keys --markdown                         README's key table

`--print-config` prints YAML that can be saved and used as a config file: each key with the
value it resolves to, the value it stands for when it is an "automatic" 0 or empty string,
and its meaning.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import yaml

from nextlat_pt.config import Config

# What an automatic value (0 or "") resolves to, shown beside it.
_DERIVED: dict[str, Callable[[Config], Any]] = {
    "run.dir": lambda c: str(c.run_dir),
    "checkpoint.dir": lambda c: str(c.checkpoint_dir),
    "data.cache_dir": lambda c: str(c.cache_dir),
    "model.num_query_groups": lambda c: c.num_query_groups,
    "model.ffn_hidden_size": lambda c: c.ffn_hidden_size,
    "model.max_position_embeddings": lambda c: c.max_position_embeddings,
    "nextlat.psi_width": lambda c: c.psi_width if c.uses_psi else None,
}


def keys(cfg: Config) -> list[tuple[str, str, Any, str]]:
    """(section, key, value, meaning) for every config field, in declaration order."""
    out = []
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for item in dataclasses.fields(values):
            out.append((section.name, item.name, getattr(values, item.name),
                        item.metadata.get("meaning", "")))
    return out


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def format_config(cfg: Config, header: str = "") -> str:
    """The resolved config as commented YAML (loadable as a config file)."""
    rows = keys(cfg)
    width = max(len(f"  {k}: {_yaml(v)}") for _, k, v, _ in rows) + 2
    lines = [f"# {header}"] if header else []
    section = None
    for name, key, value, meaning in rows:
        if name != section:
            section = name
            lines.append(f"{name}:")
        note = meaning
        derived = _DERIVED.get(f"{name}.{key}")
        if derived is not None and value in (0, "") and derived(cfg) is not None:
            note = f"-> {derived(cfg)}; {meaning}"
        lines.append(f"{f'  {key}: {_yaml(value)}':<{width}}# {note}")
    return "\n".join(lines)


def key_table() -> str:
    """README's table: every key, its default and its meaning."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for name, key, value, meaning in keys(Config()):
        shown = _yaml(value) if value not in ("", []) else '""' if value == "" else "[]"
        lines.append(f"| `{name}.{key}` | `{shown}` | {meaning.replace('|', '&#124;')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m nextlat_pt.config_keys --markdown")
    print(key_table())
