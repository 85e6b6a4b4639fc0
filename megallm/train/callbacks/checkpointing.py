"""Checkpoints every `every` steps, at the steps `at_steps` and at the last step (also when a stop
was requested).

A checkpoint whose weights are not all finite is never published: the save stops the run
with DivergenceError instead, so the newest checkpoint is always one to go back to."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Optional

from megallm.checkpoint.portable import gather_state
from megallm.checkpoint.saving import save_checkpoint
from megallm.errors import DivergenceError
from megallm.files import PARTIAL_SUFFIX
from megallm.model.config import ModelConfig
from megallm.model.flops import parameter_count
from megallm.train.callbacks.base import Callback

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


# A first checkpoint's size, per parameter: fp32 weights and the two fp32 Adam moments, with room
# for a bf16 copy and fp32 masters (later checkpoints are checked against the previous one's size).
BYTES_PER_PARAMETER = 16


class Checkpointer(Callback):
    """Saves the engine, RNG states, run state and callback states under `root`
    (megallm.checkpoint.saving), keeping the newest `keep_last` (0: all). With
    `consolidated`, also the full model gathered into consolidated.pt. Those of `at_steps` are kept
    besides the newest `keep_last`."""

    def __init__(self, root: Path, every: int, keep_last: int, config_yaml: str, model: ModelConfig,
                 consolidated: bool, tokenizer_files: Optional[dict], save_last: bool = True,
                 at_steps: Collection[int] = ()):
        self.root, self.every, self.keep_last, self.save_last = root, every, keep_last, save_last
        self.at_steps = frozenset(at_steps)
        self.config_yaml, self.model = config_yaml, model
        self.consolidated, self.tokenizer_files = consolidated, tokenizer_files

    def on_fit_start(self, trainer: Trainer) -> None:
        """Remove `.partial` folders that crashed saves left behind (rank 0; the run holds the folder's lock)."""
        if trainer.ctx.is_main and self.root.is_dir():
            for stale in self.root.glob(f"*{PARTIAL_SUFFIX}"):
                shutil.rmtree(stale, ignore_errors=True)

    def post_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        at_end = trainer.stop_reason is not None or (self.save_last and trainer.is_last_step)
        if at_end or (self.every and step % self.every == 0) or step in self.at_steps:
            path = self.save(trainer)
            if path:
                trainer.say(f"saved checkpoint {path}")

    def save(self, trainer: Trainer) -> Optional[Path]:
        """Collective: save the trainer's current state now; the folder, or None if it existed."""
        if not trainer.engine.weights_finite():
            raise DivergenceError(f"step {trainer.state.step}: the weights are not finite, so no checkpoint was "
                                  f"saved (the newest in {self.root} is intact); lower optim.lr or optim.grad_clip")
        consolidated = None
        if self.consolidated:
            portable = gather_state(trainer.engine, self.model, with_optimizer=False)
            consolidated = portable.weights if portable is not None else None
        trainer.state.callbacks = trainer.callback_states()
        return save_checkpoint(trainer.engine, self.root, trainer.state, self.config_yaml, self.keep_last,
                               consolidated=consolidated, tokenizer_files=self.tokenizer_files,
                               estimated_bytes=BYTES_PER_PARAMETER * parameter_count(self.model).total,
                               keep_steps=self.at_steps)
