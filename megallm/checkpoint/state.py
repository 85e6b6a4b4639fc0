"""Save and resume a run: DeepSpeed's sharded save plus megallm's own run state.

A checkpoint is the folder `<dir>/step_NNNNNNNN/` holding
- DeepSpeed's files (model, optimizer and scheduler shards of every rank),
- `rng/rank_RRRRR.pt`: each rank's Python / NumPy / torch (CPU, CUDA) RNG states,
- `megallm_state.json`: step, tokens seen, data position (consumed samples), parallel
  layout, the resolved model shape and tokenizer identity,
- `config.yaml`: the run's resolved config,
- `tokenizer.json`: the tokenizer the run's corpus was prepared with (export and
  generation need no corpus),
- `consolidated.pt` (with checkpoint.consolidated=true): the full model in canonical
  names, for any layout (megallm.checkpoint.portable).
`megallm_state.json` also lists every file the ranks wrote with its size, so a shard
lost in a copy is named before anything loads (`check_complete`).

A weights-only checkpoint (`weights_only`, written by `tools/convert_ckpt.py import
--weights-only`) holds `consolidated.pt`, the state and config files and no DeepSpeed
files: any layout starts from it with a fresh optimizer.

Every rank writes into `<name>.partial/`; after a barrier rank 0 renames it to the final
name. A folder without `.partial` is therefore complete, a crash mid-save leaves only a
`.partial` (ignored and replaced next time), and an existing checkpoint is never written
over.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

STATE_FILE = "megallm_state.json"
WEIGHTS_FILE = "consolidated.pt"
TOKENIZER_FILE = "tokenizer.json"
_TAG = re.compile(r"^step_(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; its message is one line saying why and what to do."""


