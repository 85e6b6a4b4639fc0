"""Checkpoints every `every` steps and at the last step (also when a stop was requested)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from megallm.checkpoint.portable import gather_state
from megallm.checkpoint.saving import save_checkpoint
from megallm.model.config import ModelConfig
from megallm.train.callbacks.base import Callback

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


class Checkpointer(Callback):
    """Saves the engine, RNG states, run state and callback states under `root`
    (megallm.checkpoint.saving), keeping the newest `keep_last` (0: all). With
    `consolidated`, also the full model gathered into consolidated.pt."""

    def __init__(self, root: Path, every: int, keep_last: int, config_yaml: str, model: ModelConfig,
                 consolidated: bool, tokenizer_files: Optional[dict]):
        self.root, self.every, self.keep_last = root, every, keep_last
        self.config_yaml, self.model = config_yaml, model
        self.consolidated, self.tokenizer_files = consolidated, tokenizer_files

    def post_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if trainer.is_last_step or (self.every and step % self.every == 0):
            path = self.save(trainer)
            if path:
                trainer.say(f"saved checkpoint {path}")

    def save(self, trainer: Trainer) -> Optional[Path]:
        """Collective: save the trainer's current state now; the folder, or None if it existed."""
        consolidated = None
        if self.consolidated:
            portable = gather_state(trainer.engine, self.model, with_optimizer=False)
            consolidated = portable.weights if portable is not None else None
        trainer.state.callbacks = trainer.callback_states()
        return save_checkpoint(trainer.engine, self.root, trainer.state, self.config_yaml, self.keep_last,
                               consolidated=consolidated, tokenizer_files=self.tokenizer_files)
