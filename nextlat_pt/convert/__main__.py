"""`python -m nextlat_pt.convert --to hf|nextlat SRC OUT ...`."""

import sys

from nextlat_pt.convert.cli import convert_main
from nextlat_pt.quiet import silence_library_noise

if __name__ == "__main__":
    silence_library_noise()
    sys.exit(convert_main())
