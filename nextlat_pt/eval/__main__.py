"""`python -m nextlat_pt.eval MODEL_DIR [--data SHARDS] [--lm-eval] ...`."""

import os
import sys
import warnings

from nextlat_pt.eval.cli import eval_main

if __name__ == "__main__":
    # megatron-core and DeepSpeed warn at import about missing TransformerEngine/Apex.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(eval_main())
