"""megallm's Llama forward against a plain-PyTorch reference written independently here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megallm.model.config import ModelConfig


def reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate each pair (i, i + d/2) of x [b, s, n, d] by angle pos * theta^(-2i/d), position by position."""
    b, s, n, d = x.shape
    out = torch.empty_like(x)
    half = d // 2
    for pos in range(s):
        angles = pos * theta ** (-torch.arange(half, dtype=torch.float64) * 2 / d)
        c, sn = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        first, second = x[:, pos, :, :half], x[:, pos, :, half:]
        out[:, pos, :, :half] = first * c - second * sn
        out[:, pos, :, half:] = second * c + first * sn
    return out


def reference_rmsnorm(x, weight, eps):
    return weight * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def reference_forward(cfg: ModelConfig, w: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [b, s, vocab] of a Llama decoder given plain weight matrices."""
    b, s = tokens.shape
    d, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    x = w["embed"][tokens]
    causal = torch.full((s, s), float("-inf")).triu(1)
    for layer in w["layers"]:
        h = reference_rmsnorm(x, layer["attn_norm"], cfg.norm_eps)
        q = (h @ layer["q"].T).view(b, s, nh, d)
        k = (h @ layer["k"].T).view(b, s, nkv, d)
        v = (h @ layer["v"].T).view(b, s, nkv, d)
        q, k = reference_rope(q, cfg.rope_theta), reference_rope(k, cfg.rope_theta)
        k = k.repeat_interleave(nh // nkv, dim=2)
        v = v.repeat_interleave(nh // nkv, dim=2)
        scores = torch.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(d) + causal
        ctx = torch.einsum("bnqk,bknd->bqnd", scores.softmax(-1), v).reshape(b, s, nh * d)
        x = x + ctx @ layer["o"].T
        h = reference_rmsnorm(x, layer["mlp_norm"], cfg.norm_eps)
        x = x + (F.silu(h @ layer["gate"].T) * (h @ layer["up"].T)) @ layer["down"].T
    x = reference_rmsnorm(x, w["final_norm"], cfg.norm_eps)
    return x @ w["output"].T


def extract_weights(model, cfg: ModelConfig) -> dict:
    """Undo megallm's fused layouts: grouped QKV rows and the [gate; up] matrix."""
    d, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    layers = []
    for block in model.blocks:
        qkv = block.attn.qkv.weight.detach().view(nkv, nh // nkv + 2, d, cfg.hidden_size)
        gate, up = block.mlp.gate_up.weight.detach().chunk(2, dim=0)
        layers.append({
            "attn_norm": block.attn_norm.weight.detach(),
            "q": qkv[:, : nh // nkv].reshape(nh * d, -1),
            "k": qkv[:, nh // nkv].reshape(nkv * d, -1),
            "v": qkv[:, nh // nkv + 1].reshape(nkv * d, -1),
            "o": block.attn.out.weight.detach(),
            "mlp_norm": block.mlp_norm.weight.detach(),
            "gate": gate, "up": up, "down": block.mlp.down.weight.detach(),
        })
    embed = model.embedding.weight.detach()
    output = embed if cfg.tie_embeddings else model.output.weight.detach()
    return {"embed": embed, "layers": layers, "final_norm": model.final_norm.weight.detach(), "output": output}


@pytest.mark.parametrize("num_kv_heads,tied", [(2, True), (4, False), (1, False)])
def test_forward_matches_reference(world_of_one, num_kv_heads, tied):
    from megallm.model.llama import build_model

    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=num_kv_heads, ffn_hidden_size=96,
                      vocab_size=256, tie_embeddings=tied, rope_theta=500000.0)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # non-trivial norm scales, so a swapped norm weight would show
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    tokens = torch.randint(0, 256, (3, 17))
    with torch.no_grad():
        ours = model(tokens).transpose(0, 1)  # [s, b, v] -> [b, s, v]
        ref = reference_forward(cfg, extract_weights(model, cfg), tokens)
    assert ours.shape == ref.shape == (3, 17, 256)
    assert (ours - ref).abs().max().item() < 1e-5

    labels = torch.randint(0, 256, (3, 17))
    loss = model(tokens, labels)
    ref_loss = F.cross_entropy(ref.reshape(-1, 256), labels.reshape(-1))
    assert abs(loss.item() - ref_loss.item()) < 1e-5


def test_same_seed_same_weights(world_of_one):
    from megallm.model.llama import build_model

    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, ffn_hidden_size=64, vocab_size=128)
    def weights(seed):
        torch.manual_seed(999)  # the global RNG plays no part: each layer seeds itself from `seed`
        return dict(build_model(cfg, seed=seed).named_parameters())

    a, b, c = weights(7), weights(7), weights(8)
    assert sorted(a) == ["blocks.0.attn.out.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn_norm.weight",
                         "blocks.0.mlp.down.weight", "blocks.0.mlp.gate_up.weight", "blocks.0.mlp_norm.weight",
                         "embedding.weight", "final_norm.weight", "output.weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise: one seed through the same kernels, same shapes
    assert not torch.equal(a["embedding.weight"], c["embedding.weight"])
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_recompute_gives_identical_gradients(world_of_one, recompute):
    from megallm.model.llama import build_model

    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=96, vocab_size=256)
    tokens, labels = torch.randint(0, 256, (2, 2, 33))
    grads = {}
    for mode in ("none", recompute):
        model = build_model(cfg, recompute=mode)
        model(tokens, labels).backward()
        grads[mode] = {n: p.grad for n, p in model.named_parameters()}
    # Bitwise on any CPU: recomputing reruns the same kernels on the same shapes in this process.
    for name, grad in grads["none"].items():
        assert torch.equal(grad, grads[recompute][name]), name
