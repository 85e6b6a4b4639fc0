"""Scaling-law fits from finished runs or a CSV: `python tools/scaling_law.py INPUT --help`."""

import sys

from megallm.cli.scaling_law import main

if __name__ == "__main__":
    sys.exit(main())
