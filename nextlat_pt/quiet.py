"""The one place that silences what the libraries print because of how we use them.

Called once per process by every entry point (`nextlat-pt`, `python -m nextlat_pt.eval`,
...) before megatron, DeepSpeed or transformers are imported. Each line names what it hides
and why it is noise here; nothing that reports a real problem is silenced.
"""

from __future__ import annotations

import logging
import os
import warnings


def _not_the_accelerator_guess(record: logging.LogRecord) -> bool:
    # DeepSpeed guesses its accelerator at import and warns when it falls back to the CPU;
    # the run prints the device it actually uses.
    return "Setting accelerator to CPU" not in record.getMessage()


def silence_library_noise() -> None:
    """Filters and environment defaults (a user's own setting of the variable wins)."""
    # megatron-core and DeepSpeed: TransformerEngine and Apex are optional; their torch
    # fallbacks are what this project uses.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    # megatron-core 0.16: TransformerConfig's own default cuda_graph_scope="full" warns that
    # it is deprecated, on every rank; we use no CUDA graphs.
    warnings.filterwarnings("ignore", message=r"full scope is deprecated")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("DeepSpeed").addFilter(_not_the_accelerator_guess)
    # transformers: a "Loading weights" bar for every model `eval`/`generate` load (seconds
    # for our sizes); hub bars never apply, everything is loaded offline from a folder.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # tokenizers: forking after use warns about its thread pool; we tokenize in workers.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
