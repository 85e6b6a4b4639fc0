"""Decode tokens/s with the KV cache against recomputing the whole sequence every step.

Both decode greedily from the same randomly initialised model, the same prompts, in one
run, so the ratio holds on a noisy machine:
- cached: megallm.inference.generate, one prefill forward over the prompts, then one
  forward of one token per row per step, keys and values of earlier slots read back
  from the cache;
- recompute: the training forward's layers (no cache) over prompt + everything
  generated so far, at every step; only the last position is projected to logits.
Decode tokens/s counts the tokens after the first of each row (the first comes from the
prefill logits) over the time of the steps that made them. Each case runs once to warm
up, then `--repeats` times; the fastest run is reported. Prompts all have the same
length (no padding), so the no-cache forward needs no mask.

    python bench/generate.py [--model tiny] [--vocab-size 8192] [--cases 1x128+128,8x128+128,1x512+128] [--threads 1]

A case BxP+N is B prompts of P tokens, N new tokens each. Results go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

from megallm.inference.generate import GenerationStats, generate
from megallm.model.config import ModelConfig
from megallm.model.llama import LlamaModel, build_model
from megallm.parallel.distributed import init_distributed, shutdown

REPO = Path(__file__).resolve().parent.parent


def parse_case(case: str) -> tuple[int, int, int]:
    batch, rest = case.split("x")
    prompt, new = rest.split("+")
    return int(batch), int(prompt), int(new)


def cached(model: LlamaModel, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    """Decode tokens/s of megallm.inference.generate (greedy, no eos) and its tokens."""
    stats = GenerationStats()
    tokens = generate(model, prompts.tolist(), new, stats=stats)
    return stats.decode_tokens_per_second, tokens


def recompute(model: LlamaModel, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    """Decode tokens/s of greedy decoding that reruns the whole sequence every step, and its tokens."""
    with torch.inference_mode():
        sequence = prompts
        token = last_logits(model, sequence).argmax(-1)  # [b]; the prefill, not timed
        generated = [token]
        start = time.perf_counter()
        for _ in range(new - 1):
            sequence = torch.cat([sequence, token[:, None]], dim=1)
            token = last_logits(model, sequence).argmax(-1)
            generated.append(token)
        seconds = time.perf_counter() - start
    return prompts.shape[0] * (new - 1) / seconds, torch.stack(generated, dim=1).tolist()


def last_logits(model: LlamaModel, tokens: torch.Tensor) -> torch.Tensor:
    """The training forward's layers over tokens [b, s], no cache; logits [b, vocab] of the last
    position only (as transformers' generate, logits_to_keep=1): a fair baseline."""
    x = model.embedding(tokens)
    for block in model.blocks:
        x = block(x)
    x = model.final_norm(x[-1:])  # [1, b, h]
    logits = model.embedding.logits(x) if model.output is None else model.output(x)
    return logits[-1, :, : model.cfg.vocab_size]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="a conf/model/NAME.yaml shape (default tiny)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="for shapes that take it from the corpus")
    parser.add_argument("--cases", default="1x128+128,8x128+128,1x512+128",
                        help="comma-separated BxP+N: B prompts of P tokens, N new tokens each")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case after a warm-up (fastest kept)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared 2-core machine 2 threads ran 40x slower)")
    args = parser.parse_args()

    shape = yaml.safe_load((REPO / "conf" / "model" / f"{args.model}.yaml").read_text())
    cfg = ModelConfig(**{**shape, "vocab_size": shape.get("vocab_size") or args.vocab_size})
    init_distributed(deepspeed=False)
    torch.set_num_threads(args.threads)
    model = build_model(cfg, seed=0).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.name}: {params / 1e6:.1f}M parameters, vocab {cfg.vocab_size}, fp32, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| prompts x prompt tokens + new | cached decode tokens/s | recompute decode tokens/s | speed-up "
          "| same tokens |")
    print("| --- | --- | --- | --- | --- |")
    for case in args.cases.split(","):
        batch, prompt, new = parse_case(case)
        prompts = torch.randint(1, cfg.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
        rates = {}
        for name, decode in (("cached", cached), ("recompute", recompute)):
            runs = [decode(model, prompts, new) for _ in range(1 + args.repeats)][1:]  # first: warm-up
            rates[name] = (max(rate for rate, _ in runs), runs[0][1])
        same = rates["cached"][1] == rates["recompute"][1]
        print(f"| {batch} x {prompt} + {new} | {rates['cached'][0]:,.0f} | {rates['recompute'][0]:,.0f} | "
              f"{rates['cached'][0] / rates['recompute'][0]:.1f}x | {'yes' if same else 'no'} |", flush=True)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
