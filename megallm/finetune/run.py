"""A fine-tuning run put together from its config: the pretrained model and its tokenizer, the
labelled rows, the objective, validation, and the trainer (megallm.train.build.assemble_trainer).

The model is the pretrained one (`finetune.init`: a megallm checkpoint of any layout, or a
Hugging Face Llama folder); a classifier replaces its language-model output with a head of
one output per label (model.num_labels, model.pooling), which starts from its own seed.
Every other weight starts from the pretrained values, on every layout (the canonical weights
are set into the engine as a reshard does: megallm.checkpoint.portable.apply_weights); the
optimizer starts fresh. A fine-tuning that finds its own checkpoint resumes from it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from megallm.checkpoint.convert import checkpoint_tokenizer, is_hf_folder, read_model, resolve_checkpoint
from megallm.checkpoint.hf import read_json
from megallm.checkpoint.hf_config import model_config_from_hf
from megallm.checkpoint.portable import apply_weights
from megallm.checkpoint.state import read_state
from megallm.config import ConfigError, FinetunePooling, FinetuneTask, RunConfig
from megallm.data.tokenizer import load_tokenizer, special_tokens, tokenizer_files, tokenizer_hash
from megallm.errors import DataError
from megallm.files import TOKENIZER_FILE
from megallm.finetune import examples
from megallm.finetune.batches import (
    Encoded,
    ExampleBatches,
    classify_batch,
    encode_classification,
    encode_pairs,
    window_batch,
)
from megallm.finetune.objectives import ClassifyObjective, SupervisedObjective
from megallm.finetune.validation import ClassificationValidation, SupervisedValidation
from megallm.model.config import Pooling
from megallm.parallel.distributed import DistContext
from megallm.train.build import RunData, assemble_trainer
from megallm.train.trainer import Trainer


def pretrained_model(init: Optional[str]) -> dict:
    """The model config of `finetune.init` (a megallm checkpoint or run folder, or a Hugging Face folder)."""
    if not init:
        raise ConfigError("finetune.init is required: the pretrained model, a megallm checkpoint (or its run "
                          "folder) or a Hugging Face Llama folder")
    path = Path(init)
    if is_hf_folder(path):
        return model_config_from_hf(read_json(path / "config.json"), name=path.name).to_dict()
    model = dict(read_state(resolve_checkpoint(path)).model)
    return {**model, "nsp_head": False}  # pretraining's next-sentence head is not fine-tuned


@dataclass
class LabelledData:
    """The rows of a fine-tuning as token arrays, with what describes them."""

    train: Encoded
    val: Encoded
    names: list[str]  # classification: class i's label; supervised pairs: empty
    start_id: int  # the token every example begins with (the tokenizer's document start)


def read_data(cfg: RunConfig, tokenizer_file: Path, say) -> LabelledData:
    f = cfg.finetune
    if not f.train_file:
        raise ConfigError("finetune.train_file is required: a .jsonl or .csv file of labelled rows")
    tok = load_tokenizer(tokenizer_file)
    tokens = special_tokens(tokenizer_file, tok=tok)
    start, eos, seq_len = tokens.document_start_id, tokens.eos_id, cfg.train.seq_len
    if f.task == "classify":
        train = examples.read_classification(Path(f.train_file), f.text_field, f.label_field)
        val = examples.read_classification(Path(f.val_file), f.text_field, f.label_field) if f.val_file else None
        if val is None:
            train, val = examples.hold_out(train, f.val_fraction, key=lambda row: row.text)
        names = examples.label_names(train)
        examples.check_labels(val, names)
        data = LabelledData(encode_classification(train, tok, start, eos, seq_len, names),
                            encode_classification(val, tok, start, eos, seq_len, names), names, start)
    else:
        train_pairs = examples.read_pairs(Path(f.train_file), f.prompt_field, f.response_field)
        val_pairs = examples.read_pairs(Path(f.val_file), f.prompt_field, f.response_field) if f.val_file else None
        if val_pairs is None:
            train_pairs, val_pairs = examples.hold_out(train_pairs, f.val_fraction,
                                                       key=lambda row: row.prompt + row.response)
        data = LabelledData(encode_pairs(train_pairs, tok, start, eos, seq_len),
                            encode_pairs(val_pairs, tok, start, eos, seq_len), [], start)
    cut = data.train.truncated + data.val.truncated
    if cut:
        say(f"note: {cut} example(s) are longer than train.seq_len={seq_len} tokens and were cut")
    return data


def shape_model(cfg: RunConfig, data: LabelledData) -> None:
    """The pretrained shape with the task's output: a classifier's head and pooling, or none."""
    f, model = cfg.finetune, cfg.model
    if f.task == FinetuneTask.classify:
        model.num_labels = len(data.names)
        if f.pooling == FinetunePooling.auto:
            model.pooling = Pooling.mean if model.bidirectional else Pooling.last
        else:
            model.pooling = Pooling(f.pooling)
    elif model.bidirectional:
        raise ConfigError(f"finetune.task=sft trains next-token prediction, and {f.init} is a bidirectional encoder "
                          "(train.objective=mlm); fine-tune it with finetune.task=classify")
    problems = model.check()
    if problems:
        raise ConfigError(problems[0])


def build_finetune(cfg: RunConfig, config_yaml: str, ctx: DistContext, weights: dict[str, torch.Tensor],
                   tokenizer_file: Path, data: LabelledData) -> Trainer:
    """The Trainer of this rank: fresh from the pretrained `weights`, or resumed from its own checkpoint."""
    f, mbs = cfg.finetune, cfg.train.micro_batch_size
    objective: ClassifyObjective | SupervisedObjective
    evaluator: ClassificationValidation | SupervisedValidation
    make: Callable[[dict, torch.device], object]  # a micro-batch from its rows' arrays (ExampleBatches)
    if f.task == "classify":
        objective, make = ClassifyObjective(cfg.model.pooling), classify_batch
        evaluator = ClassificationValidation(data.val, make, data.names, cfg.train.eval_every, mbs, ctx)
    else:
        objective, make = SupervisedObjective(data.start_id if cfg.data.document_masking else None), window_batch
        evaluator = SupervisedValidation(data.val, make, cfg.train.eval_every, mbs, ctx)

    def open_batches(consumed: int) -> ExampleBatches:
        return ExampleBatches(data.train, make, micro_batch_size=mbs, seed=cfg.train.seed, dp_rank=ctx.coords.dp,
                              dp=ctx.dims.dp, consumed_samples=consumed, device=ctx.device)

    def initialize(engine) -> None:
        if not f.pretrained:
            if ctx.is_main:
                print(f"training {f.init}'s model from random initial weights (finetune.pretrained=false)", flush=True)
            return
        new = apply_weights(engine, weights)
        if ctx.is_main:
            print(f"fine-tuning {f.init}: pretrained weights loaded"
                  + (f"; new: {', '.join(sorted({n.rsplit('.', 1)[0] for n in new}))}" if new else ""), flush=True)

    run = RunData(objective=objective, open_batches=open_batches, evaluator=evaluator,
                  tokenizer_sha256=tokenizer_hash(load_tokenizer(tokenizer_file)),
                  tokenizer_files=tokenizer_files(tokenizer_file) if ctx.is_main else None, initialize=initialize)
    return assemble_trainer(cfg, config_yaml, ctx, run)


def pretrained_tokenizer(init: str, tokenizer: Optional[str]) -> Path:
    """The pretrained model's tokenizer.json (`tokenizer`, data.tokenizer, overrides it)."""
    path = Path(init)
    found = Path(tokenizer) if tokenizer else (
        path / TOKENIZER_FILE if is_hf_folder(path) else checkpoint_tokenizer(resolve_checkpoint(path)))
    if found is None or not found.is_file():
        raise DataError(f"no {TOKENIZER_FILE} found with {init}; the pretrained model's tokenizer is needed: "
                        "set data.tokenizer=PATH")
    return found


def pretrained_weights(init: str) -> dict[str, torch.Tensor]:
    """The pretrained model's canonical weights (a sharded checkpoint is gathered by worker processes)."""
    weights, _, _ = read_model(Path(init))
    return weights
