"""`tools/generate.py`: complete prompts with a megallm checkpoint or a Hugging Face Llama folder.

Reads the model (megallm.checkpoint.convert.read_model: a Hugging Face folder, or a
megallm checkpoint of any layout), encodes each prompt with the model's tokenizer,
puts the token its documents begin with in front of it (the tokenizer's bos, such as
Llama 3's <|begin_of_text|>, else megallm's end-of-document token, after which its
documents start: megallm.data.tokenizer.SpecialTokens; --no-bos to skip), generates with
the KV cache (megallm.inference.generate) and prints prompt + completion on stdout,
tokens/s on stderr. Prompts whose tokens plus --max-new-tokens run past the context the
model was trained at (megallm.inference.context) are generated after one warning line.
A problem the user can fix is one line `generate: error: ...`, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from megallm.cli import run_command
from megallm.data.tokenizer import load_tokenizer, special_tokens
from megallm.errors import DataError, UsageError
from megallm.files import TOKENIZER_FILE

PROG = "generate"
DTYPES = ("fp32", "bf16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/generate.py",
        description="Complete prompts with a megallm checkpoint or a Hugging Face Llama folder.\n"
                    "A KV cache keeps each layer's keys and values: one forward pass over the prompts\n"
                    "(prefill), then one pass of one token per prompt for each new token (decode).",
        epilog="Prompts: each is fed as [start] + its tokens, as documents are in training: start is the\n"
               "tokenizer's beginning-of-text token when its post-processor adds one (Llama 2's <s>, Llama 3's\n"
               "<|begin_of_text|>), else the end-of-document token (<|endoftext|> for megallm's tokenizers,\n"
               "whose documents begin after it); --no-bos feeds the tokens alone. Generation of a prompt\n"
               "stops after the end-of-document token (--no-stop) or --max-new-tokens. Tokens/s of prefill\n"
               "and decode go to stderr; completions to stdout.\n\n"
               "examples:\n"
               "  python tools/generate.py runs/tiny/checkpoints --prompt 'def main(' --max-new-tokens 64\n"
               "  python tools/generate.py hf_export --prompts-file prompts.jsonl --temperature 0.8 --top-p 0.95",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, metavar="SOURCE",
                   help="a Hugging Face Llama folder (config.json, *.safetensors, tokenizer.json) or a megallm "
                        "checkpoint (a step_NNNNNNNN folder, or a run / checkpoints folder: its newest checkpoint)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    p.add_argument("--prompts-file", type=Path,
                   help="more prompts: one per non-empty line, or in a .jsonl file one JSON string per line "
                        "(for prompts that hold newlines)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (default); > 0: sample from softmax(logits / temperature)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens only (0: all)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample among the most likely tokens that hold this much probability (1.0: all)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampling generator (default 0; the batch from prompt i on uses seed + i)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available, else cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights and activations (default fp32)")
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: all cores; 1 is often faster on a machine shared with other jobs)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    p.add_argument("--tokenizer", type=Path,
                   help="tokenizer.json to use (default: the one with SOURCE)")
    p.add_argument("--no-bos", action="store_true", help="feed the prompt tokens alone, with no start token in front")
    p.add_argument("--no-stop", action="store_true", help="do not stop a prompt at the end-of-document token")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per prompt instead: prompt, completion, prompt_ids (as fed), new_ids")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    # deferred: torch, megatron-core and DeepSpeed take ~6 s to import; usage errors need not wait
    import torch

    from megallm.parallel.distributed import distributed, select_deepspeed_accelerator

    select_deepspeed_accelerator()
    # deferred: these import DeepSpeed, which reads the accelerator chosen just above
    from megallm.checkpoint.convert import read_model
    from megallm.inference.context import trained_context
    from megallm.inference.generate import GenerationStats, generate
    from megallm.inference.sampling import Sampling
    from megallm.model.weights import model_from_weights

    prompts = read_prompts(args)
    try:
        Sampling(args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        raise UsageError(str(exc).replace("top_", "--top-").replace("temperature", "--temperature")) from None
    if args.max_new_tokens < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        raise UsageError("--max-new-tokens, --batch-size and --threads must be >= 1")
    device = torch.device(pick_device(args.device, torch.cuda.is_available()))

    start = time.perf_counter()
    if not args.source.exists():
        raise UsageError(f"{args.source} does not exist")
    with stdout_to_stderr():  # stdout holds completions only (DeepSpeed prints there reading a checkpoint)
        weights, cfg, tokenizer_file = read_model(args.source)  # before the process group: it may start ranks
    if cfg.bidirectional or cfg.num_labels:
        kind = "a bidirectional encoder (train.objective=mlm)" if cfg.bidirectional else "a sequence classifier"
        raise UsageError(f"{args.source} is {kind}: it does not predict the next token, so it cannot generate")
    tokenizer_file = args.tokenizer or tokenizer_file
    if tokenizer_file is None:
        raise UsageError(f"no {TOKENIZER_FILE} found with {args.source}; pass --tokenizer FILE")
    tok = load_tokenizer(tokenizer_file)
    try:
        tokens = special_tokens(tokenizer_file, tok=tok)
    except DataError:
        if not (args.no_bos and args.no_stop):
            raise UsageError(f"the tokenizer {tokenizer_file} names no end-of-document token to begin prompts "
                             "with and stop at; pass --no-bos --no-stop") from None
        tokens = None

    with distributed(deepspeed=False):
        if args.threads:
            torch.set_num_threads(args.threads)
        model = model_from_weights(weights, cfg, device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype])
        del weights
        params = sum(p.numel() for p in model.parameters())
        print(f"generate: {args.source}: {params / 1e6:.1f}M parameters on {device}, {args.dtype}, "
              f"ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        bos = [tokens.document_start_id] if tokens is not None and not args.no_bos else []  # None: --no-bos
        fed = [bos + tok.encode(p, add_special_tokens=False).ids for p in prompts]
        warn_beyond_context(args.source, trained_context(args.source), [len(ids) for ids in fed],
                            args.max_new_tokens)
        stats = GenerationStats()
        for first in range(0, len(fed), args.batch_size):
            batch = fed[first:first + args.batch_size]
            new = generate(model, batch, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, eos_id=None if args.no_stop or tokens is None else tokens.eos_id,
                           seed=args.seed + first, stats=stats)
            for i, (ids, new_ids) in enumerate(zip(batch, new)):
                print_completion(args, first + i, prompts[first + i], ids, new_ids, tok.decode(new_ids))
    print(f"generate: prefill {stats.prompt_tokens} tokens in {stats.prefill_seconds:.3f} s "
          f"({stats.prefill_tokens_per_second:,.0f} tokens/s); decode {stats.decode_tokens} tokens in "
          f"{stats.decode_seconds:.3f} s ({stats.decode_tokens_per_second:,.0f} tokens/s)", file=sys.stderr)
    return 0


def warn_beyond_context(source: Path, trained, prompt_lengths: list[int], max_new_tokens: int) -> None:
    """One line on stderr when a prompt plus its new tokens runs past the context the model was trained at
    (`trained`, a megallm.inference.context.TrainedContext): generation goes on, extrapolating."""
    beyond = [n + max_new_tokens for n in prompt_lengths if n + max_new_tokens > trained.tokens]
    if beyond:
        print(f"generate: warning: {len(beyond)} of {len(prompt_lengths)} prompts with --max-new-tokens "
              f"{max_new_tokens} run past {trained.describe(str(source))} (up to {max(beyond):,} tokens): positions "
              "beyond it were never trained, and what the model generates there is extrapolation", file=sys.stderr)


def print_completion(args, index: int, prompt: str, prompt_ids: list[int], new_ids: list[int],
                     completion: str) -> None:
    if args.json:
        print(json.dumps({"prompt": prompt, "completion": completion, "prompt_ids": prompt_ids,
                          "new_ids": new_ids}), flush=True)
    else:
        print(f"### prompt {index + 1} ({len(prompt_ids)} + {len(new_ids)} tokens)\n{prompt}{completion}",
              flush=True)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        if not args.prompts_file.is_file():
            raise UsageError(f"--prompts-file {args.prompts_file} does not exist")
        lines = [line for line in args.prompts_file.read_text().splitlines() if line.strip()]
        if args.prompts_file.suffix == ".jsonl":
            try:
                lines = [json.loads(line) for line in lines]
            except json.JSONDecodeError as exc:
                raise UsageError(f"--prompts-file {args.prompts_file}: line {exc.lineno} is not JSON") from None
            if not all(isinstance(line, str) for line in lines):
                raise UsageError(f"--prompts-file {args.prompts_file}: every line must be a JSON string")
        prompts += lines
    if not prompts:
        raise UsageError("no prompt given; pass --prompt TEXT or --prompts-file FILE")
    return prompts


def pick_device(choice: str, cuda_available: bool) -> str:
    if choice == "auto":
        return "cuda" if cuda_available else "cpu"
    if choice == "cuda" and not cuda_available:
        raise UsageError("--device cuda: no CUDA device is available (this torch build or machine has none)")
    return choice


@contextlib.contextmanager
def stdout_to_stderr():
    """File descriptor 1 goes to stderr meanwhile, for this process and the ones it starts."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
