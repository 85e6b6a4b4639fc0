"""What the framework adds: the same model and batches trained by a minimal loop, against megallm.

The plain loop is megallm's model (`build_model`, one process) with its forward and loss,
`torch.optim.AdamW` and gradient clipping, batches read into memory before timing: no
DeepSpeed, no data loader, no callbacks. In bf16 on CUDA it runs fp32 weights under
`torch.autocast` (nanoGPT's loop). `--compare` alternates megallm (bench/train_speed.py's
measurement of launch/pretrain.py) and the plain loop, each in a fresh process, `--rounds`
times, and reports megallm's tokens/s over the plain loop's per round and their median:

    python bench/plain_loop.py --model tiny                     # the plain loop alone, one JSON line
    python bench/plain_loop.py --model 1b --profile 3 ...       # top operators by device time instead
    python bench/plain_loop.py --compare --model tiny --model 30m --rounds 3 \
        --output bench/results/cpu-overhead.jsonl
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import append_jsonl, clean_environment, ensure_corpus, environment
from train_speed import build_parser as speed_parser
from train_speed import measure, speed_overrides


def load_windows(corpus: Path, seq_len: int, count: int):
    """The first `count` training windows of seq_len + 1 tokens, in manifest order (cycled if short)."""
    import numpy as np

    from megallm.data.corpus import open_corpus
    from megallm.data.loader import read_shard_windows

    opened = open_corpus(str(corpus), None, ("train",))
    windows, total = [], 0
    for info in opened.manifest.splits["train"]:
        windows.append(read_shard_windows(opened.url(info.path), info, opened.manifest.vocab_size, seq_len))
        total += len(windows[-1])
        if total >= count:
            break
    stacked = np.concatenate(windows)
    return np.resize(stacked, (count, seq_len + 1)), opened.manifest


def plain_loop(args, model_name: str, corpus: Path) -> dict:
    """Train `model_name` with the minimal loop; the steady-state figures after `args.warmup` steps."""
    import torch

    from megallm.config import compose_config, resolved_precision
    from megallm.metrics.throughput import device_peak_flops, peak_memory_bytes
    from megallm.model.flops import flops_per_token
    from megallm.model.llama import build_model, compile_blocks
    from megallm.model.packing import document_ids
    from megallm.parallel.distributed import init_distributed

    cfg, _ = compose_config([*speed_overrides(args, model_name, corpus), *args.overrides])
    ctx = init_distributed(deepspeed=False)
    device, mbs, seq_len = ctx.device, args.micro_batch_size, args.seq_len
    steps = args.warmup + args.steps
    windows, manifest = load_windows(corpus, seq_len, steps * mbs)
    cfg.model.vocab_size = cfg.model.vocab_size or manifest.vocab_size
    precision = resolved_precision(cfg.train.precision, device.type == "cuda")
    model = build_model(cfg.model, device=device, seed=cfg.train.seed, kernels=cfg.kernels,
                        recompute=cfg.train.activation_checkpointing)
    if cfg.kernels.compile:
        compile_blocks(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2), fused=cfg.optim.fused or None)
    batches = torch.from_numpy(windows.astype("int64")).view(steps, mbs, seq_len + 1)
    if device.type == "cuda":
        batches = batches.pin_memory()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    eos = manifest.eos_id if cfg.data.document_masking else None

    def step(index: int) -> torch.Tensor:
        window = batches[index].to(device, non_blocking=True)
        tokens, labels = window[:, :-1], window[:, 1:]
        with autocast:
            loss = model(tokens, labels=labels, doc_ids=None if eos is None else document_ids(tokens, eos))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def wait() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for index in range(args.warmup):
        step(index)
    wait()
    if args.profile:
        return {"top_kernels": profile(lambda: step(args.warmup), wait, args.profile, device)}
    began = time.perf_counter()
    for index in range(args.warmup, steps):
        loss = step(index)
    wait()
    seconds = time.perf_counter() - began
    tokens_per_s = args.steps * mbs * seq_len / seconds
    flops = tokens_per_s * flops_per_token(cfg.model, seq_len)
    peak = device_peak_flops(device, precision)
    return {"tokens_per_s": tokens_per_s, "step_time_s": seconds / args.steps, "timed_steps": args.steps,
            "tflops_per_device": flops / 1e12, "mfu": flops / peak if peak else None,
            "peak_mem_gib": peak_memory_bytes(device) / 2**30, "final_loss": loss.item()}


def profile(run_step, wait, steps: int, device, top: int = 15) -> list[dict]:
    """The `top` operators by self time on the device (CPU: on the host) over `steps` steps."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            run_step()
        wait()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    return [{"name": e.key[:120], "calls": e.count, "self_ms_per_step": getattr(e, key) / 1000 / steps,
             "share": getattr(e, key) / total} for e in events[:top]]


def plain_in_subprocess(argv: list[str]) -> dict:
    """This script without --compare, in a fresh process: its one JSON record."""
    import json

    result = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                            env=clean_environment())
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = speed_parser()
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--compare", action="store_true", help="alternate megallm and the plain loop")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: alternations per model")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile this many steps after the warm-up instead of timing: top operators by self time")
    return parser


def plain_argv(args, model: str) -> list[str]:
    return ["--model", model, "--warmup", str(args.warmup), "--steps", str(args.steps), "--seq-len",
            str(args.seq_len), "--micro-batch-size", str(args.micro_batch_size), "--precision", args.precision,
            *args.overrides]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    corpus = ensure_corpus()
    env = environment()
    if args.nproc != 1 or args.global_batch_tokens not in (0, args.seq_len * args.micro_batch_size):
        raise SystemExit("plain_loop.py: one process and one micro-batch per step (no --nproc, --global-batch-tokens)")
    for model in args.model or ["tiny"]:
        if not args.compare:
            record = {"bench": "plain_loop_profile" if args.profile else "plain_loop", "model": model, "seq_len": args.seq_len,
                      "micro_batch_size": args.micro_batch_size, **plain_loop(args, model, corpus)}
            append_jsonl(args.output, {**record, **env})
            continue
        rounds = []
        with tempfile.TemporaryDirectory(prefix="megallm-bench-") as tmp:
            for index in range(args.rounds):
                megallm = measure(args, model, "megallm", [], corpus, Path(tmp) / f"round-{index}")
                plain = plain_in_subprocess(plain_argv(args, model))
                if "error" in megallm or "error" in plain:
                    raise SystemExit(f"round {index}: megallm {megallm.get('error')}, plain {plain.get('error')}")
                rounds.append({"megallm_tokens_per_s": megallm["tokens_per_s"],
                               "plain_tokens_per_s": plain["tokens_per_s"],
                               "ratio": megallm["tokens_per_s"] / plain["tokens_per_s"],
                               "megallm_phases_ms": {k: megallm[k] for k in megallm if k.endswith("_ms")}})
                print(f"{model} round {index + 1}: megallm / plain = {rounds[-1]['ratio']:.3f}", file=sys.stderr)
        append_jsonl(args.output, {"bench": "framework_overhead", "model": model, "seq_len": args.seq_len,
                                   "micro_batch_size": args.micro_batch_size, "precision": args.precision,
                                   "ratio_median": statistics.median(r["ratio"] for r in rounds),
                                   "rounds": rounds, **env})
    return 0


if __name__ == "__main__":
    sys.exit(main())
