"""A dry run: the size, FLOPs and memory per rank of a config, built on the meta device.

Lets a user check a model and layout on a laptop before asking for a cluster
(`train.dry_run=true`, `train.dry_run_world_size=N` for the cluster's rank count).
"""

from __future__ import annotations

from megallm.config import RunConfig, batch_layout, planned_world_size
from megallm.model.flops import flops_per_token, parameter_count
from megallm.model.llama import build_model
from megallm.parallel.distributed import distributed
from megallm.parallel.memory import estimate_memory


def describe_dry_run(cfg: RunConfig, world_size: int) -> str:
    """Build on the meta device and describe size, FLOPs and memory per rank."""
    par = cfg.parallel
    dims = par.dims(planned_world_size(cfg, world_size))
    _, micro_batches = batch_layout(cfg.train, dims.dp)
    with distributed(deepspeed=False):  # a world of one: the TP layers want their group
        built = sum(p.numel() for p in build_model(cfg.model, device="meta").parameters())
    count = parameter_count(cfg.model)
    assert built == count.total, (built, count)
    # A dry run describes the GPU job unless told otherwise: "auto" means bf16 here.
    precision = "bf16" if cfg.train.precision == "auto" else cfg.train.precision
    lines = [
        f"model {cfg.model.name}: {count.total / 1e9:.3f}B parameters ({count.embedding / 1e6:.1f}M embedding"
        f"{', tied' if cfg.model.tie_embeddings else f', {count.output / 1e6:.1f}M output'}, "
        f"{count.blocks / 1e6:.1f}M in {cfg.model.num_layers} blocks)",
        f"training FLOPs per token at seq_len {cfg.train.seq_len}: "
        f"{flops_per_token(cfg.model, cfg.train.seq_len) / 1e9:.2f} GFLOP",
        f"memory per rank ({precision}, micro-batch {cfg.train.micro_batch_size} x {cfg.train.seq_len}, "
        f"{dims.world_size} rank(s) = {dims}, "
        f"activation checkpointing {cfg.train.activation_checkpointing}"
        f"{', sequence parallel' if par.sequence_parallel else ''}):",
    ]
    # bf16 runs on GPUs with fused attention kernels; fp32 is the CPU path with math attention.
    est = estimate_memory(cfg.model, seq_len=cfg.train.seq_len, micro_batch_size=cfg.train.micro_batch_size,
                          precision=precision, zero_stage=dims.zero_stage, dp=dims.dp, tp=dims.tp, pp=dims.pp,
                          micro_batches=micro_batches, recompute=cfg.train.activation_checkpointing,
                          sequence_parallel=par.sequence_parallel, fused_attention=precision == "bf16")
    lines.append(f"  weights {est.weights / 2**30:.2f} GiB | gradients {est.gradients / 2**30:.2f} GiB"
                 f" | optimizer {est.optimizer / 2**30:.2f} GiB | activations {est.activations / 2**30:.2f} GiB"
                 f" | total {est.total / 2**30:.2f} GiB")
    return "\n".join(lines)
