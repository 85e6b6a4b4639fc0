"""Fine-tuning entry point: `torchrun --nproc_per_node N launch/finetune.py finetune.init=PATH finetune.train_file=FILE`.

Thin by design: the logic is megallm.cli.finetune (classification head, or supervised pairs with
the loss on the responses). `--help` lists the options.
"""

import sys

from megallm.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
