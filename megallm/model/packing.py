"""Packed sequences: which document each token belongs to, and its position inside it.

A training window is cut from concatenated documents. One token id starts a segment
(`start_id`, megallm.data.shards.Manifest.segment_start_id):

- megallm's own tokenizers: documents are `text EOS`, and the end-of-document token
  STARTS the next segment (it plays the beginning-of-sequence token of the following
  document). For input ids x [b, s]:

    x          a1 a2 a3 EOS b1 b2 EOS c1
    doc_ids     0  0  0   1  1  1   2  2    cumsum(x == EOS, dim=1)
    positions   0  1  2   0  1  2   0  1    restart with every segment

- tokenizers whose post-processor prepends a beginning-of-text token (Llama 2's `<s>`,
  Llama 3's `<|begin_of_text|>`): documents are `BOS text EOS`, and BOS starts the
  segment, so every document sits at positions 0, 1, ... with BOS at 0, exactly as the
  model sees it alone (Hugging Face feeds `BOS text`). EOS closes its document; it is
  predicted from the document's last token, and the next BOS from it (a fixed step):

    x          BOS a1 a2 EOS BOS b1 EOS BOS
    doc_ids     1  1  1   1   2  2   2   3    cumsum(x == BOS, dim=1)
    positions   0  1  2   3   0  1   2   0

A segment is a maximal run of equal doc id within a row; every row starts one (its first
may be the tail of a document the window cut). A token attends only to earlier-or-same
positions of its own segment (megallm.model.attention), so a packed batch computes
exactly what each segment would alone, as a sequence of its own.

Document masking on or off, the flat layer list (megallm.model.llama) passes one value
from layer to layer and from pipeline stage to pipeline stage: the hidden states alone
(off), or the tuple `(hidden, doc_ids)` (on). `doc_ids` stay [b, s] under sequence
parallelism: attention sees the whole sequence.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, TypeVar, Union

import torch
from torch.utils.weak import WeakIdKeyDictionary

T = TypeVar("T")

# What flows between the layers of the flat model: hidden states (or token ids into the
# embedding), with the document ids [b, s] int64 alongside when masking is on.
Activations = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


def document_ids(tokens: torch.Tensor, start_id: int) -> torch.Tensor:
    """Document index of every token: tokens [b, s] -> [b, s] int64, the number of `start_id`
    tokens up to and including it (each one starts a new segment)."""
    return torch.cumsum(tokens == start_id, dim=1)


def once_per_doc_ids(build: Callable[[torch.Tensor], T]) -> Callable[[torch.Tensor], T]:
    """Memoise `build(doc_ids)` on the doc-ids tensor object; an entry goes with its tensor.

    Every layer of a forward pass (and its recompute in backward) receives the same doc-ids
    object, so what is derived from it is computed once per pass. Doc ids are never
    changed in place.
    """
    memo = WeakIdKeyDictionary()

    @functools.wraps(build)
    def once(doc_ids: torch.Tensor) -> T:
        if doc_ids not in memo:
            memo[doc_ids] = build(doc_ids)
        return memo[doc_ids]

    return once


@once_per_doc_ids
def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of every token within its segment: doc_ids [b, s] -> [b, s] int64."""
    s = doc_ids.shape[1]
    index = torch.arange(s, device=doc_ids.device).expand_as(doc_ids)  # [b, s]
    starts = segment_starts(doc_ids)
    segment_start = torch.where(starts, index, 0).cummax(dim=1).values  # index of each token's segment start
    return index - segment_start


def segment_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """True where a segment starts: every row start and every change of doc id. [b, s] bool."""
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return starts


def with_doc_ids(tensor: torch.Tensor, doc_ids: Optional[torch.Tensor]) -> Activations:
    """The value a layer passes on: `tensor` alone, or `(tensor, doc_ids)` when masking is on."""
    return tensor if doc_ids is None else (tensor, doc_ids)


def split_doc_ids(activations: Activations) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Inverse of `with_doc_ids`: (tensor, doc_ids or None)."""
    if isinstance(activations, torch.Tensor):
        return activations, None
    tensor, doc_ids = activations
    return tensor, doc_ids
