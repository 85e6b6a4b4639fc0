"""Generation over a KV cache: one prefill forward for a batch of prompts, then one token per step.

Prompts of different lengths are LEFT-padded to the longest, `pad_r` slots in row r, so
every row's last prompt token sits in the same slot and each step appends one slot to
all rows:

    slot        0    1    2    3    4  | 5    6  ...   (prompt | generated)
    row 0       a0   a1   a2   a3   a4 | a5   a6
    row 1       .    .    b0   b1   b2 | b3   b4       pad_1 = 2
    position    slot - pad_r: 0, 1, 2, ... from each row's first real token

as Hugging Face's `generate` does (position_ids = cumsum(attention_mask) - 1): a row
computes what it would alone. Pad slots are never attended by real tokens; a pad slot
attends only itself, so that no softmax row is empty. Attention is causal over slots.

The cache holds prompt + max_new_tokens slots per row, allocated once. A row stops at
`eos_id` (kept as its last token); the batch stops when every row has, or after
max_new_tokens. One host sync per step checks that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from megallm.inference.sampling import Sampling, next_tokens
from megallm.model.llama import LlamaModel


class CachedBatch:
    """Left-padded rows of a batch and their KV cache; `prefill` once, then `extend` one token a step."""

    def __init__(self, model: LlamaModel, prompts: list[list[int]], max_new_tokens: int, pad_id: int = 0):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (megallm feeds [eos_id] + prompt)")
        self.model = model
        self.device = model.embedding.weight.device
        self.vocab_size = model.cfg.vocab_size
        self.prompt_slots = max(len(p) for p in prompts)
        self.pads = torch.tensor([self.prompt_slots - len(p) for p in prompts], device=self.device)  # [b]
        tokens = [[pad_id] * (self.prompt_slots - len(p)) + list(p) for p in prompts]
        self.prompt = torch.tensor(tokens, dtype=torch.long, device=self.device)  # [b, prompt_slots]
        slots = self.prompt_slots + max_new_tokens
        self.caches = model.empty_caches(len(prompts), slots)
        self.filled = 0  # slots written so far, the same for every row
        slot = torch.arange(slots, device=self.device)
        self.real = slot[None] >= self.pads[:, None]  # [b, slots]: False on pad slots
        self.positions = (slot[None] - self.pads[:, None]).clamp(min=0)  # [b, slots]

    def prefill(self) -> torch.Tensor:
        """Run every prompt slot; logits [b, vocab_size] of each row's last prompt token."""
        assert self.filled == 0, "prefill runs once, first"
        return self._forward(self.prompt)

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row, tokens [b]; logits [b, vocab_size] for the slot after it."""
        return self._forward(tokens[:, None])

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        start, end = self.filled, self.filled + tokens.shape[1]
        query = torch.arange(start, end, device=self.device)  # [q] query slots
        key = torch.arange(end, device=self.device)  # [end] key slots
        causal = key[None] <= query[:, None]  # [q, end]
        itself = key[None] == query[:, None]  # pad slots attend themselves: no empty softmax row
        mask = (causal[None] & self.real[:, None, :end]) | itself[None]  # [b, q, end]
        logits = self.model.forward_cached(tokens, self.positions[:, start:end], self.caches, start,
                                           mask[:, None])  # [q, b, padded vocab]
        self.filled = end
        return logits[-1, :, : self.vocab_size]  # padded vocabulary rows are never sampled


@dataclass
class GenerationStats:
    """What one `generate` call did, for tokens/s. Times include sampling; CUDA is synchronised."""

    prompt_tokens: int = 0  # real (unpadded) prompt tokens, all rows
    prefill_seconds: float = 0.0  # the prefill forward and the first token's sampling
    decode_tokens: int = 0  # tokens kept from the decode steps (rows not yet stopped), all rows
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


def generate(model: LlamaModel, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: Optional[int] = None, seed: int = 0,
             stats: Optional[GenerationStats] = None) -> list[list[int]]:
    """The new tokens of each prompt (token ids as given: see megallm.inference on [eos_id] + prompt).

    temperature 0 is greedy; else sampling after top-k (0: off) and top-p (1.0: off),
    from a generator seeded with `seed`. A row stops after generating `eos_id`, which
    ends its list. Pass `stats` to have timings filled in.
    """
    sampling = Sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    device = model.embedding.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens += sum(len(p) for p in prompts)
    with torch.inference_mode():
        clock = _Clock(device)
        batch = CachedBatch(model, prompts, max_new_tokens)
        token = next_tokens(batch.prefill(), sampling, generator)  # [b]
        done = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        new, running = [token], [torch.ones_like(done)]  # running: the row had not stopped before this token
        stats.prefill_seconds += clock.lap()
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):  # host sync
                break
            running.append(~done)
            token = next_tokens(batch.extend(token), sampling, generator)
            new.append(token)
            if eos_id is not None:
                done = done | (token == eos_id)
        kept = torch.stack(running, dim=1).cpu()  # [b, steps]
        tokens = torch.stack(new, dim=1).cpu()
        stats.decode_seconds += clock.lap()
        stats.decode_tokens += int(kept[:, 1:].sum())
    return [row[keep].tolist() for row, keep in zip(tokens, kept)]


class _Clock:
    def __init__(self, device: torch.device):
        self.device = device
        self.last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        elapsed, self.last = now - self.last, now
        return elapsed
