"""`tools/convert_ckpt.py`: megallm checkpoints to and from Hugging Face Llama, and between layouts.

    python tools/convert_ckpt.py export  CKPT OUT_DIR [--dtype bfloat16] [--no-verify]
    python tools/convert_ckpt.py import  HF_DIR OUT_DIR [--tp 2 --pp 1 --dp 2 --zero-stage 1 | --weights-only]
    python tools/convert_ckpt.py reshard CKPT OUT_DIR --tp 1 --pp 1 --dp 2 --zero-stage 3
    python tools/convert_ckpt.py verify  HF_DIR
    python tools/convert_ckpt.py info    CKPT_OR_HF_DIR

The logic lives in megallm.checkpoint.convert; run with --help per command for details.
A failed logits check (verify, or export's own) exits 1, any other error 2.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

from megallm.cli import run_command
from megallm.extras import require

PROG = "convert_ckpt"

DESCRIPTION = """\
Move a model in and out of megallm, and between parallel layouts.

CKPT is a megallm checkpoint folder (runs/NAME/checkpoints/step_00000300) or a run folder
(its newest complete checkpoint is taken, from the run's checkpoint.dir where it set one),
written by any TP x PP x DP layout and ZeRO stage. Every file of a megallm checkpoint is
verified against its SHA-256 before anything is read from it. It is read by starting that
layout's processes on this machine's CPU, so reading a TP=2 x PP=2 x DP=2 checkpoint
starts 8 processes. Every output is written to OUT_DIR.partial and renamed to OUT_DIR
when complete; an OUT_DIR that cannot be written or lacks the space is refused first.
"""

EPILOG = """\
examples:
  # a trained run -> Hugging Face folder (loads with AutoModelForCausalLM / AutoTokenizer)
  python tools/convert_ckpt.py export runs/quickstart hf/quickstart
  # resume a TP=2 x PP=2 run on 2 GPUs with ZeRO-3 (weights, Adam state, LR schedule, data position)
  python tools/convert_ckpt.py reshard runs/big/checkpoints/step_00001000 ckpt/dp2 --tp 1 --pp 1 --dp 2 --zero-stage 3
  torchrun --nproc_per_node 2 launch/pretrain.py +model=NAME parallel.zero_stage=3 train.resume=ckpt/dp2 ...
  # continue pretraining a Hugging Face Llama 3.2 1B (prepare the corpus with its tokenizer.json;
  # +model must give the same shape and RoPE, which conf/model/1b.yaml does; `info` prints it)
  python tools/convert_ckpt.py import hf/Llama-3.2-1B ckpt/llama --weights-only
  python tools/prepare_data.py --input 'corpus/*.jsonl' --output data/llama --tokenizer hf/Llama-3.2-1B/tokenizer.json
  torchrun --nproc_per_node 8 launch/pretrain.py +model=1b train.resume=ckpt/llama data.path=data/llama ...
  python tools/convert_ckpt.py export runs/NAME hf/continued   # keeps the original's config.json and tokenizer files
"""


def _layout_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("target layout (world size = tp x pp x dp)")
    group.add_argument("--tp", type=int, default=None if required else 1, required=required,
                       help="tensor-parallel degree (must divide heads, KV heads and FFN size)")
    group.add_argument("--pp", type=int, default=None if required else 1, required=required,
                       help="pipeline-parallel degree (at most the number of layers)")
    group.add_argument("--dp", type=int, default=None if required else 1, required=required,
                       help="data-parallel degree")
    group.add_argument("--zero-stage", type=int, default=None if required else 0, required=required,
                       choices=(0, 1, 2, 3), help="DeepSpeed ZeRO stage (0 or 1 with --pp > 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tools/convert_ckpt.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser(
        "export", help="megallm checkpoint -> Hugging Face Llama folder",
        description="Write a Hugging Face Llama folder: config.json, generation_config.json, sharded "
                    "safetensors with an index, tokenizer.json and tokenizer_config.json. Padded vocabulary rows "
                    "are dropped. Then (unless --no-verify) load it with transformers and compare logits.")
    export.add_argument("checkpoint", type=Path, metavar="CKPT")
    export.add_argument("out", type=Path, metavar="OUT_DIR")
    export.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype of the saved weights (default float32: exact)")
    export.add_argument("--tokenizer", type=Path, help="tokenizer.json to ship (default: the checkpoint's own)")
    export.add_argument("--max-shard-size", type=float, default=2.0, metavar="GB",
                        help="largest safetensors file in GB (default 2)")
    export.add_argument("--no-verify", action="store_true", help="skip the logits check with transformers")

    imp = commands.add_parser(
        "import", help="Hugging Face Llama folder -> megallm checkpoint",
        description="Read a Hugging Face LlamaForCausalLM folder (safetensors) into a megallm checkpoint at step 0. "
                    "--weights-only: the full model in canonical names, which any layout resumes. Otherwise a "
                    "DeepSpeed checkpoint of the given layout with a fresh (empty) optimizer. Either way the run "
                    "that resumes it (train.resume=OUT_DIR) trains with its own optim.* settings and LR schedule. "
                    "Padded vocabulary rows are restored for the layout. config.json in the transformers 4 layout "
                    "(rope_theta, rope_scaling) or 5 (rope_parameters); RoPE default, linear or llama3 (Llama 3.1+). "
                    "Before writing, transformers' logits on the folder are compared with megallm's (when "
                    "transformers is installed). The tokenizer files, config.json and generation_config.json travel "
                    "with the checkpoint, so an export keeps them.")
    imp.add_argument("hf_dir", type=Path, metavar="HF_DIR")
    imp.add_argument("out", type=Path, metavar="OUT_DIR")
    imp.add_argument("--weights-only", action="store_true", help="layout-free weights, no optimizer state")
    imp.add_argument("--no-verify", action="store_true",
                     help="skip the logits check with transformers (run whenever transformers is installed)")
    _layout_options(imp, required=False)

    reshard = commands.add_parser(
        "reshard", help="megallm checkpoint -> megallm checkpoint of another layout",
        description="Rewrite a checkpoint for another TP x PP x DP layout and ZeRO stage with everything a resume "
                    "needs: fp32 weights, Adam moments and step, LR schedule, data position. Resume it with "
                    "train.resume=OUT_DIR and the new parallel.* settings.")
    reshard.add_argument("checkpoint", type=Path, metavar="CKPT")
    reshard.add_argument("out", type=Path, metavar="OUT_DIR")
    _layout_options(reshard, required=True)

    verify = commands.add_parser(
        "verify", help="check a Hugging Face folder computes megallm's logits in transformers",
        description="Load HF_DIR in transformers (LlamaForCausalLM, float32) and in megallm, run the same random "
                    "sequences through both and compare logits; exit 1 if they differ by more than --tolerance.")
    verify.add_argument("hf_dir", type=Path, metavar="HF_DIR")
    verify.add_argument("--against", type=Path, metavar="CKPT",
                        help="take megallm's weights from this checkpoint instead of the folder")
    verify.add_argument("--tolerance", type=float, help="max |logit difference| (default 1e-4 for float32 weights)")

    info = commands.add_parser("info", help="say what a checkpoint or folder holds (for a megallm checkpoint: the "
                                             "model.* overrides a run resuming it needs)")
    info.add_argument("path", type=Path, metavar="PATH")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    return run_command(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.command == "verify" or (args.command == "export" and not args.no_verify):
        require("hf", f"convert_ckpt {args.command}'s logits check in transformers"
                + (" (--no-verify skips it)" if args.command == "export" else ""))
    # deferred: torch, megatron-core and DeepSpeed take ~6 s to import; --help and usage errors need not wait
    from megallm.parallel.distributed import select_deepspeed_accelerator

    select_deepspeed_accelerator()
    # deferred: these import DeepSpeed, which reads the accelerator chosen just above
    from megallm.checkpoint import convert
    from megallm.parallel.dims import ParallelDims

    start = time.perf_counter()
    if args.command == "export":
        folder, worst = convert.export_hf(args.checkpoint, args.out, dtype=args.dtype, tokenizer=args.tokenizer,
                                          max_shard_bytes=int(args.max_shard_size * 1e9), verify=not args.no_verify)
        print(f"exported {folder}" + (f"; transformers reproduces megallm's logits (max |diff| {worst:.2e})"
                                      if worst is not None else ""))
    elif args.command == "import":
        layout = None if args.weights_only else ParallelDims(args.tp, args.pp, args.dp, args.zero_stage)
        out = convert.import_hf(args.hf_dir, args.out, layout, verify=not args.no_verify)
        print(f"wrote {convert.describe(out)}")
    elif args.command == "reshard":
        out = convert.reshard(args.checkpoint, args.out, ParallelDims(args.tp, args.pp, args.dp, args.zero_stage))
        print(f"wrote {convert.describe(out)}")
    elif args.command == "verify":
        weights = cfg = None
        if args.against:
            weights, cfg, _ = convert.read_model(args.against)
        worst = convert.verify_hf(args.hf_dir, weights, cfg, tolerance=args.tolerance)
        print(f"{args.hf_dir}: transformers reproduces megallm's logits (max |diff| {worst:.2e})")
    else:
        print(convert.describe(args.path))
    print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
