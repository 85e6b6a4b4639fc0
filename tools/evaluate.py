"""Few-shot tasks and perplexity for a model: `python tools/evaluate.py MODEL --task FILE.jsonl`."""

import sys

from megallm.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
