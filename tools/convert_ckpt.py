"""Convert checkpoints: `python tools/convert_ckpt.py {export,import,reshard,verify,info} --help`."""

import sys

from megallm.cli.convert_ckpt import main

if __name__ == "__main__":
    sys.exit(main())
