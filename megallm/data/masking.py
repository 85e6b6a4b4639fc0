"""Masked-language-model inputs (train.objective=mlm): which tokens of a window are hidden, what
replaces them, and next-sentence pairs.

BERT's recipe (Devlin et al. 2019, section 3.1), as `mlm.*` sets it: `mask_prob` of the
tokens are selected; a selected token becomes the mask token with probability
`replace_with_mask`, a token drawn uniformly from the vocabulary with `replace_with_random`,
and stays itself otherwise. The model is scored on the selected positions only. A token
that frames documents (end- and start-of-document) is never selected: it marks where
documents meet, which the model is told, not asked.

Every random choice for a window comes from its own generator, seeded by (run seed, the
window's global sample index, a stream constant): the masks depend on neither the layout
(data-, tensor-, pipeline-parallel degrees, micro-batch size) nor when the run was resumed.
A window met again in a later epoch has another sample index (megallm.data.order), so it
is masked anew: dynamic masking, as RoBERTa (Liu et al. 2019).

Next-sentence prediction (`mlm.nsp`): each window is two halves, A and B. With
probability 1/2 B is replaced by the second half of the next window of the micro-batch
(cyclically): label 1 ("not next"), else 0 ("is next"), BERT's convention. Whether a
window is paired off depends on its sample index alone, but its partner is a neighbour in
the micro-batch, so the pairs (and losses) follow how samples are grouped into micro-
batches: the same across tensor- and pipeline-parallel degrees, not across data-parallel
degrees, which group samples differently (megallm.data.loader).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

_MASK_STREAM = 0x4D4C4D  # "MLM": keeps these generators apart from any other use of (seed, sample)
_NSP_STREAM = 0x4E5350  # "NSP"


@dataclass(frozen=True)
class MaskingRule:
    """BERT's masking proportions and the tokens involved."""

    mask_prob: float
    replace_with_mask: float
    replace_with_random: float
    mask_id: int
    vocab_size: int  # random replacements are drawn from [0, vocab_size)
    protected_ids: tuple[int, ...]  # never selected: the document-framing tokens


@dataclass(frozen=True)
class MaskedBatch:
    inputs: torch.Tensor  # [b, s] the corrupted tokens the model reads
    labels: torch.Tensor  # [b, s] the original tokens
    selected: torch.Tensor  # [b, s] bool: the positions scored


def _generator(seed: int, sample: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, sample, stream])


def mask_tokens(tokens: torch.Tensor, samples: Sequence[int], seed: int, rule: MaskingRule) -> MaskedBatch:
    """BERT-corrupt tokens [b, s] (row i is global sample `samples[i]`)."""
    b, s = tokens.shape
    if len(samples) != b:
        raise ValueError(f"{len(samples)} sample indices for {b} rows")
    draws = np.empty((2, b, s))  # per position: whether it is selected, then how it is replaced
    replacement = np.empty((b, s), dtype=np.int64)
    for row, sample in enumerate(samples):
        rng = _generator(seed, int(sample), _MASK_STREAM)
        draws[:, row] = rng.random((2, s))
        replacement[row] = rng.integers(0, rule.vocab_size, s)
    select_draw, how_draw = (torch.from_numpy(d).to(tokens.device) for d in draws)
    selected = select_draw < rule.mask_prob
    for protected in rule.protected_ids:
        selected &= tokens != protected
    to_mask = selected & (how_draw < rule.replace_with_mask)
    to_random = selected & ~to_mask & (how_draw < rule.replace_with_mask + rule.replace_with_random)
    inputs = torch.where(to_mask, torch.full_like(tokens, rule.mask_id), tokens)
    inputs = torch.where(to_random, torch.from_numpy(replacement).to(tokens.device), inputs)
    return MaskedBatch(inputs=inputs, labels=tokens, selected=selected)


def next_sentence_pairs(tokens: torch.Tensor, samples: Sequence[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [b, s] with half the rows' second halves swapped in from the next row, labels [b] int64:
    1 where the second half is not the row's own continuation)."""
    b, s = tokens.shape
    half = s // 2
    swapped = torch.tensor([_generator(seed, int(sample), _NSP_STREAM).random() < 0.5 for sample in samples],
                           device=tokens.device)
    donor = torch.roll(tokens[:, half:], shifts=-1, dims=0)  # row i takes row i + 1's second half
    second = torch.where(swapped[:, None], donor, tokens[:, half:])
    return torch.cat([tokens[:, :half], second], dim=1), swapped.long()
