"""Checkpoint conversions behind `tools/convert_ckpt.py`: export, import, reshard, verify.

Every conversion goes through the layout-free `PortableState` (megallm.checkpoint.portable):
- a megallm checkpoint is read by starting the processes of the layout that wrote it
  (DeepSpeed loads its shards only there; megallm.parallel.local_world starts them on
  this machine's CPU) and gathering the state onto rank 0, which saves it to a temporary
  file; a checkpoint with `consolidated.pt` needs no processes for its weights;
- a megallm checkpoint is written by starting the processes of the target layout, each
  setting its part from that file, and saving with DeepSpeed;
- a Hugging Face folder is read and written by megallm.checkpoint.hf.
A megallm checkpoint's files are verified against their checksums before anything is read
from it (megallm.checkpoint.verify). Outputs appear under their final name only when
complete (`<out>.partial`, then a rename); an output folder that cannot be written or has
too little space is refused before the conversion starts, and one that fills up meanwhile
is one line, the partial output removed (`writing_output`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Optional

import torch
import yaml
from omegaconf import OmegaConf

from megallm.checkpoint.hf import read_hf_folder, read_hf_model_files, read_json, write_hf_folder
from megallm.checkpoint.portable import PortableState, apply_state, gather_state
from megallm.checkpoint.saving import filled_up, load_checkpoint, mount_point, size_text, write_checkpoint
from megallm.checkpoint.state import (
    STATE_FILE,
    WEIGHTS_FILE,
    RunState,
    complete_checkpoints,
    is_step_folder_name,
    read_state,
    read_weights,
)
from megallm.checkpoint.verify import verified_state
from megallm.config import RunConfig, batch_layout, check_config, compose_config, config_from_yaml, resolved_precision
from megallm.data.tokenizer import load_tokenizer, tokenizer_files, tokenizer_hash
from megallm.engine.engine import ParallelEngine
from megallm.errors import ConfigError, ConversionError, VerificationError, WorldError
from megallm.extras import require
from megallm.files import (
    HF_CONFIG_FILE,
    TOKENIZER_FILE,
    nearest_existing,
    partial_path,
    read_only_filesystem,
)
from megallm.model.config import ModelConfig
from megallm.model.flops import parameter_count
from megallm.model.weights import model_from_weights
from megallm.parallel.dims import CLI_OPTIONS, ParallelDims
from megallm.parallel.distributed import distributed, init_distributed
from megallm.parallel.local_world import run_local_world
from megallm.run_layout import CHECKPOINTS_DIR, RUN_CONFIG_FILE, RunPaths

FP32_BYTES = 4
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # export's --dtype


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- sources ----------------------------------------------------------------------------------
def is_hf_folder(path: Path) -> bool:
    return (path / HF_CONFIG_FILE).is_file() and not (path / STATE_FILE).is_file()


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the newest complete one under a checkpoints folder or a run folder
    (in its checkpoint.dir when its config.yaml sets one, else in <run>/checkpoints)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    # A checkpoint folder (step_NNNNNNNN) carries config.yaml too: only a run folder's names its checkpoint.dir.
    run = RunPaths.of_folder(path)
    configured = run.checkpoints if run.keeps_checkpoints_elsewhere and not is_step_folder_name(path.name) else None
    for root in (path, configured or path / CHECKPOINTS_DIR):
        found = complete_checkpoints(root)
        if found:
            return found[-1]
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    if configured is not None:
        raise ConversionError(f"{path} is a run folder whose checkpoint.dir {configured} holds no step_NNNNNNNN "
                              "checkpoints; pass a checkpoint folder such as CHECKPOINT_DIR/step_00000300")
    raise ConversionError(f"{path} is not a megallm checkpoint ({STATE_FILE} missing) and holds no step_NNNNNNNN "
                          "checkpoints; pass a checkpoint folder such as runs/NAME/checkpoints/step_00000300")


def _fit_batch(cfg: RunConfig, dp: int) -> None:
    """Keep the saved batch if it splits over `dp` data-parallel ranks, else use one that does:
    a conversion trains nothing, and the resuming run sets its own batch (and sequence length: an
    import's config holds the default train.seq_len, kept here within the model's context)."""
    context = cfg.model.max_position_embeddings
    if context and cfg.train.seq_len > context:
        cfg.train.seq_len = context
    try:
        batch_layout(cfg.train, dp)
    except ConfigError:
        cfg.train.micro_batch_size, cfg.train.global_batch_tokens = 1, cfg.train.seq_len * dp


def _layout_overrides(model: dict, layout: ParallelDims) -> dict:
    return {"model": model, "parallel.tp": layout.tp, "parallel.pp": layout.pp,
            "parallel.zero_stage": layout.zero_stage}


def _engine_for(cfg: RunConfig, layout: ParallelDims) -> ParallelEngine:
    """Start this rank's process group and build the engine of `layout` (no data, no training)."""
    _fit_batch(cfg, layout.dp)
    ctx = init_distributed(layout.tp, layout.pp, layout.zero_stage)
    return ParallelEngine(cfg, ctx, resolved_precision(cfg.train.precision, on_gpu=False))


