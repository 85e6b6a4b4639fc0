"""Canonical weights -> a `LlamaModel` ready for generation.

Canonical weights are `LlamaModel.named_parameters()` names with the vocabulary rows
trimmed to `model.vocab_size` (megallm.checkpoint.portable gathers them from any layout,
megallm.checkpoint.hf reads them from a Hugging Face folder). The model is built on the
meta device (nothing initialised), allocated on the target device and filled tensor by
tensor; the padded vocabulary rows are zero.
"""

from __future__ import annotations

import torch

from megallm.errors import ConversionError
from megallm.model.config import ModelConfig
from megallm.model.layers import RotaryEmbedding, rotary_frequencies
from megallm.model.llama import VOCAB_PARAMETERS, LlamaModel, build_model


def model_from_weights(weights: dict[str, torch.Tensor], cfg: ModelConfig, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> LlamaModel:
    """A `LlamaModel` in eval mode on `device`, every parameter in `dtype`, holding `weights`.

    Needs the tensor-parallel group of a world of one
    (megallm.parallel.distributed.init_distributed(deepspeed=False)). Raises
    ConversionError naming the first missing, unexpected or mis-shaped tensor.
    """
    problems = cfg.check()
    if problems:
        raise ConversionError(f"invalid model config: {problems[0]}")
    model = build_model(cfg, device="meta", params_dtype=dtype)
    model.to_empty(device=device)
    model.to(dtype)  # the norms (megatron-core's layers are built in params_dtype)
    params = dict(model.named_parameters())
    missing = [name for name in params if name not in weights]
    if missing:
        raise ConversionError(f"weights lack {missing[0]} ({len(missing)} missing tensor(s)), which a model "
                              f"of this config has")
    unexpected = [name for name in weights if name not in params]
    if unexpected:
        raise ConversionError(f"weights hold {unexpected[0]}, which a model of this config has not "
                              f"(tie_embeddings={cfg.tie_embeddings}, num_layers={cfg.num_layers})")
    with torch.no_grad():
        for name, param in params.items():
            _copy_into(param, weights[name], name, cfg)
        for module in model.modules():  # non-persistent buffers: to_empty left them uninitialised
            if isinstance(module, RotaryEmbedding):
                module.inv_freq = rotary_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).to(device)
    return model.eval()


def _copy_into(param: torch.Tensor, tensor: torch.Tensor, name: str, cfg: ModelConfig) -> None:
    """param <- tensor; vocabulary matrices may have cfg.vocab_size rows (the rest become zero)."""
    rows = tensor.shape[0]
    vocab_trimmed = name in VOCAB_PARAMETERS and rows == cfg.vocab_size and tensor.shape[1:] == param.shape[1:]
    if tensor.shape != param.shape and not vocab_trimmed:
        expected = tuple(param.shape) if name not in VOCAB_PARAMETERS else (cfg.vocab_size, *param.shape[1:])
        raise ConversionError(f"{name} has shape {tuple(tensor.shape)}, a model of this config expects {expected}")
    param[:rows].copy_(tensor)
    param[rows:].zero_()
