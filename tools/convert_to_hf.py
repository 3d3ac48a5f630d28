#!/usr/bin/env python
"""Export a nextlat_pt checkpoint to a Hugging Face LlamaForCausalLM folder.

    python tools/convert_to_hf.py CHECKPOINT_DIR OUT_DIR [--dtype bfloat16] [--max-shard-size 2GB]

The same as `nextlat-pt convert --to hf CHECKPOINT_DIR OUT_DIR ...`.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nextlat_pt.convert.cli import convert_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the exporter on `argv` (default: the command line)."""
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--to" or a.startswith("--to=") for a in argv):
        print("nextlat-pt: error: tools/convert_to_hf.py always converts --to hf; use "
              "`nextlat-pt convert --to nextlat` for the way back", file=sys.stderr)
        return 2
    return convert_main(["--to", "hf", *argv])


if __name__ == "__main__":
    sys.exit(main())
