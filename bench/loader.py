"""Loader throughput: tokens/s the streaming loader delivers, against a NumPy memmap reader.

Both read the same tokens (the stdlib corpus's train split, written once more as one flat
uint16 file for the baseline) as micro-batches of `--micro-batch-size` x (seq_len + 1)
int64 tensors, in one run, so the ratio holds on a noisy machine:
- loader: `megallm.data.loader.TrainBatches` with `--workers` processes (WebDataset tar
  shards, the run's sample order, packing), one data-parallel rank;
- baseline: nanoGPT-style random windows from `np.memmap` in this process.
The target is twice what the `125m` model consumes on one H100 at 50% MFU (computed
from megallm.model.flops), so the loader never starves a GPU.

    python tools/prepare_data.py --python-stdlib --output data/stdlib   # once
    python bench/loader.py [--seconds 20] [--workers 2] [--seq-len 2048]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import append_jsonl, environment  # bench/harness.py, beside this script

from megallm.config import compose_config
from megallm.data.corpus import open_corpus
from megallm.data.loader import TrainBatches, read_shard_tokens
from megallm.metrics.throughput import PEAK_TFLOPS
from megallm.model.flops import flops_per_token

REPO = Path(__file__).resolve().parent.parent


def h100_consumption(seq_len: int, mfu: float = 0.5) -> float:
    """Tokens/s the 125m model trains at on one H100 (bf16 dense peak) at `mfu`."""
    cfg, _ = compose_config(["+model=125m"])
    return mfu * PEAK_TFLOPS["H100 SXM"]["bf16"] * 1e12 / flops_per_token(cfg.model, seq_len)


def timed(next_batch, seconds: float, tokens_per_batch: int) -> tuple[float, float]:
    """(tokens/s over `seconds` after the first batch, seconds to the first batch)."""
    start = time.perf_counter()
    next_batch()
    first = time.perf_counter() - start
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next_batch()
        batches += 1
    return batches * tokens_per_batch / (time.perf_counter() - start), first


def checksum_cost(corpus, shards, rounds: int = 3) -> tuple[float, float]:
    """(MB/s reading every shard with its sha256 checked, the same without), alternated `rounds` times."""
    seconds = {True: 0.0, False: 0.0}
    total = sum(Path(corpus.url(info.path)).stat().st_size for info in shards)
    for _ in range(rounds):
        for verify in (False, True):
            start = time.perf_counter()
            for info in shards:
                read_shard_tokens(corpus.url(info.path), info, corpus.manifest.vocab_size, verify=verify)
            seconds[verify] += time.perf_counter() - start
    return rounds * total / 1e6 / seconds[True], rounds * total / 1e6 / seconds[False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO / "data" / "stdlib"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--output", type=Path, help="append the figures as one JSON line (bench/results/loader.jsonl)")
    args = parser.parse_args()
    corpus = open_corpus(args.corpus, None, ("train",))
    tokens_per_batch = args.micro_batch_size * args.seq_len
    shards = corpus.manifest.splits["train"]

    def open_loader() -> TrainBatches:
        return TrainBatches(corpus, "train", seq_len=args.seq_len, micro_batch_size=args.micro_batch_size,
                            streams=args.streams, seed=1, dp_rank=0, dp=1, consumed_samples=0,
                            num_workers=args.workers, prefetch=64, skip_bad_shards=False, device=torch.device("cpu"))

    # First epoch: every shard is read and packed once, start-up included.
    loader = open_loader()
    start = time.perf_counter()
    epoch_batches = loader.order.epoch_samples // args.micro_batch_size
    for _ in range(epoch_batches):
        loader.next_micro_batch()
    epoch_rate = epoch_batches * tokens_per_batch / (time.perf_counter() - start)
    del loader
    # Steady state: later epochs find their shards cached in the workers.
    loader_rate, loader_first = timed(open_loader().next_micro_batch, args.seconds, tokens_per_batch)

    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "train.bin"
        with open(flat, "wb") as f:
            for info in shards:
                f.write(read_shard_tokens(corpus.url(info.path), info, corpus.manifest.vocab_size).tobytes())
        data = np.memmap(flat, dtype=np.dtype(corpus.manifest.dtype), mode="r")
        rng = np.random.default_rng(0)

        def memmap_batch() -> torch.Tensor:
            starts = rng.integers(0, len(data) - args.seq_len - 1, args.micro_batch_size)
            return torch.from_numpy(np.stack([data[s:s + args.seq_len + 1] for s in starts]).astype(np.int64))

        memmap_rate, _ = timed(memmap_batch, args.seconds, tokens_per_batch)

    checked_mb_s, unchecked_mb_s = checksum_cost(corpus, shards)
    need = h100_consumption(args.seq_len)
    print(f"corpus {args.corpus}: {corpus.manifest.tokens('train'):,} train tokens in {len(shards)} shards; "
          f"micro-batch {args.micro_batch_size} x {args.seq_len}, {args.seconds:.0f} s each")
    print(f"loader ({args.workers} workers, {args.streams} streams), first epoch incl. start-up and every shard "
          f"read: {epoch_rate:,.0f} tokens/s")
    print(f"loader ({args.workers} workers, {args.streams} streams), steady state: {loader_rate:,.0f} tokens/s "
          f"(first batch after {loader_first:.2f} s)")
    print(f"numpy memmap baseline (1 process):   {memmap_rate:,.0f} tokens/s  -> loader / memmap = "
          f"{loader_rate / memmap_rate:.2f}x")
    print(f"shard reads (1 process, every train shard, 3 rounds alternated): {checked_mb_s:,.0f} MB/s with the "
          f"sha256 check, {unchecked_mb_s:,.0f} MB/s without -> the check costs "
          f"{100 * (unchecked_mb_s / checked_mb_s - 1):.1f}% of a shard's first read (later reads skip it)")
    slowest = min(epoch_rate, loader_rate)
    print(f"125m on one H100 at 50% MFU consumes {need:,.0f} tokens/s; the loader's slower figure is "
          f"{slowest / need:.1f}x that (target >= 2x: {'met' if slowest >= 2 * need else 'NOT met'})")
    if args.output:
        append_jsonl(args.output, {
            "bench": "loader", "workers": args.workers, "streams": args.streams, "seq_len": args.seq_len,
            "micro_batch_size": args.micro_batch_size, "first_epoch_tokens_per_s": epoch_rate,
            "steady_tokens_per_s": loader_rate, "memmap_tokens_per_s": memmap_rate,
            "shard_read_mb_s_checked": checked_mb_s, "shard_read_mb_s_unchecked": unchecked_mb_s,
            "h100_125m_tokens_per_s_at_50pct_mfu": need, **environment()})


if __name__ == "__main__":
    main()
