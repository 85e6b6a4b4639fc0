"""The entry logic of `launch/` and `tools/`: each module parses its command line and calls the library.

`launch/pretrain.py` and `tools/*.py` are three-line scripts that call a `main` here:

- pretrain.py       launch/pretrain.py: compose and check the config, dry-run or train
- finetune.py       launch/finetune.py: fine-tune a pretrained model (classification head, prompt / response pairs)
- evaluate.py       tools/evaluate.py: few-shot tasks (accuracy, BLEU, ROUGE), perplexity per token and byte
- convert_ckpt.py   tools/convert_ckpt.py: export, import, reshard, verify, info
- generate.py       tools/generate.py: complete prompts from a checkpoint or Hugging Face folder
- prepare_data.py   tools/prepare_data.py: text -> token shards
- validate_data.py  tools/validate_data.py: check a prepared corpus

An error a user can fix (megallm.errors.MegallmError) becomes one line
`PROG: error: MESSAGE` on stderr and the error's exit code, here in `report`; anything
else is a bug and keeps its traceback, unless it ends a rank's training: one rank of the
job then names it in one line (`report_failure`), and the job ends. Heavy libraries
(torch, megatron-core, DeepSpeed: ~6 s per process) are imported inside the commands
that need them, so that a mistake on the command line is reported in about a second.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Callable

from megallm.errors import MegallmError
from megallm.parallel.lifetime import reports_failure

# torchrun tears every rank down when the first one exits: a rank that leaves the report to
# rank 0 waits this long first, so that rank 0's line is printed, not lost.
QUIET_RANK_EXIT_DELAY_S = 3.0


def report(prog: str, error: MegallmError, every_rank: bool = False) -> int:
    """Print `error` as one line and return its exit code. Under a launcher only rank 0 speaks,
    unless `every_rank` (a problem one rank may have alone, such as its shard)."""
    rank = int(os.environ.get("RANK", 0))
    if every_rank or rank == 0:
        where = f"[rank {rank}] " if every_rank else ""
        print(f"{prog}: error: {where}{error}", file=sys.stderr, flush=True)
    else:
        time.sleep(QUIET_RANK_EXIT_DELAY_S)
    return error.exit_code


def report_failure(prog: str, error: BaseException) -> int:
    """A rank's failure in training (any exception) as one line from one rank of the job
    (megallm.parallel.lifetime.reports_failure), and its exit code: a MegallmError's own, 1 for
    anything else, which is named by its type and message (`_one_line`; MEGALLM_DEBUG=1 prints
    the traceback too)."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if isinstance(error, MegallmError):
        message, code = str(error), error.exit_code
    else:
        message, code = _one_line(error), 1
        if os.environ.get("MEGALLM_DEBUG"):
            traceback.print_exception(error)
    if reports_failure(rank, world_size, QUIET_RANK_EXIT_DELAY_S):
        where = f"[rank {rank}] " if rank else ""
        print(f"{prog}: error: {where}{message}", file=sys.stderr, flush=True)
    return code


def _one_line(error: BaseException) -> str:
    """`Type: message`, the message's first line; where the message carries another process's
    traceback (DataLoader re-raises a worker's exception so), that traceback's last line too."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    shown = [lines[0], lines[-1]] if any("Traceback (most recent call last)" in line for line in lines) else lines[:1]
    return f"{type(error).__name__}: {' '.join(shown)}"


def run_command(prog: str, command: Callable[[], int]) -> int:
    """`command()`'s exit code, or `report`'s for a MegallmError it raises."""
    try:
        return command()
    except MegallmError as error:
        return report(prog, error)
