"""`python -m nextlat_pt.generate MODEL --prompt TEXT --max-new-tokens N ...`."""

import os
import sys
import warnings

from nextlat_pt.generate.cli import generate_main

if __name__ == "__main__":
    # megatron-core and DeepSpeed warn at import about missing TransformerEngine/Apex.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(generate_main())
