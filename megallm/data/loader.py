"""Training and evaluation batches from a prepared corpus, addressed by a global sample count.

A split's documents are concatenated in manifest order (each ends with the
end-of-document token) and cut into windows of `seq_len + 1` tokens with stride
`seq_len`: inputs are a window's first `seq_len` tokens, labels its last `seq_len`.
Training visits windows in a permutation drawn from (seed, epoch). Sample `g` of the run
(counting from 0 over all data-parallel ranks) is therefore a pure function of `g`, so
a checkpoint only stores how many samples were consumed and resume is O(1).

This reader holds the split in memory; it suits corpora up to a few GB of tokens.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from megallm.data.shards import DataError, Manifest, read_documents


class PackedSequences:
    """Fixed-length windows over one split's concatenated documents."""

    def __init__(self, folder: str | Path, manifest: Manifest, split: str, seq_len: int):
        shards = manifest.splits.get(split) or []
        if not shards:
            raise DataError(f"corpus {folder} has no {split!r} shards; re-run tools/prepare_data.py")
        docs = [doc for shard in shards for doc in read_documents(folder, shard, manifest.vocab_size)]
        self.tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=manifest.dtype)
        self.seq_len = seq_len
        self.num_sequences = (len(self.tokens) - 1) // seq_len
        if self.num_sequences < 1:
            raise DataError(
                f"split {split!r} of {folder} has {len(self.tokens)} tokens, fewer than one sequence of "
                f"{seq_len + 1}; lower train.seq_len or add text"
            )

    def __len__(self) -> int:
        return self.num_sequences

    def window(self, index: int) -> np.ndarray:
        start = index * self.seq_len
        return self.tokens[start:start + self.seq_len + 1]


class SampleOrder:
    """Global sample index -> window index: a fresh permutation per epoch from (seed, epoch)."""

    def __init__(self, num_sequences: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = num_sequences, seed, shuffle
        self._permutation = lru_cache(maxsize=2)(self._make_permutation)

    def _make_permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __call__(self, sample: int) -> int:
        epoch, offset = divmod(sample, self.n)
        return int(self._permutation(epoch)[offset]) if self.shuffle else offset


class DistributedBatches:
    """Micro-batches for one data-parallel rank.

    Within an optimizer step starting at global sample `consumed`, micro-batch `j` of
    data-parallel rank `r` holds samples `consumed + (j * dp + r) * mbs + [0, mbs)`.
    Tensor- and pipeline-parallel ranks of one data-parallel group get the same rows.
    """

    def __init__(self, sequences: PackedSequences, order: SampleOrder, micro_batch_size: int,
                 dp_rank: int, dp: int, device: torch.device):
        self.sequences, self.order = sequences, order
        self.mbs, self.dp_rank, self.dp, self.device = micro_batch_size, dp_rank, dp, device

    def micro_batch(self, consumed: int, micro_index: int) -> torch.Tensor:
        """Token windows [mbs, seq_len + 1] (int64) on this rank's device."""
        first = consumed + (micro_index * self.dp + self.dp_rank) * self.mbs
        rows = [self.sequences.window(self.order(first + i)) for i in range(self.mbs)]
        batch = torch.from_numpy(np.stack(rows).astype(np.int64))
        return batch.to(self.device, non_blocking=True)
