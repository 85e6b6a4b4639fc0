"""Document masking: a packed batch computes exactly what its segments compute one by one.

Convention (megallm.model.packing): the end-of-document token starts the next segment,
positions restart at every segment, and a token attends only within its segment. Then
the mean loss of a packed batch is (sum over segments of their token-loss sums) / tokens,
and so are its gradients, which the reference below computes by running every segment as
a batch of its own.

Tolerances (docs/testing/tolerances.md): the packed batch and its reference add the same 48 token
terms (2 rows of 24 inputs) in other orders, from matmuls of other shapes, which MKL blocks
differently for each shape and each CPU vector width. fp32 rounding in a sum of n terms is at most
about n eps (eps = 2^-23 = 1.19e-7) relative to the sum of their magnitudes, so they agree within
48 eps; what the tests must catch (a document seeing another) moves the loss by 4e-4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megallm.model import attention
from megallm.model.attention import block_causal_mask, self_attention, varlen_segments
from megallm.model.packing import document_ids, document_positions
from tests.model.inputs import CFG, EOS, packed_windows

EPS = torch.finfo(torch.float32).eps
REORDERED = 48 * EPS  # 5.7e-6: the same 48 token terms added in another order (see the module docstring)


def segments(windows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) of every segment: maximal runs of equal doc id within a row of the inputs."""
    tokens = windows[:, :-1]
    doc_ids = document_ids(tokens, EOS)
    out = []
    for row in range(tokens.shape[0]):
        starts = [0] + [i for i in range(1, tokens.shape[1]) if doc_ids[row, i] != doc_ids[row, i - 1]]
        for start, end in zip(starts, starts[1:] + [tokens.shape[1]]):
            out.append((windows[row, start:end], windows[row, start + 1:end + 1]))
    return out


def loss_and_grads(model, loss_fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def packed_loss(model, windows: torch.Tensor, masking: bool = True) -> torch.Tensor:
    tokens, labels = windows[:, :-1], windows[:, 1:]
    return model(tokens, labels, doc_ids=document_ids(tokens, EOS) if masking else None)


def segments_loss(model, windows: torch.Tensor) -> torch.Tensor:
    """Each segment alone as a batch of one; token-loss sums combined into the packed mean."""
    total = sum(model(inputs[None], labels[None]) * len(inputs) for inputs, labels in segments(windows))
    return total / windows[:, :-1].numel()


def test_doc_ids_and_positions_restart_at_each_end_of_document():
    a1, a2, a3, b1, b2, c1 = 10, 11, 12, 13, 14, 15
    tokens = torch.tensor([[a1, a2, a3, EOS, b1, b2, EOS, c1],
                           [EOS, a1, EOS, EOS, b1, b2, b1, c1]])
    doc_ids = document_ids(tokens, EOS)
    assert doc_ids.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2], [1, 1, 2, 3, 3, 3, 3, 3]]
    assert document_positions(doc_ids).tolist() == [[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 0, 0, 1, 2, 3, 4]]


def test_rotary_takes_each_tokens_own_position(world_of_one, monkeypatch):
    """RoPE is relative, so within-segment attention cannot show the restart: check the plumbing."""
    from megallm.model.layers import RotaryEmbedding
    from megallm.model.llama import build_model

    rotary = RotaryEmbedding(head_dim=8, theta=10000.0)
    positions = torch.tensor([[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]])
    cos, sin = rotary(positions)  # [s, b, 1, d]
    table_cos, table_sin = rotary(torch.arange(5)[None])  # [s, 1, 1, d]: positions 0..s-1
    assert cos.shape == (5, 2, 1, 8) and cos.dtype == torch.float32
    for row in range(2):  # the same angles in tensors of other shapes, which a vector kernel may split between its
        # vector body and its scalar tail otherwise: within 2 eps (a wrong position turns the first pair by 1 radian)
        torch.testing.assert_close(cos[:, row], table_cos[positions[row], 0], rtol=0, atol=2 * EPS)
        torch.testing.assert_close(sin[:, row], table_sin[positions[row], 0], rtol=0, atol=2 * EPS)

    seen, original = [], RotaryEmbedding.forward

    def recording_forward(self, positions):
        seen.append(positions)
        return original(self, positions)

    monkeypatch.setattr(RotaryEmbedding, "forward", recording_forward)
    tokens = packed_windows()[:, :-1]
    build_model(CFG)(tokens, doc_ids=document_ids(tokens, EOS))
    assert len(seen) == CFG.num_layers
    assert all(torch.equal(p, document_positions(document_ids(tokens, EOS))) for p in seen)


