"""The README.md (model card) of an export: what was trained, on what, and how far."""

from __future__ import annotations

import math
from typing import Any

import yaml


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def model_card(info: dict[str, Any], training_config: dict[str, Any], has_psi: bool,
               mtp_heads: int = 1, jtp_steps: int = 0) -> str:
    """Markdown with YAML front matter; `info` is what nextlat_export.json records."""
    metrics = info.get("last_metrics") or {}
    losses = {k: metrics[k] for k in ("loss", "ce", "latent", "kl", "val_ce")
              if metrics.get(k) is not None}
    shape = info["shape"]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [nextlat, llama, nextlat_pt]",
        "---",
        "",
        f"# {info.get('run_name') or 'nextlat_pt model'}",
        "",
        "A decoder-only language model pretrained with **Next-Latent Prediction (NextLat)** "
        "(Teoh et al., arXiv 2511.05963) by `nextlat_pt`, exported as a Hugging Face "
        "`LlamaForCausalLM`.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| source checkpoint | `{info['source']}` |",
        f"| step | {info.get('step')} |",
        f"| tokens seen | {info.get('tokens_seen'):,} |" if isinstance(
            info.get("tokens_seen"), int) else f"| tokens seen | {info.get('tokens_seen')} |",
        f"| saved with layout | {info.get('layout')} |",
        f"| objective | {training_config.get('nextlat', {}).get('objective')} |",
        f"| parameters | {info.get('num_parameters', 0):,} (ψ not included) |",
        f"| layers × width × heads (kv groups) | {shape['num_layers']} × "
        f"{shape['hidden_size']} × {shape['num_heads']} ({shape['num_query_groups']}) |",
        f"| vocabulary | {shape['vocab_size']} |",
        "",
        "Final losses (last logged training step, nats/token):",
        "",
    ]
    if losses:
        lines += ["| term | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in losses.items()]
        if "ce" in losses:
            lines += ["", f"Training perplexity at the end: {math.exp(min(losses['ce'], 50)):.2f}."]
    else:
        lines.append("(none recorded)")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "ids = tok('def main():\\n', return_tensors='pt').input_ids",
        "print(tok.decode(model.generate(ids, max_new_tokens=32)[0]))",
        "```",
        "",
        "The tokenizer reproduces the training sentencepiece model exactly "
        "(`tokenizer.model` is included). It adds **no BOS**: documents were trained "
        "separated by `</s>` (EOS) and never with `<s>`. To score a document from its very "
        "first token, prefix it with `</s>` (id 2).",
        "",
    ]
    if has_psi:
        lines += [
            "## The latent dynamics model ψ",
            "",
            "`nextlat_dynamics.safetensors` holds ψ, the model that learned to predict the "
            "transformer's next final hidden state; `nextlat_dynamics.json` gives the formula "
            "and sizes. transformers does not load it; the LM works without it.",
            "",
        ]
    if mtp_heads > 1:
        lines += [
            "## Multi-token prediction heads",
            "",
            f"Trained with {mtp_heads} output heads (Gloeckle et al., 2024); head k predicts "
            "the k-th next token. The Llama here is the trunk with head 1 (the usual "
            "next-token model). `mtp_heads.safetensors` holds heads 2 .. n, one decoder layer "
            "each, reading the input of the Llama's last layer and decoded through its norm "
            "and LM head; `mtp_heads.json` says how. transformers does not load them; the LM "
            "works without them.",
            "",
        ]
    if jtp_steps:
        lines += [
            "## Joint multi-token prediction (Fetch)",
            "",
            f"Trained with joint multi-token prediction over {jtp_steps} step(s) beyond the "
            "next token (Ahn et al., 2025). `jtp_fetch.safetensors` holds the Fetch module, "
            "one causal attention block over the final hidden state and the next tokens' "
            "embeddings, decoded through the Llama's LM head; `jtp_fetch.json` gives the "
            "formula. transformers does not load it; the LM works without it.",
            "",
        ]
    lines += [
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(training_config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
