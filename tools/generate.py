"""Complete prompts with a trained or imported model: `python tools/generate.py SOURCE --prompt TEXT`."""

import sys

from megallm.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
