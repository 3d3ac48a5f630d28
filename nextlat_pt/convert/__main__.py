"""`python -m nextlat_pt.convert --to hf|nextlat SRC OUT ...`."""

import os
import sys
import warnings

from nextlat_pt.convert.cli import convert_main

if __name__ == "__main__":
    # megatron-core and DeepSpeed warn at import about missing TransformerEngine/Apex.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(convert_main())