def _gather_worker(checkpoint: Path, out_file: Path, with_optimizer: bool) -> None:
    state = read_state(checkpoint)
    cfg, _ = config_from_yaml((checkpoint / RUN_CONFIG_FILE).read_text(), {"model": state.model})
    assert state.layout is not None  # as _gather_to_file's
    engine = _engine_for(cfg, state.layout)
    load_checkpoint(engine, checkpoint)
    portable = gather_state(engine, cfg.model, with_optimizer=with_optimizer)
    if portable is not None:
        portable.save(out_file)


def _gather_to_file(checkpoint: Path, state: RunState, with_optimizer: bool, out_file: Path) -> Path:
    """Start the layout's ranks of the (verified) checkpoint and save its layout-free state to `out_file`."""
    assert state.layout is not None, "a weights-only checkpoint is read from its consolidated file, not gathered"
    progress(f"reading {checkpoint} ({state.layout}) with {state.layout.world_size} CPU process(es)")
    try:
        run_local_world(state.layout.world_size, _gather_worker, checkpoint, out_file, with_optimizer)
    except WorldError as exc:
        raise ConversionError(f"reading {checkpoint} failed: {exc}") from None
    return out_file


def _read_verified(checkpoint: Path, state: RunState, with_optimizer: bool, workdir: Path) -> PortableState:
    """The layout-free state of a checkpoint whose files verified (starts its layout's ranks if needed,
    gathering into `workdir`)."""
    if state.weights_only or (not with_optimizer and (checkpoint / WEIGHTS_FILE).is_file()):
        return PortableState(weights=read_weights(checkpoint))
    return PortableState.load(_gather_to_file(checkpoint, state, with_optimizer, workdir / "gathered.pt"))


def read_checkpoint_state(checkpoint: Path, with_optimizer: bool, workdir: Path) -> PortableState:
    """The layout-free state of a megallm checkpoint (starts its layout's ranks if needed, gathering
    into `workdir`); every file's checksum is verified first."""
    return _read_verified(checkpoint, verified_state(checkpoint), with_optimizer, workdir)


def _checkpoint_weights(checkpoint: Path, state: RunState) -> dict[str, torch.Tensor]:
    """The canonical weights of a checkpoint whose files verified."""
    with tempfile.TemporaryDirectory(prefix="megallm-read-") as workdir:
        portable = _read_verified(checkpoint, state, with_optimizer=False, workdir=Path(workdir))
        return {name: tensor.clone() for name, tensor in portable.weights.items()}  # off the mmap'd file


def read_model(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig, Optional[Path]]:
    """(canonical weights, model config, tokenizer file or None) of a Hugging Face Llama folder
    or a megallm checkpoint of any layout."""
    path = Path(path)
    if is_hf_folder(path):
        weights, cfg = read_hf_folder(path)
        tokenizer = path / TOKENIZER_FILE
        return weights, cfg, tokenizer if tokenizer.is_file() else None
    checkpoint = resolve_checkpoint(path)
    state = verified_state(checkpoint)
    return _checkpoint_weights(checkpoint, state), ModelConfig(**state.model), checkpoint_tokenizer(checkpoint)


def checkpoint_tokenizer(checkpoint: Path) -> Optional[Path]:
    """The checkpoint's own tokenizer.json, else its corpus's (older checkpoints), else None."""
    own = checkpoint / TOKENIZER_FILE
    if own.is_file():
        return own
    config = checkpoint / RUN_CONFIG_FILE
    if config.is_file():
        data = (yaml.safe_load(config.read_text()) or {}).get("data", {})
        for candidate in (data.get("tokenizer"), Path(data.get("path") or "") / TOKENIZER_FILE):
            if candidate and Path(candidate).is_file():
                return Path(candidate)
    return None


