"""`launch/pretrain.py`'s logic: compose and check the config, then dry-run or train.

Everything that can be checked without a process group (config, corpus, tokenizer,
vocabulary) is checked first, so mistakes cost a second, not a cluster allocation.
Errors a user can fix end the program with one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
import warnings

from megallm.compose import available, compose_config
from megallm.config import ConfigError, RunConfig, batch_layout, check_config, planned_world_size
from megallm.data.shards import DataError

USAGE = """usage: torchrun [--nproc_per_node N] launch/pretrain.py +model=NAME [key=value ...] [--cfg]

Pretrain a Llama-style model. NAME is one of: {models}.
Overrides use Hydra syntax, e.g. train.steps=2000 parallel.zero_stage=2 data.path=data/mycorpus.
  train.dry_run=true   build on the meta device and print parameters, FLOPs and memory per rank
  --cfg                print the composed config (every key) and exit
Keys and their meaning: megallm/config.py; model shapes: conf/model/."""


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def _fail(message: str, every_rank: bool = False) -> int:
    if every_rank or _rank() == 0:
        prefix = f"[rank {_rank()}] " if every_rank else ""
        print(f"megallm: error: {prefix}{message}", file=sys.stderr, flush=True)
    return 2


def resolve_vocab(cfg: RunConfig, corpus_vocab: int) -> None:
    model = cfg.model
    if model.vocab_size is None:
        model.vocab_size = corpus_vocab
    elif model.vocab_size < corpus_vocab:
        raise ConfigError(
            f"model.vocab_size={model.vocab_size} is smaller than the corpus tokenizer's {corpus_vocab} tokens; "
            f"set model.vocab_size={corpus_vocab} (or null to follow the tokenizer)"
        )


def dry_run(cfg: RunConfig, world_size: int) -> str:
    """Build on the meta device and describe size, FLOPs and memory per rank."""
    from megallm.model.flops import flops_per_token, parameter_count
    from megallm.model.llama import build_model
    from megallm.parallel.distributed import init_distributed, shutdown
    from megallm.parallel.memory import estimate_memory

    world = planned_world_size(cfg, world_size)
    par = cfg.parallel
    dp = world // (par.tp * par.pp)
    _, micro_batches = batch_layout(cfg.train, dp)
    init_distributed(deepspeed=False)
    try:
        model = build_model(cfg.model, device="meta")
        built = sum(p.numel() for p in model.parameters())
    finally:
        shutdown()
    count = parameter_count(cfg.model)
    assert built == count.total, (built, count)
    # A dry run describes the GPU job unless told otherwise: "auto" means bf16 here.
    precision = "bf16" if cfg.train.precision == "auto" else cfg.train.precision
    lines = [
        f"model {cfg.model.name}: {count.total / 1e9:.3f}B parameters ({count.embedding / 1e6:.1f}M embedding"
        f"{', tied' if cfg.model.tie_embeddings else f', {count.output / 1e6:.1f}M output'}, "
        f"{count.blocks / 1e6:.1f}M in {cfg.model.num_layers} blocks)",
        f"training FLOPs per token at seq_len {cfg.train.seq_len}: {flops_per_token(cfg.model, cfg.train.seq_len) / 1e9:.2f} GFLOP",
        f"memory per rank ({precision}, micro-batch {cfg.train.micro_batch_size} x {cfg.train.seq_len}, "
        f"{world} rank(s) = TP {par.tp} x PP {par.pp} x DP {dp}, ZeRO-{par.zero_stage}, "
        f"activation checkpointing {cfg.train.activation_checkpointing}"
        f"{', sequence parallel' if par.sequence_parallel else ''}):",
    ]
    # bf16 runs on GPUs with fused attention kernels; fp32 is the CPU path with math attention.
    est = estimate_memory(cfg.model, seq_len=cfg.train.seq_len, micro_batch_size=cfg.train.micro_batch_size,
                          precision=precision, zero_stage=par.zero_stage, dp=dp, tp=par.tp, pp=par.pp,
                          micro_batches=micro_batches, recompute=cfg.train.activation_checkpointing,
                          sequence_parallel=par.sequence_parallel, fused_attention=precision == "bf16")
    lines.append(f"  weights {est.weights / 2**30:.2f} GiB | gradients {est.gradients / 2**30:.2f} GiB"
                 f" | optimizer {est.optimizer / 2**30:.2f} GiB | activations {est.activations / 2**30:.2f} GiB"
                 f" | total {est.total / 2**30:.2f} GiB")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(models=", ".join(available("model"))))
        return 0
    print_cfg = "--cfg" in argv
    overrides = [a for a in argv if a != "--cfg"]
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|tp_group is None).*")
    try:
        cfg, config_yaml = compose_config(overrides)
        if print_cfg:
            print(config_yaml)
            return 0
        check_config(cfg, world_size)
        corpus = None
        if not (cfg.train.dry_run and cfg.model.vocab_size is not None):
            from megallm.data.corpus import open_corpus

            corpus = open_corpus(cfg.data.path, cfg.data.tokenizer, (cfg.data.train_split, cfg.data.val_split))
            resolve_vocab(cfg, corpus.manifest.vocab_size)
        if cfg.train.dry_run:
            if _rank() == 0:
                print(dry_run(cfg, world_size))
            return 0
    except (ConfigError, DataError) as exc:
        return _fail(str(exc))
    return _train(cfg, config_yaml, corpus)


def _train(cfg: RunConfig, config_yaml: str, corpus) -> int:
    import torch

    from megallm.checkpoint.state import CheckpointError
    from megallm.parallel.distributed import init_distributed, shutdown
    from megallm.train.trainer import Trainer

    if cfg.parallel.sequence_parallel and not torch.cuda.is_available():
        return _fail("parallel.sequence_parallel=true needs GPUs with NCCL: gloo (CPU) has no reduce-scatter; "
                     "set parallel.sequence_parallel=false")
    ctx = init_distributed(cfg.parallel.tp, cfg.parallel.pp)
    try:
        if ctx.is_main and cfg.model.vocab_size > corpus.manifest.vocab_size:
            print(f"note: model.vocab_size={cfg.model.vocab_size} exceeds the tokenizer's "
                  f"{corpus.manifest.vocab_size} tokens; the extra embedding rows are never used", flush=True)
        Trainer(cfg, config_yaml, corpus, ctx).fit()
    except (CheckpointError, ConfigError) as exc:  # raised alike on every rank
        return _fail(str(exc))
    except DataError as exc:  # may be one rank's shard
        return _fail(str(exc), every_rank=True)
    finally:
        shutdown()
    return 0
