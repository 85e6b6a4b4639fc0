"""The encoder (model.bidirectional, train.objective=mlm): attention both ways within each
document, the masked-position loss, and BERT's next-sentence head."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megallm.model.attention import self_attention
from megallm.model.config import ModelConfig
from megallm.model.flops import parameter_count
from megallm.model.packing import document_ids
from tests.model.inputs import CFG, EOS, packed_windows

ENCODER = dataclasses.replace(CFG, bidirectional=True)


def random_qkv(s=40, b=2, nh=4, nkv=2, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, b, n, d, generator=generator) for n in (nh, nkv, nkv)]


def reference_attention(q, k, v, doc_ids):
    """Each segment alone through SDPA without any mask."""
    s, b, nh, d = q.shape
    out = torch.zeros(s, b, nh * d)
    for row in range(b):
        ids = doc_ids[row].tolist()
        starts = [0] + [i for i in range(1, s) if ids[i] != ids[i - 1]] + [s]
        for start, end in zip(starts, starts[1:]):
            part = [t[start:end, row].transpose(0, 1)[None] for t in (q, k, v)]  # [1, n, len, d]
            o = F.scaled_dot_product_attention(*part, enable_gqa=True)  # [1, nh, len, d]
            out[start:end, row] = o[0].permute(1, 0, 2).reshape(end - start, nh * d)
    return out


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_bidirectional_attention_stays_within_each_document(backend):
    q, k, v = random_qkv()
    tokens = torch.randint(EOS + 1, 50, (2, 40), generator=torch.Generator().manual_seed(1))
    tokens[0, [5, 6, 20]] = EOS
    tokens[1, [0, 39]] = EOS
    doc_ids = document_ids(tokens, EOS)
    got = self_attention(q, k, v, doc_ids, backend=backend, causal=False)
    assert (got - reference_attention(q, k, v, doc_ids)).abs().max() < 1e-5
    whole = self_attention(q, k, v, None, backend=backend, causal=False)  # one document per row
    assert (whole - reference_attention(q, k, v, torch.zeros_like(doc_ids))).abs().max() < 1e-5
    assert (whole - self_attention(q, k, v, None, backend=backend)).abs().max() > 1e-2  # not causal


def test_encoder_sees_later_tokens_and_decoder_does_not(world_of_one):
    from megallm.model.llama import build_model

    tokens = packed_windows()[:1, :12].clone()
    tokens[tokens == EOS] = EOS + 1
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 200 + EOS + 1
    for cfg, sees_later in ((ENCODER, True), (CFG, False)):
        model = build_model(cfg)
        first = model.hidden_states(tokens)[0], model.hidden_states(changed)[0]  # position 0: [b, h]
        # Bitwise on any CPU for the decoder: both passes run the same kernels on the same shapes, each row of a
        # matmul or norm is computed from that row alone, and attention gives the changed key a weight of
        # exactly exp(-inf) = 0, so position 0 meets nothing that changed.
        assert (not torch.equal(*first)) == sees_later, cfg.bidirectional


def test_packed_encoder_computes_each_document_alone(world_of_one):
    from megallm.model.llama import build_model

    model = build_model(ENCODER)
    tokens = packed_windows()[:, :-1]
    doc_ids = document_ids(tokens, EOS)
    packed = model.hidden_states(tokens, doc_ids)  # [s, b, h]
    for row in range(tokens.shape[0]):
        ids = doc_ids[row].tolist()
        starts = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]] + [len(ids)]
        for start, end in zip(starts, starts[1:]):
            alone = model.hidden_states(tokens[row:row + 1, start:end])[:, 0]
            torch.testing.assert_close(packed[start:end, row], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["plain", "chunked"])
def test_masked_loss_is_the_cross_entropy_of_the_selected_positions(world_of_one, loss):
    from megallm.model.config import KernelConfig
    from megallm.model.llama import build_model

    model = build_model(ENCODER, kernels=KernelConfig(loss=loss, loss_chunk_tokens=8))
    tokens = packed_windows()[:, :-1]
    selected = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(2)) < 0.3
    got = model(tokens, tokens, loss_mask=selected)
    logits = model(tokens).transpose(0, 1)[..., :ENCODER.vocab_size]  # [b, s, vocab]
    expected = F.cross_entropy(logits[selected], tokens[selected])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_next_sentence_head(world_of_one):
    from megallm.model.llama import build_model

    cfg = dataclasses.replace(ENCODER, nsp_head=True)
    model = build_model(cfg)
    names = {n for n, _ in model.named_parameters()}
    assert {"nsp_head.pooler.weight", "nsp_head.pooler.bias", "nsp_head.classifier.weight",
            "nsp_head.classifier.bias"} <= names
    assert parameter_count(cfg).total == sum(p.numel() for p in model.parameters())
    assert parameter_count(ENCODER).total == parameter_count(cfg).total - (64 * 65 + 2 * 65)

    tokens = packed_windows()[:, :-1]
    selected = torch.ones_like(tokens, dtype=torch.bool)
    nsp_labels = torch.tensor([0, 1])
    loss = model(tokens, tokens, loss_mask=selected, nsp_labels=nsp_labels)
    head_logits = model.nsp_head.logits(model.hidden_states(tokens))
    expected = model(tokens, tokens, loss_mask=selected) + F.cross_entropy(head_logits, nsp_labels)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.nsp_head.classifier.weight.grad.abs().sum() > 0


def test_check_refuses_a_next_sentence_head_on_a_decoder():
    problems = ModelConfig(nsp_head=True).check()
    assert any("model.nsp_head=true needs model.bidirectional=true" in p for p in problems)
