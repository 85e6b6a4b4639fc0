"""Data-mixing-law fits from a table of trained mixtures: `python tools/mixing_law.py INPUT --help`."""

import sys

from megallm.cli.mixing_law import main

if __name__ == "__main__":
    sys.exit(main())
