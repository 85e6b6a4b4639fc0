"""Build the evaluation datasets from this machine's files: `python tools/make_eval_data.py OUT [--language de]`."""

import sys

from megallm.cli.make_eval_data import main

if __name__ == "__main__":
    sys.exit(main())
