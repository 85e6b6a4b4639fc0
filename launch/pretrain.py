"""Pretraining entry point: `torchrun --nproc_per_node N launch/pretrain.py +model=NAME [overrides]`.

Thin by design: the logic is megallm.train.pretrain. `--help` lists models and options.
"""

import sys
from pathlib import Path

if __package__ is None:  # run as a script from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megallm.train.pretrain import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