# ---- megallm checkpoints under a chosen layout --------------------------------------------------
def check_layout(model: ModelConfig, layout: ParallelDims, config_yaml: str) -> None:
    """Refuse a layout the model cannot be split into, naming the tool's options."""
    if min(layout.tp, layout.pp, layout.dp) < 1:
        raise ConversionError(f"--tp, --pp and --dp must be >= 1, got {layout.tp}, {layout.pp}, {layout.dp}")
    problems = ParallelDims.problems(model, layout.tp, layout.pp, layout.zero_stage, layout.world_size, CLI_OPTIONS)
    if not problems:
        cfg, _ = config_from_yaml(config_yaml, _layout_overrides(asdict(model), layout))
        _fit_batch(cfg, layout.dp)
        try:
            check_config(cfg, layout.world_size)
        except ConfigError as exc:
            problems = [str(exc)]
    if problems:
        raise ConversionError(f"layout {layout} does not fit: {problems[0]}")


def _write_worker(state_file: Path, out: Path, layout: ParallelDims, config_yaml: str, run_state: RunState,
                  tokenizer: Optional[dict]) -> None:
    state = PortableState.load(state_file)
    cfg, config_yaml = config_from_yaml(config_yaml, _layout_overrides(run_state.model, layout))
    engine = _engine_for(cfg, layout)
    apply_state(engine, state, cfg.model)
    saved = RunState(**{**asdict(run_state), "layout": layout, "files": {}, "weights_only": False})
    write_checkpoint(engine, out, saved, config_yaml, engine.ctx.rank,
                     tokenizer_files=tokenizer if engine.ctx.is_main else None)


def write_megallm_checkpoint(state_file: Path, out: Path, layout: ParallelDims, config_yaml: str,
                             run_state: RunState, tokenizer: Optional[dict]) -> Path:
    """Start `layout`'s ranks and save the PortableState in `state_file` as a checkpoint of that layout
    at `out`; `tokenizer`: {name: text} of its tokenizer files."""
    progress(f"writing {out} ({layout}) with {layout.world_size} CPU process(es)")
    try:
        run_local_world(layout.world_size, _write_worker, state_file, out, layout, config_yaml, run_state,
                        tokenizer)
    except WorldError as exc:
        raise ConversionError(f"writing {out} failed: {exc}") from None
    return out


def _refuse_existing(out: Path) -> None:
    if out.exists():
        raise ConversionError(f"{out} exists already; choose a new output folder or remove it")