@dataclass
class RunState:
    step: int = 0
    consumed_samples: int = 0  # global count over all data-parallel ranks (the data position)
    tokens_seen: int = 0
    layout: dict = field(default_factory=dict)  # tp, pp, dp, zero_stage
    model: dict = field(default_factory=dict)  # resolved ModelConfig
    tokenizer_sha256: str = ""
    seq_len: int = 0
    data_streams: int = 0  # data.streams: the sample order consumed_samples counts in
    weights_only: bool = False  # consolidated.pt only: no optimizer state, no layout
    files: dict = field(default_factory=dict)  # every file the ranks wrote (relative path -> bytes)


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_resume_checkpoint(resume: str, root: Path) -> Optional[Path]:
    """Resolve train.resume: "auto" -> newest complete checkpoint or None; "none"; or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"train.resume={resume} is not a complete megallm checkpoint ({STATE_FILE} missing)")
    return path


def read_state(path: Path) -> RunState:
    return RunState(**json.loads((path / STATE_FILE).read_text()))


def check_complete(path: Path, state: RunState) -> None:
    """Raise if a file the ranks wrote is missing or has another size (e.g. a partial copy)."""
    damaged = [name for name, size in state.files.items()
               if not (path / name).is_file() or (path / name).stat().st_size != size]
    if damaged:
        raise CheckpointError(
            f"checkpoint {path} is missing {len(damaged)} of the {len(state.files)} files its ranks wrote, "
            f"e.g. {damaged[0]} (missing or truncated); copy the whole folder again or use another checkpoint")


def check_compatible(saved: RunState, current: RunState, path: Path) -> None:
    """Refuse to resume into a different model, tokenizer, layout or sequence length."""
    saved_model = {k: v for k, v in saved.model.items() if k != "name"}
    current_model = {k: v for k, v in current.model.items() if k != "name"}
    if saved_model != current_model:
        diff = ", ".join(f"model.{k}: saved {saved_model.get(k)} vs now {current_model.get(k)}"
                         for k in sorted(set(saved_model) | set(current_model))
                         if saved_model.get(k) != current_model.get(k))
        raise CheckpointError(f"checkpoint {path} holds a different model ({diff}); use the saved model config "
                              "or start fresh with train.resume=none and a new run_dir")
    if saved.tokenizer_sha256 and saved.tokenizer_sha256 != current.tokenizer_sha256:
        raise CheckpointError(
            f"checkpoint {path} was trained with tokenizer {saved.tokenizer_sha256[:12]} but data.path uses "
            f"{current.tokenizer_sha256[:12]}; point data.path at a corpus prepared with the checkpoint's tokenizer"
        )
    if saved.weights_only:
        return  # weights in canonical names: any layout, a fresh optimizer and data position
    if saved.layout != current.layout and not _replicas_only_differ(saved.layout, current.layout):
        raise CheckpointError(
            f"checkpoint {path} was written with layout {describe_layout(saved.layout)} but this run uses "
            f"{describe_layout(current.layout)}; resume with the saved layout, or reshard it with "
            f"`python tools/convert_ckpt.py reshard {path} OUT_DIR {layout_arguments(current.layout)}` "
            "and resume from OUT_DIR"
        )
    if saved.data_streams and saved.data_streams != current.data_streams:
        raise CheckpointError(f"checkpoint {path} read its data with data.streams={saved.data_streams}, this run "
                              f"with {current.data_streams}; the data position counts samples in that order: "
                              f"set data.streams={saved.data_streams}")
    if saved.seq_len and saved.seq_len != current.seq_len:
        raise CheckpointError(f"checkpoint {path} used train.seq_len={saved.seq_len}, this run {current.seq_len}; "
                              "the data position would not carry over: keep train.seq_len")


def _replicas_only_differ(saved: dict, current: dict) -> bool:
    """Without ZeRO every data-parallel rank holds the whole optimizer state, so the number of
    replicas may change on resume (the data position is a global sample count)."""
    same_model_split = all(saved.get(k) == current.get(k) for k in ("tp", "pp", "zero_stage"))
    return same_model_split and saved.get("zero_stage") == 0


def describe_layout(layout: dict) -> str:
    return (f"TP={layout.get('tp')} x PP={layout.get('pp')} x DP={layout.get('dp')} "
            f"ZeRO-{layout.get('zero_stage')}")


def layout_arguments(layout: dict) -> str:
    """The layout as `tools/convert_ckpt.py reshard` options."""
    return (f"--tp {layout.get('tp')} --pp {layout.get('pp')} --dp {layout.get('dp')} "
            f"--zero-stage {layout.get('zero_stage')}")


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


def save_checkpoint(engine, root: Path, state: RunState, config_yaml: str, rank: int, keep_last: int,
                    consolidated: Optional[dict] = None, tokenizer_json: Optional[str] = None) -> Optional[Path]:
    """Collective: every rank calls it. Returns the published folder (None if it already existed)."""
    final = root / tag_for(state.step)
    if final.exists():  # never overwrite a written checkpoint (e.g. resuming from an older one)
        if rank == 0:
            print(f"checkpoint {final} exists already; keeping it and not saving step {state.step}", flush=True)
        return None
    write_checkpoint(engine, final, state, config_yaml, rank, consolidated=consolidated,
                     tokenizer_json=tokenizer_json)
    if rank == 0 and keep_last > 0:
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_checkpoint(engine, final: Path, state: RunState, config_yaml: str, rank: int,
                     consolidated: Optional[dict] = None, tokenizer_json: Optional[str] = None) -> Path:
    """Collective: write the checkpoint folder `final` through `<final>.partial` and a rename.

    `engine`: the DeepSpeed engine, or None for a weights-only checkpoint (rank 0 alone then).
    `consolidated` (rank 0's full model from megallm.checkpoint.portable) is written as
    consolidated.pt inside the checkpoint before it is published.
    """
    import torch.distributed as dist

    partial = final.with_name(final.name + ".partial")
    collective = engine is not None
    if rank == 0:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier save
        partial.mkdir()
    if collective:
        dist.barrier()
        engine.save_checkpoint(str(partial.parent), tag=partial.name, save_latest=False)
        (partial / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), partial / "rng" / f"rank_{rank:05d}.pt")
        dist.barrier()
    if rank == 0:
        (partial / "config.yaml").write_text(config_yaml)
        if tokenizer_json is not None:
            (partial / TOKENIZER_FILE).write_text(tokenizer_json)
        if consolidated is not None:
            torch.save({"model": consolidated, "model_config": state.model}, partial / WEIGHTS_FILE)
        state.files = {str(f.relative_to(partial)): f.stat().st_size for f in sorted(partial.rglob("*"))
                       if f.is_file()}
        (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        partial.rename(final)
    if collective:
        dist.barrier()
    return final


def load_checkpoint(engine, path: Path, rank: int) -> RunState:
    """Collective: restore engine (weights, optimizer, LR schedule), this rank's RNG, and the run state.

    `engine` is megallm's ParallelEngine; a weights-only checkpoint sets the weights alone.
    A checkpoint of step 0 (imported, nothing trained yet) keeps this run's optimizer
    settings and LR schedule: only its weights (and empty optimizer) are taken.
    """
    state = read_state(path)
    check_complete(path, state)
    if state.weights_only:
        from megallm.checkpoint.portable import PortableState, apply_state
        from megallm.model.config import ModelConfig

        apply_state(engine, PortableState(weights=read_weights(path)), ModelConfig(**state.model))
        return state
    from megallm.checkpoint.portable import torch_optimizer

    run_settings = [{k: v for k, v in group.items() if k != "params"}
                    for group in torch_optimizer(engine.engine).param_groups]
    run_schedule = engine.scheduler.state_dict()
    loaded, _ = engine.engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
    if loaded is None:
        raise CheckpointError(f"DeepSpeed could not load {path}: a rank's shard is missing or unreadable")
    if state.step == 0:
        for group, settings in zip(torch_optimizer(engine.engine).param_groups, run_settings):  # loading made new ones
            group.update(settings)
        engine.scheduler.load_state_dict(run_schedule)
    rng_file = path / "rng" / f"rank_{rank:05d}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The canonical full model of a checkpoint that has consolidated.pt."""
    return torch.load(path / WEIGHTS_FILE, map_location="cpu", mmap=True, weights_only=False)["model"]
