"""Inputs of the model tests: a small model config and packed token windows holding several documents.

Shared by tests/model/test_document_masking.py and tests/model/test_encoder.py (a plain module, as
tests/scaling/inputs.py: the config is used at import time, where a fixture cannot be).
"""

from __future__ import annotations

import torch

from megallm.model.config import ModelConfig

EOS = 3
VOCAB = 256
CFG = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=96, vocab_size=VOCAB)


def packed_windows() -> torch.Tensor:
    """Two token windows [2, 25] with several documents each.

    Row 0 starts mid-document; row 1 starts with an end-of-document token, holds an
    empty document (two end tokens in a row) and ends its inputs with an end token (a
    segment of one token).
    """
    generator = torch.Generator().manual_seed(0)
    windows = torch.randint(EOS + 1, VOCAB, (2, 25), generator=generator)
    windows[0, [6, 13]] = EOS
    windows[1, [0, 9, 10, 23]] = EOS
    return windows