def test_mask_matches_loops_and_segments_cover_the_rows():
    tokens = packed_windows()[:, :-1]
    doc_ids = document_ids(tokens, EOS)
    b, s = tokens.shape
    reference = torch.zeros(b, 1, s, s, dtype=torch.bool)
    for row in range(b):
        for i in range(s):
            for j in range(i + 1):
                reference[row, 0, i, j] = bool(doc_ids[row, i] == doc_ids[row, j])
    assert torch.equal(block_causal_mask(doc_ids), reference)

    lengths = [len(inputs) for inputs, _ in segments(packed_windows())]
    assert lengths == [6, 7, 11, 9, 1, 13, 1]
    found = varlen_segments(doc_ids)
    assert found.cu_seqlens.dtype == torch.int32
    assert found.cu_seqlens.tolist() == [0, 6, 13, 24, 33, 34, 47, 48]  # row 1 starts at 24
    assert found.max_seqlen == 13
    # Built once per doc-ids tensor (every layer of a forward pass shares it), again for a new one.
    assert block_causal_mask(doc_ids) is block_causal_mask(doc_ids)
    assert block_causal_mask(doc_ids.clone()) is not block_causal_mask(doc_ids)


def test_packed_batch_equals_segments_run_alone(world_of_one):
    from megallm.model.llama import build_model

    model = build_model(CFG)
    windows = packed_windows()
    packed, packed_grads = loss_and_grads(model, lambda: packed_loss(model, windows))
    alone, alone_grads = loss_and_grads(model, lambda: segments_loss(model, windows))
    # Observed: losses equal with AVX-512 kernels, 1.4 eps apart with AVX2 ones (MKL_ENABLE_INSTRUCTIONS=AVX2,
    # as on an AMD EPYC); gradients within 4 eps of each tensor's largest entry with either.
    assert packed == pytest.approx(alone, rel=REORDERED, abs=0)
    for name, grad in alone_grads.items():
        assert relative_max_diff(packed_grads[name], grad) < REORDERED, name

    # Without masking the documents see each other and positions run on: far from the reference
    # (loss 4e-4 relative, some gradient by more than its largest entry), so the checks above can fail.
    leaky, leaky_grads = loss_and_grads(model, lambda: packed_loss(model, windows, masking=False))
    assert abs(leaky - alone) > 1e-4 * alone
    assert max(relative_max_diff(leaky_grads[n], g) for n, g in alone_grads.items()) > 0.1


def relative_max_diff(got: torch.Tensor, reference: torch.Tensor) -> float:
    return ((got - reference).abs().max() / reference.abs().max()).item()


def test_rows_without_end_of_document_are_unchanged(world_of_one):
    from megallm.model.llama import build_model

    model = build_model(CFG)
    windows = packed_windows()
    windows[windows == EOS] = EOS + 1
    masked, masked_grads = loss_and_grads(model, lambda: packed_loss(model, windows))
    plain, plain_grads = loss_and_grads(model, lambda: packed_loss(model, windows, masking=False))
    # Not bitwise: SDPA with a mask and SDPA's own causal path are other kernels (equal bits observed).
    assert masked == pytest.approx(plain, rel=REORDERED, abs=0)
    for name, grad in plain_grads.items():
        assert relative_max_diff(masked_grads[name], grad) < REORDERED, name


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_recompute_with_masking_gives_identical_gradients(world_of_one, recompute):
    from megallm.model.llama import build_model

    windows = packed_windows()
    results = {}
    for mode in ("none", recompute):
        model = build_model(CFG, recompute=mode)
        results[mode] = loss_and_grads(model, lambda: packed_loss(model, windows))  # noqa: B023 (called at once)
    # Bitwise on any CPU: recomputing reruns the same kernels on the same shapes in the same process (CPU
    # kernels are deterministic for a given shape, thread count and alignment: PyTorch aligns every
    # allocation to 64 bytes); only when the forward runs differs.
    assert results[recompute][0] == results["none"][0]
    for name, grad in results["none"][1].items():
        assert torch.equal(grad, results[recompute][1][name]), name


