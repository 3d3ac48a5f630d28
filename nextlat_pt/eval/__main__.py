"""`python -m nextlat_pt.eval MODEL_DIR [--data SHARDS] [--lm-eval] ...`."""

import sys

from nextlat_pt.eval.cli import eval_main
from nextlat_pt.quiet import silence_library_noise

if __name__ == "__main__":
    silence_library_noise()
    sys.exit(eval_main())
