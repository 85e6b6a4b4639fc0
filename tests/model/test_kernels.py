"""The fast-path switches (`kernels.*`, `optim.fused`) against the plain path they replace.

In-process: the chunked loss gives the plain loss and gradients (vocabulary padding and
a chunk size that divides nothing included). As training runs: a tiny model trained with
every CPU-capable switch on (torch.compile of the blocks, chunked loss, fused AdamW)
follows the plain run's losses, on one rank and at TP=2. Tolerances are stated where
they are asserted: the switches reorder floating-point sums, nothing more.
"""

from __future__ import annotations

import pytest
import torch

from megallm.model.config import KernelConfig, ModelConfig
from megallm.model.llama import build_model
from tests.helpers import SMALL_MODEL, records, train


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_loss_matches_plain(world_of_one, tie):
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=64,
                      vocab_size=300, tie_embeddings=tie)  # padded to 384 rows: padding must take no probability
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 300, (3, 41), generator=generator)
    results = {}
    for loss in ("plain", "chunked"):
        model = build_model(cfg, seed=5, kernels=KernelConfig(loss=loss, loss_chunk_tokens=7))
        value = model(tokens[:, :-1], labels=tokens[:, 1:])
        value.backward()
        results[loss] = value.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (plain, plain_grads), (chunked, chunked_grads) = results["plain"], results["chunked"]
    assert abs(chunked.item() - plain.item()) < 1e-6 * plain.item()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_compiled_fused_path_trains_like_plain(small_corpus, tmp_path):
    """6 steps of a tiny model: the plain path on one rank against compile + chunked loss + fused AdamW
    at TP=2 (chunks of the vocabulary-parallel loss). Per-step losses within 2e-5 relative (float32 on
    CPU; the plain path's own TP=2 vs one-rank difference is of the same order)."""
    common = [*SMALL_MODEL, f"data.path={small_corpus}", "train.steps=6", "train.seq_len=64",
              "train.global_batch_tokens=512", "train.micro_batch_size=4", "train.eval_every=0",
              "checkpoint.every=0", "logging.every=1", "optim.warmup_steps=2", "data.num_workers=0"]
    fast = ["kernels.compile=true", "kernels.loss=chunked", "kernels.loss_chunk_tokens=96", "optim.fused=true"]
    runs = {"plain": ([], 1), "fast": ([*fast, "parallel.tp=2"], 2)}
    losses = {}
    for name, (extra, ranks) in runs.items():
        result = train([*common, *extra, f"run_dir={tmp_path / name}"], nproc=ranks)
        assert result.returncode == 0, result.err[-3000:]
        losses[name] = [r["loss"] for _, r in sorted(records(tmp_path / name, "train").items())]
    assert len(losses["plain"]) == 6 and losses["plain"][-1] < losses["plain"][0]
    for step, (got, want) in enumerate(zip(losses["fast"], losses["plain"], strict=True), start=1):
        assert abs(got - want) <= 2e-5 * want, f"step {step}: {got} vs plain {want}"
