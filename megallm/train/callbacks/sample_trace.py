"""data.trace_samples: each step's global sample indices and token-id hashes, one JSON line per step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from megallm.train.callbacks.base import Callback, StepOutput

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


class SampleTrace(Callback):
    """Appends {"step", "samples", "tokens_sha1"} to `path` (one rank per data-parallel group
    writes: TP and PP ranks read the same samples)."""

    def __init__(self, path: Path):
        self.path = path

    def post_train_batch(self, trainer: Trainer, output: StepOutput) -> None:
        rows = [row for batch in output.micro_batches for row in batch.cpu().numpy()]
        hashes = [hashlib.sha1(row.tobytes()).hexdigest()[:16] for row in rows]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": trainer.state.step, "samples": output.samples, "tokens_sha1": hashes}) + "\n")
