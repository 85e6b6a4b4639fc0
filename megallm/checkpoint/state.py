"""What a checkpoint is: its folder layout, `RunState`, and which checkpoint a run may resume.

A checkpoint is the folder `<dir>/step_NNNNNNNN/` holding
- DeepSpeed's files (model, optimizer and scheduler shards of every rank),
- `rng/rank_RRRRR.pt`: each rank's Python / NumPy / torch (CPU, CUDA) RNG states,
- `megallm_state.json`: step, tokens seen, data position (consumed samples), parallel
  layout, the resolved model shape and tokenizer identity,
- `config.yaml`: the run's resolved config,
- `tokenizer.json`: the tokenizer the run's corpus was prepared with (export and
  generation need no corpus), with its Hugging Face side files (`tokenizer_config.json`,
  `special_tokens_map.json`, `chat_template.jinja`) where it has them,
- `consolidated.pt` (with checkpoint.consolidated=true): the full model in canonical
  names, for any layout (megallm.checkpoint.portable).
`megallm_state.json` also lists every file the ranks wrote with its size and SHA-256, so
a shard lost in a copy or altered on disk is named before anything loads
(`check_complete`, megallm.checkpoint.verify), and the state of the training loop's
callbacks that have one (megallm.train.callbacks).

The state file protects itself: it carries `format` (STATE_FORMAT) and `state_sha256`, the
SHA-256 of its other keys (sorted, compact JSON), so a changed step or data position is
damage, not a resume at the wrong place. A file of this format must also list a checksum
for every file. Files of earlier versions (no `format`: with checksums since megallm
verified checkpoints, sizes only before) are read as they are.

A weights-only checkpoint (`weights_only`, written by `tools/convert_ckpt.py import
--weights-only`) holds `consolidated.pt`, the state and config files and no DeepSpeed
files: any layout starts from it with a fresh optimizer.

Every rank writes into `<name>.partial/`; after a barrier rank 0 publishes it under the
final name (megallm.files.publish, megallm.checkpoint.saving). A folder without
`.partial` is therefore complete, a crash mid-save leaves only a `.partial` (ignored and
replaced next time), and an existing checkpoint is never written over.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from megallm.errors import CheckpointError
from megallm.model.config import ModelConfig
from megallm.parallel.dims import ParallelDims

STATE_FILE = "megallm_state.json"
# megallm_state.json's own format: 2 carries `state_sha256` and a checksum for every file; a file
# without `format` was written before (with `checksums` since megallm verified checkpoints).
STATE_FORMAT = 2
WEIGHTS_FILE = "consolidated.pt"
RNG_DIR = "rng"
_TAG = re.compile(r"^step_(\d{8})$")
USE_ANOTHER = "use another checkpoint"  # the advice that ends a damaged checkpoint's message
# Model config keys that change nothing the model computes: a resuming run may set them as it likes.
DESCRIPTIVE_MODEL_KEYS = ("name", "max_position_embeddings")


@dataclass
class RunState:
    step: int = 0
    consumed_samples: int = 0  # global count over all data-parallel ranks (the data position)
    tokens_seen: int = 0
    layout: Optional[ParallelDims] = None  # None for weights-only checkpoints (any layout loads them)
    model: dict = field(default_factory=dict)  # resolved ModelConfig
    tokenizer_sha256: str = ""
    seq_len: int = 0
    data_streams: int = 0  # data.streams: the sample order consumed_samples counts in
    weights_only: bool = False  # consolidated.pt only: no optimizer state, no layout
    files: dict = field(default_factory=dict)  # every file the ranks wrote (relative path -> bytes)
    checksums: dict = field(default_factory=dict)  # relative path -> SHA-256 (megallm.checkpoint.verify)
    callbacks: dict = field(default_factory=dict)  # callback name -> its state_dict()
    # An imported Hugging Face model's config.json and generation_config.json ({name: JSON}),
    # carried by every run that resumes it, so that its export keeps them (megallm.checkpoint.hf).
    hf_model_files: dict = field(default_factory=dict)
    # How its megallm_state.json protects itself (set by `to_json`, checked by `read_state`): the file's
    # format (0: written before STATE_FORMAT) and the SHA-256 of its other keys.
    format: int = 0
    state_sha256: str = ""

    def __post_init__(self):
        if isinstance(self.layout, dict):  # as read from JSON ({} in older weights-only checkpoints)
            self.layout = ParallelDims.from_dict(self.layout) if self.layout else None

    def to_json(self) -> str:
        """As saved in megallm_state.json, with its format and own checksum; no `callbacks` /
        `hf_model_files` key when empty (earlier versions of megallm read the file: they ignore
        the keys they do not know)."""
        fields = asdict(self)
        for key in ("callbacks", "hf_model_files"):
            if not fields[key]:
                del fields[key]
        del fields["state_sha256"]
        fields["format"] = STATE_FORMAT
        fields = json.loads(json.dumps(fields))  # as it reads back (tuples as lists, keys as strings)
        return json.dumps({**fields, "state_sha256": _fields_sha256(fields)}, indent=1)


def _fields_sha256(fields: dict) -> str:
    """The SHA-256 of a state file's keys (the checksum key itself excluded), in a canonical form."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _state_file_problem(fields: dict) -> Optional[str]:
    """Why a parsed state file cannot be trusted, or None."""
    fields = dict(fields)
    recorded = fields.pop("state_sha256", "")
    if not fields.get("format") and not recorded:
        return None  # an earlier version's file: nothing to check it against
    if not recorded:
        return f"{STATE_FILE} has lost its own checksum (state_sha256)"
    if recorded != _fields_sha256(fields):
        return (f"{STATE_FILE} fails its checksum (edited or damaged since it was saved: its step, data position "
                "and file list cannot be trusted)")
    unchecked = sorted(set(fields.get("files") or {}) - set(fields.get("checksums") or {}))
    if unchecked:
        return f"{STATE_FILE} records no checksum for {len(unchecked)} of its files, e.g. {unchecked[0]}"
    return None


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def is_step_folder_name(name: str) -> bool:
    """Whether `name` is a published checkpoint folder's name (step_NNNNNNNN)."""
    return _TAG.match(name) is not None


