"""Training throughput (tokens/s) of one job under each parallel layout, on this machine.

Every layout trains the same model on the same data (the stdlib corpus of the
quickstart) for the same steps; throughput is the mean of the logged windows after the
first (start-up and JIT warm-up excluded), and each layout is reported as a ratio to
the single-process run measured in the same invocation. Also reports each run's peak
memory per rank (RSS on CPU, allocated memory on GPU).

    python bench/layouts.py [--model tiny] [--steps 20] [--only "TP=2,PP=2"] [extra overrides ...]
    # peak memory of the 125m model, ZeRO-3 against ZeRO-0 on 2 ranks:
    python bench/layouts.py --model 125m --only "DP=2 ZeRO-0,DP=2 ZeRO-3" --steps 4 \
        --seq-len 128 --global-batch-tokens 256 --micro-batch-size 1

On a CPU machine this measures the gloo paths (what the layouts cost in communication
and scheduling), not GPU speed. Results go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from harness import ensure_corpus, run_megallm

# name: (ranks, overrides)
LAYOUTS = {
    "1 rank": (1, []),
    "DP=2 ZeRO-0": (2, []),
    "DP=2 ZeRO-1": (2, ["parallel.zero_stage=1"]),
    "DP=2 ZeRO-2": (2, ["parallel.zero_stage=2"]),
    "DP=2 ZeRO-3": (2, ["parallel.zero_stage=3"]),
    "TP=2": (2, ["parallel.tp=2"]),
    "PP=2": (2, ["parallel.pp=2", "parallel.zero_stage=1"]),
    "TP=2 x PP=2": (4, ["parallel.tp=2", "parallel.pp=2", "parallel.zero_stage=1"]),
    "TP=2 x DP=2": (4, ["parallel.tp=2", "parallel.zero_stage=1"]),
}


def run_layout(ranks: int, overrides: list[str], run_dir: Path) -> dict:
    result = run_megallm(overrides, run_dir, ranks=ranks)
    if "error" in result:
        return result
    train = result["train"]
    timed = [r for r in train if r["step"] > 2] or train[-1:]  # steps 1-2 include start-up and warm-up
    return {
        "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed),
        "peak_mem_gib": max(r["peak_mem_gib"] for r in train),
        "final_loss": train[-1]["loss"],
        "wall_s": result["wall_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--global-batch-tokens", type=int, default=8192)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated layout names (default: all)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    corpus = ensure_corpus()
    common = [f"+model={args.model}", f"data.path={corpus}", f"train.steps={args.steps}",
              f"train.seq_len={args.seq_len}", f"train.global_batch_tokens={args.global_batch_tokens}",
              f"train.micro_batch_size={args.micro_batch_size}", "train.precision=fp32", "train.eval_every=0",
              "checkpoint.every=0", "logging.every=1", "train.resume=none", "optim.warmup_steps=2", *args.overrides]
    chosen = [n for n in LAYOUTS if not args.only or n in args.only.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            ranks, overrides = LAYOUTS[name]
            results[name] = run_layout(ranks, [*common, *overrides], Path(tmp) / re.sub(r"\W+", "_", name))
            print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    base = results.get("1 rank", {}).get("tokens_per_s")
    print(f"\nmodel {args.model}, {args.steps} steps of {args.global_batch_tokens} tokens (seq {args.seq_len}, "
          f"micro-batch {args.micro_batch_size}), fp32, {os.cpu_count()} CPU cores\n")
    print("| layout | ranks | tokens/s | vs 1 rank | peak memory per rank (GiB) | final loss |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, res in results.items():
        if "error" in res:
            print(f"| {name} | {LAYOUTS[name][0]} | failed: {res['error']} | | | |")
            continue
        ratio = f"{res['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"| {name} | {LAYOUTS[name][0]} | {res['tokens_per_s']:,.0f} | {ratio} | {res['peak_mem_gib']:.2f} "
              f"| {res['final_loss']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
