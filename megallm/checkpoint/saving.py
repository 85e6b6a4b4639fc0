"""Write a checkpoint from a running engine, and resume an engine from one.

Both are collective: every rank calls them. The engine writes and reads its own
DeepSpeed files (megallm.engine); this module adds each rank's RNG states, the run's
config, tokenizer and `RunState`, and publishes the folder atomically
(megallm.files). See megallm.checkpoint.state for what a checkpoint holds.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megallm.checkpoint.portable import PortableState, apply_state
from megallm.checkpoint.state import (
    RNG_DIR,
    STATE_FILE,
    WEIGHTS_FILE,
    RunState,
    check_complete,
    complete_checkpoints,
    read_state,
    read_weights,
    tag_for,
)
from megallm.engine.engine import ParallelEngine
from megallm.files import RUN_CONFIG_FILE, partial_path, publish, start_partial
from megallm.model.config import ModelConfig


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / RNG_DIR / f"rank_{rank:05d}.pt"


def save_checkpoint(engine: ParallelEngine, root: Path, state: RunState, config_yaml: str, keep_last: int,
                    consolidated: Optional[dict] = None, tokenizer_files: Optional[dict] = None) -> Optional[Path]:
    """Collective: write `root/step_NNNNNNNN` and delete all but the newest `keep_last` (0: keep all).
    Returns the published folder (None if it already existed: it is never overwritten)."""
    final = root / tag_for(state.step)
    rank = engine.ctx.rank
    if final.exists():  # e.g. resuming from an older checkpoint
        if rank == 0:
            print(f"checkpoint {final} exists already; keeping it and not saving step {state.step}", flush=True)
        return None
    write_checkpoint(engine, final, state, config_yaml, rank, consolidated=consolidated,
                     tokenizer_files=tokenizer_files)
    if rank == 0 and keep_last > 0:
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_checkpoint(engine: Optional[ParallelEngine], final: Path, state: RunState, config_yaml: str, rank: int,
                     consolidated: Optional[dict] = None, tokenizer_files: Optional[dict] = None) -> Path:
    """Collective: write the checkpoint folder `final` through `<final>.partial` and a rename.

    `tokenizer_files`: {name: text} of tokenizer.json and its side files (rank 0's).

    `engine`: None for a weights-only checkpoint (rank 0 alone then). `consolidated` (rank
    0's full model from megallm.checkpoint.portable) is written as consolidated.pt.
    """
    partial = partial_path(final)
    if rank == 0:
        start_partial(final)
    if engine is not None:
        dist.barrier()
        engine.save(partial)
        _rng_file(partial, rank).parent.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), _rng_file(partial, rank))
        dist.barrier()
    if rank == 0:
        (partial / RUN_CONFIG_FILE).write_text(config_yaml)
        for name, text in (tokenizer_files or {}).items():
            (partial / name).write_text(text)
        if consolidated is not None:
            torch.save({"model": consolidated, "model_config": state.model}, partial / WEIGHTS_FILE)
        state.files = {str(f.relative_to(partial)): f.stat().st_size for f in sorted(partial.rglob("*"))
                       if f.is_file()}
        (partial / STATE_FILE).write_text(state.to_json())
        publish(partial, final)
    if engine is not None:
        dist.barrier()
    return final


def load_checkpoint(engine: ParallelEngine, path: Path) -> RunState:
    """Collective: restore the engine (weights, optimizer, LR schedule), this rank's RNG, and
    return the run state. A weights-only checkpoint sets the weights alone. A checkpoint of
    step 0 (imported, nothing trained yet) keeps this run's optimizer settings and LR
    schedule: only its weights (and empty optimizer) are taken."""
    state = read_state(path)
    check_complete(path, state)
    if state.weights_only:
        apply_state(engine, PortableState(weights=read_weights(path)), ModelConfig(**state.model))
        return state
    engine.load(path, untrained=state.step == 0)
    rng_file = _rng_file(path, engine.ctx.rank)
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return state
