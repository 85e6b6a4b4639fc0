"""Training speed of megallm itself: tokens/s, TFLOP/s per device, MFU, peak memory and where
the step time goes, one JSON line per (model, variant).

Each configuration runs `launch/pretrain.py` (the product as users run it: data loader,
DeepSpeed engine, callbacks) for `--warmup` + `--steps` steps; the figures are the
time-weighted means of the train records after the warm-up (start-up, torch.compile and
allocator warm-up excluded). A variant is a named list of Hydra overrides, so "before and
after each optimisation" is one invocation:

    python bench/train_speed.py --model tiny --model 30m --seq-len 256 --micro-batch-size 4
    python bench/train_speed.py --model 1b --seq-len 2048 --micro-batch-size 4 \
        --variant plain= --variant compiled="kernels.compile=true optim.fused=true" \
        --output bench/results/gpu.jsonl

MFU = tokens/s x FLOPs per token / (devices x the device's dense peak); FLOPs per token
from megallm.model.flops (bench/README.md says how attention is counted).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from harness import append_jsonl, ensure_corpus, environment, run_megallm, steady_state

# Shapes the benchmarks use besides conf/model's presets: name -> overrides of +model=tiny.
EXTRA_MODELS = {
    "30m": ["model.hidden_size=512", "model.num_layers=8", "model.num_heads=8", "model.num_kv_heads=4",
            "model.ffn_hidden_size=1408"],
}


def model_overrides(name: str) -> list[str]:
    return ["+model=tiny", *EXTRA_MODELS[name], f"model.name={name}"] if name in EXTRA_MODELS else [f"+model={name}"]


def variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    return name, shlex.split(overrides)


def speed_overrides(args, model: str, corpus: Path) -> list[str]:
    """The run settings every measured configuration shares."""
    tokens = args.global_batch_tokens or args.seq_len * args.micro_batch_size * args.nproc
    return [*model_overrides(model), f"data.path={corpus}", f"train.steps={args.warmup + args.steps}",
            f"train.seq_len={args.seq_len}", f"train.global_batch_tokens={tokens}",
            f"train.micro_batch_size={args.micro_batch_size}", f"train.precision={args.precision}",
            "train.eval_every=0", "checkpoint.every=0", "checkpoint.save_last=false", "train.resume=none", f"logging.every={args.log_every}",
            "optim.warmup_steps=10"]


def measure(args, model: str, name: str, overrides: list[str], corpus: Path, run_dir: Path) -> dict:
    """One configuration: the JSON record of its steady state, or of its error."""
    settings = [*speed_overrides(args, model, corpus), *args.overrides, *overrides]
    result = run_megallm(settings, run_dir, ranks=args.nproc)
    record = {"bench": "train_speed", "model": model, "variant": name, "overrides": overrides,
              "ranks": args.nproc, "seq_len": args.seq_len, "micro_batch_size": args.micro_batch_size,
              "precision": args.precision}
    if "error" in result:
        return {**record, "error": result["error"]}
    return {**record, **steady_state(result["train"], after_step=args.warmup), "wall_s": round(result["wall_s"], 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help=f"conf/model preset or {', '.join(EXTRA_MODELS)} "
                                                          "(repeatable; default tiny)")
    parser.add_argument("--variant", action="append", type=variant, metavar="NAME=OVERRIDES",
                        help='named overrides, e.g. compiled="kernels.compile=true" (repeatable; default plain=)')
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing starts (a multiple of --log-every)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--log-every", type=int, default=5, help="steps per train record (each one syncs the device)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--global-batch-tokens", type=int, default=0, help="default: one micro-batch per rank")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--nproc", type=int, default=1, help="ranks (torchrun) per configuration")
    parser.add_argument("--output", type=Path, help="append the JSON lines to this file too")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every configuration")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    corpus = ensure_corpus()
    env = environment()
    with tempfile.TemporaryDirectory(prefix="megallm-bench-") as tmp:
        for model in args.model or ["tiny"]:
            for index, (name, overrides) in enumerate(args.variant or [("plain", [])]):
                record = measure(args, model, name, overrides, corpus, Path(tmp) / f"{model}-{index}")
                append_jsonl(args.output, {**record, **env})
    return 0


if __name__ == "__main__":
    sys.exit(main())
