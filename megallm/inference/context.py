"""The context a model was trained at: the positions its weights have learned, beyond which it extrapolates.

RoPE gives every position a rotation, so a Llama computes something at any length; past the
positions it was trained on, it extrapolates, and what it computes there is not what it learned.
Evaluation refuses windows longer than the trained context, and generation warns when prompt plus
new tokens run past it. What counts as trained:

- a megallm checkpoint: the `train.seq_len` its run trained at (megallm_state.json records it);
  a model imported from Hugging Face (`tools/convert_ckpt.py import`, whose checkpoints carry the
  original config.json) was trained by its publisher at that config.json's
  max_position_embeddings: the larger of the two counts. `model.max_position_embeddings` set on a
  run from scratch is a declaration, not training, and does not count;
- a Hugging Face folder: its config.json's max_position_embeddings, the only record it has
  (transformers' Llama default, 2048, when the key is missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megallm.files import HF_CONFIG_FILE


@dataclass(frozen=True)
class TrainedContext:
    tokens: int  # positions the model was trained at
    source: str  # where that number comes from, for messages: "train.seq_len of <checkpoint>", ...

    def describe(self, name: str) -> str:
        """e.g. "the 256 tokens runs/tiny was trained at (train.seq_len of runs/tiny/checkpoints/step_00000300)"."""
        return f"the {self.tokens:,} tokens {name} was trained at ({self.source})"


def trained_context(path: Path) -> TrainedContext:
    """The trained context of the model at `path` (a megallm checkpoint, run or checkpoints folder, or a
    Hugging Face folder), from its records alone (no weight is read); see the module docstring."""
    # deferred: the checkpoint package imports DeepSpeed, which reads the accelerator its callers choose first
    from megallm.checkpoint.convert import is_hf_folder, resolve_checkpoint
    from megallm.checkpoint.hf import read_json
    from megallm.checkpoint.hf_config import LLAMA_DEFAULTS
    from megallm.checkpoint.state import read_state

    path = Path(path)
    if is_hf_folder(path):
        config = path / HF_CONFIG_FILE
        positions = read_json(config).get("max_position_embeddings")
        if positions:
            return TrainedContext(positions, f"max_position_embeddings in {config}")
        return TrainedContext(LLAMA_DEFAULTS["max_position_embeddings"],
                              f"{config} has no max_position_embeddings: transformers' default")
    checkpoint = resolve_checkpoint(path)
    state = read_state(checkpoint)
    original = (state.hf_model_files.get(HF_CONFIG_FILE) or {}).get("max_position_embeddings") or 0
    if original > state.seq_len:
        return TrainedContext(original, f"max_position_embeddings of the Hugging Face model {checkpoint} "
                                        "was imported from")
    if state.seq_len:
        return TrainedContext(state.seq_len, f"train.seq_len of {checkpoint}")
    declared = state.model.get("max_position_embeddings")
    if declared:  # a checkpoint that records no sequence length
        return TrainedContext(declared, f"model.max_position_embeddings of {checkpoint}")
    return TrainedContext(LLAMA_DEFAULTS["max_position_embeddings"],
                          f"{checkpoint} records no sequence length: the Llama default")
