"""Sweep entry point: `python launch/sweep.py +model=a,b train.steps=100,200 [--dry-run|--slurm]`.

Thin by design: the logic is megallm.cli.sweep (`--help` lists the options).
"""

import sys

from megallm.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
