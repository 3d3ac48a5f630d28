"""`python -m nextlat_pt.generate MODEL --prompt TEXT --max-new-tokens N ...`."""

import sys

from nextlat_pt.generate.cli import generate_main
from nextlat_pt.quiet import silence_library_noise

if __name__ == "__main__":
    silence_library_noise()
    sys.exit(generate_main())