@contextlib.contextmanager
def writing_output(out: Path, needed_bytes: int, source: Path) -> Iterator[Path]:
    """Around a conversion that writes the folder `out` (and temporary files beside it, about
    `needed_bytes` in all) from `source`; yields out's parent folder. An output folder that cannot
    be written, or whose filesystem has less than `needed_bytes` free, is refused before anything
    is read; a filesystem that fills up (or fails) while writing is one line, with `<out>.partial`
    removed. `source` is only read."""
    out = Path(out).absolute()
    parent = out.parent
    existing = nearest_existing(parent)  # the folder the output's folders go into
    if not existing.is_dir():
        raise ConversionError(f"cannot write {out}: {existing} is not a folder; choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "on a read-only filesystem" if read_only_filesystem(existing) else "not writable by this user"
        raise ConversionError(f"cannot write {out}: {existing} is {why}; choose another output folder")
    free = shutil.disk_usage(existing).free
    advice = f"free some space or choose an output folder on a larger filesystem ({source} is intact)"
    if free < needed_bytes:
        raise ConversionError(f"no space left on {mount_point(existing)} for {out}: it needs about "
                              f"{size_text(needed_bytes)}, {size_text(free)} free; {advice}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        yield parent
    except Exception as error:
        shutil.rmtree(partial_path(out), ignore_errors=True)
        if filled_up(error, existing):
            raise ConversionError(f"no space left on {mount_point(existing)} while writing {out}: it needs about "
                                  f"{size_text(needed_bytes)}; the partial output was removed; {advice}") from None
        if isinstance(error, OSError) and error.strerror:  # e.g. a filesystem that turned read-only
            raise ConversionError(f"writing {out} failed: {error.strerror} ({error.filename or parent}); "
                                  f"the partial output was removed ({source} is intact)") from None
        raise
    except BaseException:
        shutil.rmtree(partial_path(out), ignore_errors=True)
        raise


# ---- what a conversion writes (about; the free-space check before it starts) --------------------
def _parameters(model: dict) -> int:
    return parameter_count(ModelConfig(**model)).total


def reshard_bytes(saved: RunState) -> int:
    """Beside OUT the gathered state (fp32 weights and, unless weights-only, Adam's two moments),
    then OUT: a checkpoint about as large as the source."""
    return _parameters(saved.model) * FP32_BYTES * (1 if saved.weights_only else 3) + sum(saved.files.values())


def export_bytes(saved: RunState, dtype: str) -> int:
    """The weights in `dtype` (the tokenizer and config files are small beside them)."""
    return _parameters(saved.model) * DTYPES[dtype].itemsize


def import_bytes(weights: dict[str, torch.Tensor], layout: Optional[ParallelDims]) -> int:
    """Weights-only: consolidated.pt; under a layout, the fp32 weights beside OUT for its ranks, then
    OUT (fp32 weights, an optimizer with no state yet)."""
    weights_bytes = sum(t.numel() for t in weights.values()) * FP32_BYTES
    return weights_bytes if layout is None else 2 * weights_bytes


def reshard(source: Path, out: Path, layout: ParallelDims) -> Path:
    """megallm checkpoint -> the same training state (weights, Adam, schedule, data position) under `layout`.
    The checkpoint is verified before anything is written."""
    out = Path(out)
    _refuse_existing(out)
    checkpoint = resolve_checkpoint(source)
    saved = verified_state(checkpoint)
    config_yaml = (checkpoint / RUN_CONFIG_FILE).read_text()
    check_layout(ModelConfig(**saved.model), layout, config_yaml)
    tokenizer = checkpoint_tokenizer(checkpoint)
    with writing_output(out, reshard_bytes(saved), checkpoint) as parent, \
            tempfile.TemporaryDirectory(prefix="megallm-reshard-", dir=parent) as workdir:
        if saved.weights_only:
            state_file = Path(workdir) / "state.pt"
            PortableState(weights=read_weights(checkpoint)).save(state_file)
        else:
            state_file = _gather_to_file(checkpoint, saved, True, Path(workdir) / "gathered.pt")
        return write_megallm_checkpoint(state_file, out, layout, config_yaml, saved,
                                        tokenizer_files(tokenizer) if tokenizer else None)


# ---- Hugging Face -----------------------------------------------------------------------------


def export_hf(source: Path, out: Path, dtype: str = "float32", tokenizer: Optional[Path] = None,
              max_shard_bytes: int = 2 << 30, verify: bool = True) -> tuple[Path, Optional[float]]:
    """megallm checkpoint (any layout) -> Hugging Face Llama folder; returns it and the verified max |logit diff|."""
    out = Path(out)
    _refuse_existing(out)
    checkpoint = resolve_checkpoint(source)
    tokenizer = Path(tokenizer) if tokenizer else checkpoint_tokenizer(checkpoint)
    if tokenizer is None or not tokenizer.is_file():
        raise ConversionError(f"no tokenizer found for {checkpoint} (no {TOKENIZER_FILE} in it or in its corpus); "
                              "pass --tokenizer PATH/tokenizer.json")
    saved = verified_state(checkpoint)
    if saved.model.get("bidirectional"):
        raise ConversionError(f"{checkpoint} is a bidirectional encoder (train.objective=mlm): transformers' "
                              "LlamaForCausalLM attends causally and would compute another model, so it is not "
                              "exported; fine-tune and evaluate it with megallm (launch/finetune.py)")
    if saved.model.get("num_labels"):
        raise ConversionError(f"{checkpoint} is a sequence classifier (launch/finetune.py finetune.task=classify); "
                              "only language models are exported to Hugging Face (its head, with a bias and "
                              "model.pooling, is not LlamaForSequenceClassification's)")
    cfg = ModelConfig(**saved.model)
    with writing_output(out, export_bytes(saved, dtype), checkpoint):
        weights = {name: tensor.to(DTYPES[dtype]) for name, tensor in _checkpoint_weights(checkpoint, saved).items()}
        folder = write_hf_folder(weights, cfg, out, tokenizer_file=tokenizer, max_positions=saved.seq_len or 2048,
                                 original=saved.hf_model_files, max_shard_bytes=max_shard_bytes)
    return folder, (verify_hf(folder, weights, cfg) if verify else None)


def import_hf(folder: Path, out: Path, layout: Optional[ParallelDims], verify: bool = True) -> Path:
    """Hugging Face Llama folder -> megallm checkpoint at step 0: weights-only (layout None) or,
    under `layout`, a DeepSpeed checkpoint with a fresh optimizer. A run resuming either
    trains with its own optimizer settings and LR schedule (megallm.checkpoint.saving).

    Before writing anything, megallm's logits on the read weights are compared with
    transformers' on the folder (`verify_hf`) when transformers is installed. The
    checkpoint keeps the folder's tokenizer files and its config.json and
    generation_config.json (RunState.hf_model_files), for a faithful export."""
    out = Path(out)
    _refuse_existing(out)
    if not Path(folder, HF_CONFIG_FILE).is_file():
        raise ConversionError(f"{folder} is not a Hugging Face model folder ({HF_CONFIG_FILE} missing)")
    weights, model, tokenizer = read_model(Path(folder))
    cfg, _ = compose_config(["+model=tiny"])
    cfg.model = model
    config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    if layout is not None:
        check_layout(model, layout, config_yaml)
    with writing_output(out, import_bytes(weights, layout), Path(folder)) as parent:
        if verify and transformers_installed():
            worst = verify_hf(Path(folder), weights, model)
            progress(f"{folder}: transformers computes megallm's logits (max |diff| {worst:.2e})")
        run_state = RunState(model=model.to_dict(), weights_only=layout is None,
                             tokenizer_sha256=tokenizer_hash(load_tokenizer(tokenizer)) if tokenizer else "",
                             hf_model_files=read_hf_model_files(Path(folder)))
        tokenizer_texts = tokenizer_files(tokenizer) if tokenizer else None
        if layout is None:
            return write_checkpoint(None, out, run_state, config_yaml, rank=0, consolidated=weights,
                                    tokenizer_files=tokenizer_texts)
        with tempfile.TemporaryDirectory(prefix="megallm-import-", dir=parent) as workdir:
            state_file = Path(workdir) / "state.pt"
            PortableState(weights=weights).save(state_file)
            return write_megallm_checkpoint(state_file, out, layout, config_yaml, run_state, tokenizer_texts)


def transformers_installed() -> bool:
    return importlib.util.find_spec("transformers") is not None


def verify_hf(folder: Path, weights: Optional[dict[str, torch.Tensor]] = None, cfg: Optional[ModelConfig] = None,
              sequences: int = 4, length: int = 64, tolerance: Optional[float] = None) -> float:
    """Logits of `transformers`' LlamaForCausalLM on `folder` vs megallm's on the same weights
    (`weights`, else the folder's own); raises VerificationError above `tolerance`
    (default 1e-4 for float32 weights, 2e-2 otherwise). Returns the max |difference|."""
    require("hf", "checking logits in transformers")
    # optional: transformers is the hf extra
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging
    transformers_logging.disable_progress_bar()
    if weights is None:
        weights, cfg = read_hf_folder(folder)
    assert cfg is not None and cfg.vocab_size is not None, "verify_hf: weights without their ModelConfig"
    low_precision = next(iter(weights.values())).dtype != torch.float32
    tolerance = tolerance if tolerance is not None else (2e-2 if low_precision else 1e-4)
    with distributed(deepspeed=False):
        ours = model_from_weights({k: v.float() for k, v in weights.items()}, cfg, device="cpu").eval()
        theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tokens = torch.randint(0, cfg.vocab_size, (sequences, length), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = ours(tokens).transpose(0, 1)[..., : cfg.vocab_size]  # [s, b, v] -> [b, s, v]
            got = theirs(tokens).logits
    worst = (expected - got).abs().max().item()
    if not worst <= tolerance:
        raise VerificationError(f"{folder} does not reproduce megallm's logits in transformers: max |difference| "
                                f"{worst:.3g} > {tolerance:g}; the conversion is wrong for this model, "
                                "please report it")
    return worst


def describe(path: Path) -> str:
    """One line on what a checkpoint or folder holds."""
    if is_hf_folder(path):
        config = read_json(path / HF_CONFIG_FILE)
        return f"Hugging Face {config.get('architectures', ['?'])[0]} at {path}"
    checkpoint = resolve_checkpoint(path)
    state = verified_state(checkpoint)
    verified = (f"{len(state.checksums)} files verified (SHA-256)" if state.checksums
                else f"{len(state.files)} file sizes verified (no checksums: an older checkpoint)")
    # After the first ": ", what a run resuming it needs (the model.* overrides); the tests parse it so.
    if state.weights_only:
        return f"megallm weights-only checkpoint {checkpoint} ({verified}): {model_overrides(state.model)}"
    return (f"megallm checkpoint {checkpoint} (step {state.step}, {state.layout}; {verified}): "
            f"{model_overrides(state.model)}")


def model_overrides(model: dict) -> str:
    """The `model.*` overrides that give this model config (what a run resuming it must use)."""
    pairs = []
    for key, value in ModelConfig(**model).to_dict().items():
        if key == "rope_scaling":
            value = {k: v for k, v in value.items() if v is not None}
        for name, leaf in (value.items() if isinstance(value, dict) else [(None, value)]):
            pairs.append(f"model.{key}{'.' + name if name else ''}={'null' if leaf is None else leaf}")
    return " ".join(pairs)