def stand_in_flash_attn():
    """flash-attn's dense and varlen kernels as its documentation states them, on CPU via SDPA.

    Dense: q [b, s, nh, d], k/v [b, s, nkv, d]. Varlen: q [total, nh, d], k/v [total, nkv, d],
    sequence i being rows cu_seqlens[i]:cu_seqlens[i + 1] (int32), max_seqlen its longest.
    """
    def dense(q, k, v, causal):
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal,
                                             enable_gqa=True)
        return out.transpose(1, 2)

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
        assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32
        bounds = cu_seqlens_q.tolist()
        assert bounds == cu_seqlens_k.tolist() and bounds[0] == 0 and bounds[-1] == q.shape[0] == k.shape[0]
        assert max_seqlen_q == max_seqlen_k == max(e - s for s, e in zip(bounds, bounds[1:]))
        return torch.cat([dense(q[None, s:e], k[None, s:e], v[None, s:e], causal=causal)[0]
                          for s, e in zip(bounds, bounds[1:])])

    return dense, varlen


@pytest.mark.parametrize("causal", [True, False])
def test_flash_attn_layouts_match_sdpa(monkeypatch, causal):
    """The flash-attn branch's reshapes and segment offsets, with stand-in kernels (no GPU here)."""
    s, b, nh, nkv, d = 24, 2, 4, 2, 8
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(s, b, n, d, generator=generator) for n in (nh, nkv, nkv))
    doc_ids = document_ids(packed_windows()[:, :-1], EOS)
    expected = {name: self_attention(q, k, v, ids, causal=causal) for name, ids in (("plain", None),
                                                                                    ("masked", doc_ids))}
    assert not torch.allclose(expected["plain"], expected["masked"])

    monkeypatch.setattr(attention, "_flash_attn", stand_in_flash_attn)
    for name, ids in (("plain", None), ("masked", doc_ids)):
        got = self_attention(q, k, v, ids, backend="flash_attn", causal=causal)
        assert got.shape == (s, b, nh * d)
        torch.testing.assert_close(got, expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("nkv", [4, 2])
def test_flex_attention_forward_matches_sdpa(nkv):
    """FlexAttention's block masks (document-causal and plain causal) against SDPA with the boolean
    mask, on random packed batches with documents of every length, GQA or not. Forward only: PyTorch
    has no FlexAttention backward on CPU (gradients are compared on a GPU, bench/gpu)."""
    s, b, nh, d = 300, 3, 4, 16  # not a multiple of FlexAttention's 128-wide blocks
    generator = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(s, b, n, d, generator=generator) for n in (nh, nkv, nkv))
    tokens = torch.randint(1, 50, (b, s), generator=generator)
    tokens[torch.rand(b, s, generator=generator) < 0.03] = EOS  # documents of a few to hundreds of tokens
    tokens[1, 100:140] = EOS  # a run of one-token documents
    doc_ids = document_ids(tokens, EOS)
    for ids in (doc_ids, None):
        expected = self_attention(q, k, v, ids, backend="sdpa")
        got = self_attention(q, k, v, ids, backend="flex")
        assert got.shape == (s, b, nh * d)
        assert (got - expected).abs().max() < 1e-5, "masked" if ids is not None else "plain"


def test_attention_backend_choice():
    """auto: SDPA on CPU; on CUDA FlexAttention for masked documents (without flash-attn); a forced choice wins."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert attention.attention_backend(cpu, torch.float32, masked=True) == "sdpa"
    if attention._flash_attn() is None:
        assert attention.attention_backend(cuda, torch.bfloat16, masked=True) == "flex"
        assert attention.attention_backend(cuda, torch.bfloat16, masked=False) == "sdpa"
    assert attention.attention_backend(cpu, torch.float32, masked=True, requested="flex") == "flex"
