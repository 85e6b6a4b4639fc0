"""Check a prepared corpus shard by shard and print its statistics: `python tools/validate_data.py CORPUS`."""

import sys

from megallm.cli.validate_data import main

if __name__ == "__main__":
    sys.exit(main())
