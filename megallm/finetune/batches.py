"""Fine-tuning rows as token arrays, and the rank's micro-batches of them.

- Classification: one row per example, `[start] + text + [eos]` (start: the token documents
  begin with, megallm.data.tokenizer.SpecialTokens.document_start_id), cut to train.seq_len
  (keeping the final eos) and padded; its length and class id beside it.
- Supervised pairs: `[start] + prompt + response + [eos]`, a flag on every response token and
  the eos (the tokens scored). Whole examples are packed greedily, in file order, into windows
  of seq_len + 1 tokens (inputs and next-token labels, as pretraining's windows); the rest of a
  window is eos padding, never scored. An example longer than a window is cut (counted).

`ExampleBatches` deals the rows to data-parallel ranks as pretraining deals its windows
(megallm.data.loader): rank r of dp takes global samples g = n * dp + r, micro-batch j of
`mbs` rows; sample g is row `permutation_e[g mod N]` of epoch e = g div N, each epoch a fresh
permutation from (seed, e). The position is the count of samples consumed, so a resumed run
reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from megallm.finetune.examples import LabelledText, PromptResponse


@dataclass
class ClassifyBatch:
    tokens: torch.Tensor  # [b, seq_len] int64, padded
    lengths: torch.Tensor  # [b] int64 tokens before the padding
    labels: torch.Tensor  # [b] int64 class ids


@dataclass
class Encoded:
    """Token arrays of a file's rows (one entry per row of the arrays) and what encoding cut."""

    arrays: dict[str, np.ndarray]
    truncated: int  # examples cut to fit

    @property
    def rows(self) -> int:
        return len(next(iter(self.arrays.values())))


def encode_classification(rows: Sequence[LabelledText], tok: Tokenizer, start_id: int, eos_id: int, seq_len: int,
                          names: Sequence[str]) -> Encoded:
    index = {name: i for i, name in enumerate(names)}
    tokens = np.full((len(rows), seq_len), eos_id, dtype=np.int64)
    lengths = np.zeros(len(rows), dtype=np.int64)
    truncated = 0
    for i, encoding in enumerate(tok.encode_batch([row.text for row in rows], add_special_tokens=False)):
        ids = [start_id, *encoding.ids, eos_id]
        if len(ids) > seq_len:
            ids, truncated = ids[:seq_len - 1] + [eos_id], truncated + 1
        tokens[i, :len(ids)] = ids
        lengths[i] = len(ids)
    labels = np.array([index[row.label] for row in rows], dtype=np.int64)
    return Encoded({"tokens": tokens, "lengths": lengths, "labels": labels}, truncated)


def encode_pairs(pairs: Sequence[PromptResponse], tok: Tokenizer, start_id: int, eos_id: int,
                 seq_len: int) -> Encoded:
    """Packed windows [n, 2, seq_len + 1]: token ids, and 1 where the token is scored (response, eos)."""
    width = seq_len + 1
    prompts = tok.encode_batch([p.prompt for p in pairs], add_special_tokens=False)
    responses = tok.encode_batch([p.response for p in pairs], add_special_tokens=False)
    windows: list[np.ndarray] = []
    current: list[tuple[list[int], list[int]]] = []
    used, truncated = 0, 0
    for prompt, response in zip(prompts, responses):
        ids = [start_id, *prompt.ids, *response.ids, eos_id]
        flags = [0] * (1 + len(prompt.ids)) + [1] * (len(response.ids) + 1)
        if len(ids) > width:
            ids, flags, truncated = ids[:width], flags[:width], truncated + 1
        if used + len(ids) > width:
            windows.append(_window(current, width, eos_id))
            current, used = [], 0
        current.append((ids, flags))
        used += len(ids)
    if current:
        windows.append(_window(current, width, eos_id))
    return Encoded({"windows": np.stack(windows)}, truncated)


def _window(examples: list[tuple[list[int], list[int]]], width: int, pad_id: int) -> np.ndarray:
    window = np.zeros((2, width), dtype=np.int64)
    window[0] = pad_id
    at = 0
    for ids, flags in examples:
        window[0, at:at + len(ids)], window[1, at:at + len(ids)] = ids, flags
        at += len(ids)
    return window


def classify_batch(arrays: dict[str, np.ndarray], device: torch.device) -> ClassifyBatch:
    return ClassifyBatch(*(torch.from_numpy(arrays[key]).to(device) for key in ("tokens", "lengths", "labels")))


def window_batch(arrays: dict[str, np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(arrays["windows"]).to(device)


class ExampleBatches:
    """Micro-batches of `mbs` rows of `encoded` for one data-parallel rank, from a global sample count
    (see the module docstring); `make` turns the rows' arrays into a micro-batch."""

    def __init__(self, encoded: Encoded, make: Callable[[dict, torch.device], object], *, micro_batch_size: int,
                 seed: int, dp_rank: int, dp: int, consumed_samples: int, device: torch.device, shuffle: bool = True):
        self.encoded, self.make, self.mbs, self.seed = encoded, make, micro_batch_size, seed
        self.dp_rank, self.dp, self.device, self.shuffle = dp_rank, dp, device, shuffle
        self.next_sample = consumed_samples + dp_rank
        self.last_samples: list[int] = []
        self.skipped_shards: set[int] = set()  # the metrics read it; fine-tuning reads no shards
        self._permutations: dict[int, np.ndarray] = {}

    def row_of(self, sample: int) -> int:
        epoch, position = divmod(sample, self.encoded.rows)
        if not self.shuffle:
            return position
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.encoded.rows)}
        return int(self._permutations[epoch][position])

    def next_micro_batch(self):
        samples = [self.next_sample + i * self.dp for i in range(self.mbs)]
        self.next_sample += self.mbs * self.dp
        self.last_samples = samples
        rows = [self.row_of(g) for g in samples]
        return self.make({key: array[rows] for key, array in self.encoded.arrays.items()}, self.device)

    def epoch(self, consumed_samples: int) -> float:
        return consumed_samples / self.encoded.rows

    def source_samples(self, consumed_samples: int) -> dict[str, int]:
        return {}  # one set of rows, no mixture

    def close(self) -> None:
        """Nothing to stop: the rows are in memory (megallm.train.trainer.TrainingBatches)."""
