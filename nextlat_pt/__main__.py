"""`python -m nextlat_pt` (and `torchrun -m nextlat_pt`)."""

import sys

from nextlat_pt.cli import main

if __name__ == "__main__":  # dist_checkpointing spawns helpers that re-import this module
    sys.exit(main())
