"""Pretraining entry point: `torchrun --nproc_per_node N launch/pretrain.py +model=NAME [overrides]`.

Thin by design: the logic is megallm.cli.pretrain. `--help` lists models and options.
"""

import sys

from megallm.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
