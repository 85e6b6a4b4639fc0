"""Sequence parallelism gives the same loss and gradients as plain tensor parallelism.

(The same TP=2 processes also check the dry run's per-rank parameter count against the
parameters a rank really builds.)

Sequence parallelism is for GPUs (NCCL): gloo has no reduce-scatter and megatron-core's
sequence-parallel linear layers allocate their buffers with `torch.cuda.current_device()`,
so `pretrain.py` refuses it on CPU. To check megallm's placement of the scatter / gather
points and the norm-gradient reduction anyway, these two gloo processes give
megatron-core a reduce-scatter built from all-reduce (same result, more traffic) and a
`current_device` of "cpu", and compare TP=2 with and without sequence parallelism on the
same weights and batch (with document masking: the doc ids stay full length while the
hidden states are scattered). The test-only stand-ins live in this file.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import run_ranks

WORLD = 2
EOS = 0


def _reduce_scatter_by_all_reduce(output, input_, group=None, async_op=False):
    import torch.distributed as dist

    full = input_.clone()
    dist.all_reduce(full, group=group)
    output.copy_(full.chunk(dist.get_world_size(group))[dist.get_rank(group)])
    return _Finished() if async_op else None


class _Finished:
    """The handle of an "asynchronous" collective that already ran."""

    def wait(self) -> None:
        pass


def _worker() -> list[str]:
    torch.cuda.current_device = lambda: "cpu"
    from megatron.core.tensor_parallel import layers, mappings

    layers.dist_reduce_scatter_func = mappings.dist_reduce_scatter_func = _reduce_scatter_by_all_reduce
    from megallm.model.config import ModelConfig
    from megallm.model.llama import build_model
    from megallm.model.packing import document_ids
    from megallm.parallel.distributed import init_distributed, shutdown
    from megallm.parallel.memory import stage_parameters

    init_distributed(tp=2, deepspeed=False)
    lines = []
    for tied in (True, False):
        cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=96,
                          vocab_size=300, tie_embeddings=tied)
        generator = torch.Generator().manual_seed(0)
        tokens, labels = torch.randint(0, 300, (2, 2, 16), generator=generator)  # same batch on both ranks
        tokens[:, [5, 11]] = EOS  # several documents per row: masked attention
        results = {}
        for sp in (False, True):
            model = build_model(cfg, seed=5, sequence_parallel=sp)
            assert sum(p.numel() for p in model.parameters()) == stage_parameters(cfg, tp=2, pp=1)
            loss = model(tokens, labels, doc_ids=document_ids(tokens, EOS))
            loss.backward()
            results[sp] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
        (loss_tp, grads_tp), (loss_sp, grads_sp) = results[False], results[True]
        assert abs(loss_sp - loss_tp) <= 1e-6 * abs(loss_tp), (loss_sp, loss_tp)
        for name, grad in grads_tp.items():
            torch.testing.assert_close(grads_sp[name], grad, rtol=1e-5, atol=1e-7, msg=name)
        lines.append(f"tied={tied} loss={loss_sp:.6f} params={len(grads_sp)}")
    shutdown()
    return lines


@pytest.mark.slow
def test_sequence_parallel_matches_tensor_parallel():
    for lines in run_ranks(WORLD, _worker):
        assert [line.split()[0] for line in lines] == ["tied=True", "tied=False"]
