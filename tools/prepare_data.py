"""Tokenize text into WebDataset token shards: `python tools/prepare_data.py --help`."""

import sys

from megallm.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