def step_folders(root: Path) -> list[Path]:
    """Published checkpoint folders under root (step_NNNNNNNN, sound or not), oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and is_step_folder_name(p.name)), key=lambda p: p.name)


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under root that have their state file, oldest first."""
    return [p for p in step_folders(root) if (p / STATE_FILE).is_file()]


def read_state(path: Path) -> RunState:
    """The checkpoint's RunState; CheckpointError if its state file is missing or damaged."""
    try:
        fields = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {STATE_FILE} (deleted, or an incomplete copy); "
                              f"{USE_ANOTHER}") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} is damaged (truncated or not JSON); "
                              f"{USE_ANOTHER}") from None
    problem = _state_file_problem(fields) if isinstance(fields, dict) else f"{STATE_FILE} is not a JSON object"
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}; {USE_ANOTHER}")
    known = RunState.__dataclass_fields__
    return RunState(**{k: v for k, v in fields.items() if k in known})


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
    # through ModelConfig: keys added since the checkpoint was written take their defaults
    saved_model = {k: v for k, v in ModelConfig(**saved.model).to_dict().items() if k not in DESCRIPTIVE_MODEL_KEYS}
    current_model = {k: v for k, v in ModelConfig(**current.model).to_dict().items()
                     if k not in DESCRIPTIVE_MODEL_KEYS}
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
    assert current.layout is not None, "a training run's state has its layout"
    if saved.layout is None:
        raise CheckpointError(f"checkpoint {path} records no parallel layout but holds optimizer state; "
                              f"{USE_ANOTHER}")
    if saved.layout != current.layout and not saved.layout.only_replicas_differ(current.layout):
        raise CheckpointError(
            f"checkpoint {path} was written with layout {saved.layout} but this run uses "
            f"{current.layout}; resume with the saved layout, or reshard it with "
            f"`python tools/convert_ckpt.py reshard {path} OUT_DIR {current.layout.options()}` "
            "and resume from OUT_DIR"
        )
    if saved.data_streams and saved.data_streams != current.data_streams:
        raise CheckpointError(f"checkpoint {path} read its data with data.streams={saved.data_streams}, this run "
                              f"with {current.data_streams}; the data position counts samples in that order: "
                              f"set data.streams={saved.data_streams}")
    if saved.seq_len and saved.seq_len != current.seq_len:
        raise CheckpointError(f"checkpoint {path} used train.seq_len={saved.seq_len}, this run {current.seq_len}; "
                              "the data position would not carry over: keep train.seq_len")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The canonical full model of a checkpoint that has consolidated.pt."""
    return torch.load(path / WEIGHTS_FILE, map_location="cpu", mmap=True, weights_only=False)["model"]
