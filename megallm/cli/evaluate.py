"""`tools/evaluate.py`: few-shot tasks and perplexity for a megallm checkpoint or a Hugging Face Llama folder.

Tasks are JSON-lines files (megallm.evaluation.tasks). Each query gets k demonstrations
(megallm.evaluation.demos: random, bm25 or embedding, from --demo-pool or, leave-one-out, from the
task file itself) joined into one prompt, and the answers are scored (megallm.evaluation.fewshot:
multiple-choice accuracy by log-likelihood; generation until "\\n\\n" (--stop) with the task's
metrics, BLEU and ROUGE). --perplexity scores a held-out corpus or files
(megallm.evaluation.perplexity). Results: a table on stdout, one JSON file (--output), W&B (--wandb;
megallm.evaluation.report); progress on stderr. Everything a user can fix is one line
`evaluate: error: ...`, exit code 2, found before the model is read where it can be.

MODEL is one checkpoint (a run folder: its newest). With --all-checkpoints, or given a sweep folder
(launch/sweep.py's, with its sweep.json), every kept checkpoint of the run (of each of the sweep's
runs, those not started skipped) is evaluated in turn, and the numbers go against the tokens each had
trained on and its training FLOPs (megallm.evaluation.ladder): a table on stdout, and --output
FILE.json with FILE.csv (one row per checkpoint and number) and FILE.png (the accuracy-vs-FLOPs plot,
one line per run: a scaling ladder's downstream curve) beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from megallm.cli import run_command
from megallm.errors import DataError, MegallmError, UsageError
from megallm.evaluation import demos as demo_methods
from megallm.evaluation.fewshot import FewShot, evaluate_task
from megallm.evaluation.report import format_table, log_wandb, versions, write_results
from megallm.evaluation.tasks import Task, read_task
from megallm.extras import require
from megallm.run_layout import SWEEP_PLAN_FILE

PROG = "evaluate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/evaluate.py",
        description="Few-shot tasks and perplexity for a megallm checkpoint or a Hugging Face Llama folder.",
        epilog="examples:\n"
               "  python tools/evaluate.py runs/tiny --task eval/fortunes.test.jsonl --k 4 --demos bm25 \\\n"
               "      --demo-pool eval/fortunes.train.jsonl --output results/tiny.json\n"
               "  python tools/evaluate.py hf/tiny --task eval/translation.test.jsonl --k 2 --max-new-tokens 48\n"
               "  python tools/evaluate.py runs/tiny --perplexity data/corpus --split val --wandb\n"
               "  python tools/evaluate.py runs/tiny --perplexity data/corpus --stride 64   # sliding windows\n"
               "  python tools/evaluate.py runs/sweep --task eval/fortunes.test.jsonl --output ladder/ladder.json\n"
               "      # every checkpoint of every run of a sweep: ladder.json, ladder.csv, ladder.png (accuracy vs FLOPs)\n"
               "lm-evaluation-harness tasks: python -m megallm.evaluation.harness --model megallm "
               "--model_args path=MODEL --tasks NAME",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, metavar="MODEL",
                   help="a megallm checkpoint (step_NNNNNNNN folder, or a run / checkpoints folder: its newest "
                        "checkpoint, every one with --all-checkpoints), any parallel layout, a Hugging Face Llama "
                        "folder, or a sweep folder (launch/sweep.py's: every checkpoint of each of its runs)")
    p.add_argument("--all-checkpoints", action="store_true",
                   help="evaluate every kept checkpoint of the run folder, against tokens and training FLOPs: "
                        "--output FILE.json then also writes FILE.csv and the plot FILE.png (implied by a sweep "
                        "folder)")
    p.add_argument("--task", type=Path, action="append", default=[], metavar="FILE",
                   help="a task file (JSON lines, megallm.evaluation.tasks); repeat for several")
    p.add_argument("--k", type=int, default=4, help="demonstrations per query (default 4; 0: zero-shot)")
    p.add_argument("--demos", default="random", metavar="METHOD",
                   help=f"how demonstrations are chosen: {', '.join(demo_methods.METHODS)} (default random)")
    p.add_argument("--demo-pool", type=Path, action="append", default=[], metavar="FILE",
                   help="task file to draw demonstrations from, one per --task in order (default: the task's own "
                        "other examples)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random demonstrations (default 0)")
    p.add_argument("--limit", type=int, help="evaluate the first N examples of each task only")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation tasks: tokens per answer (default 64)")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="generation tasks: cut the completion at TEXT (repeatable; \\n and \\t read as newline and tab; "
                        "default a blank line)")
    mlm = p.add_argument_group("masked language models (an encoder trained with train.objective=mlm)")
    mlm.add_argument("--masked-accuracy", type=Path, metavar="CORPUS",
                     help="masked-token accuracy on the corpus's --split windows, masked by the run's own rule, "
                          "against the unigram baseline (megallm.evaluation.masked)")
    mlm.add_argument("--batches", type=int, help="micro-batches to score (default: every window of the split once)")
    ppl = p.add_argument_group("perplexity")
    ppl.add_argument("--perplexity", type=Path, action="append", default=[], metavar="CORPUS_OR_FILE",
                     help="a prepared corpus folder, or text / JSON-lines files (repeat for several files)")
    ppl.add_argument("--split", default="val", help="the corpus split to score (default val)")
    ppl.add_argument("--documents", default="joined", choices=("joined", "separate"),
                     help="joined: documents packed into one stream, as in training (default); separate: each "
                          "document scored alone")
    ppl.add_argument("--seq-len", type=int,
                     help="tokens of input per window (default and most: the context the model was trained at, "
                          "train.seq_len of a checkpoint, max_position_embeddings of a Hugging Face folder)")
    ppl.add_argument("--stride", type=int,
                     help="tokens each window moves by (default --seq-len: disjoint windows); smaller: every "
                          "prediction after the first window sees at least seq_len - stride tokens (Hugging Face's "
                          "sliding-window perplexity), at seq_len / stride times the work")
    ppl.add_argument("--max-tokens", type=int, help="score the first N tokens only")
    ppl.add_argument("--text-field", default="text", help="JSON-lines field holding the text (default text)")
    out = p.add_argument_group("model and output")
    out.add_argument("--tokenizer", type=Path, help="tokenizer.json to use (default: the one with MODEL)")
    out.add_argument("--start", choices=("document", "tokenizer", "none"), default="document",
                     help="what every input begins with: the tokenizer's document start token (default, as "
                          "tools/generate.py), what the tokenizer adds itself, or nothing")
    out.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    out.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    out.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    out.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    out.add_argument("--output", type=Path, metavar="FILE", help="write the results as JSON here")
    out.add_argument("--wandb", action="store_true",
                     help="log the results to W&B (offline unless WANDB_MODE says otherwise; WANDB_PROJECT etc.)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


def progress(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def check_arguments(args: argparse.Namespace) -> list[tuple[Task, Optional[Task]]]:
    """(task, its --demo-pool or None) per --task; every mistake found before the model is read."""
    if not args.model.exists():
        raise UsageError(f"model {args.model} does not exist")
    if not args.task and not args.perplexity and not args.masked_accuracy:
        raise UsageError("nothing to evaluate: pass --task FILE and/or --perplexity CORPUS_OR_FILE (a causal model), "
                         "or --masked-accuracy CORPUS (an encoder)")
    if args.masked_accuracy and (args.task or args.perplexity):
        raise UsageError("--masked-accuracy scores an encoder, --task and --perplexity a causal model: run them apart")
    if args.stride is not None and not args.perplexity:
        raise UsageError("--stride moves the windows of --perplexity: pass --perplexity CORPUS_OR_FILE")
    if args.masked_accuracy and not args.masked_accuracy.exists():
        raise UsageError(f"--masked-accuracy {args.masked_accuracy} does not exist")
    if args.demos not in demo_methods.METHODS:
        raise UsageError(f"--demos {args.demos!r} is not a method; choose from {', '.join(demo_methods.METHODS)}")
    for name in ("k", "seed"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0")
    for name in ("limit", "max_new_tokens", "batch_size", "threads", "seq_len", "stride", "max_tokens", "batches"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.demo_pool and len(args.demo_pool) != len(args.task):
        raise UsageError(f"{len(args.demo_pool)} --demo-pool for {len(args.task)} --task: give one per task, in "
                         "order, or none")
    for source in args.perplexity:
        if not source.exists():
            raise UsageError(f"--perplexity {source} does not exist")
    plans = []
    for i, path in enumerate(args.task):
        task = read_task(path)
        pool = read_task(args.demo_pool[i]) if args.demo_pool else task
        if pool.kind != task.kind:
            raise UsageError(f"--demo-pool {pool.path} holds {pool.kind} examples, task {task.path} {task.kind} ones")
        same = not args.demo_pool
        available = len(pool.examples) - (1 if same else 0)
        if args.k > available:
            where = f"{task.path} has {len(task.examples)} examples, so {available} once each query is left out" \
                if same else f"--demo-pool {pool.path} has {available} examples"
            raise DataError(f"--k {args.k} demonstrations asked for, but {where}")
        plans.append((task, None if same else pool))
    return plans


def run(args: argparse.Namespace) -> int:
    require("eval", "tools/evaluate.py")
    plans = check_arguments(args)
    if args.masked_accuracy:
        return run_masked(args)
    ladder = ladder_runs(args)
    if ladder is not None:
        return run_ladder(args, plans, *ladder)
    results = {"model": str(args.model), "created": now(), "versions": versions(), "settings": settings(args),
               **evaluate_model(args, plans, args.model)}
    print(format_table(results), flush=True)
    if args.output:
        progress(f"wrote {write_results(args.output, results)}")
    if args.wandb:
        mode = log_wandb(results, args.output.parent if args.output else Path.cwd())
        progress(f"logged to W&B ({mode})")
    return 0


def evaluate_model(args: argparse.Namespace, plans: list[tuple[Task, Optional[Task]]], path: Path) -> dict:
    """The tasks' and perplexity's results of the model at `path`: {"tokenizer", "tasks", "perplexity"}."""
    # deferred: torch, megatron-core and DeepSpeed take seconds to import; argument mistakes need not wait
    import torch

    from megallm.cli.generate import stdout_to_stderr
    from megallm.evaluation.model import EvalModel
    from megallm.evaluation.perplexity import check_windows, perplexity
    from megallm.inference.context import trained_context
    from megallm.parallel.distributed import select_deepspeed_accelerator

    if args.perplexity:  # the windows against the context the model was trained at, before its weights are read
        select_deepspeed_accelerator()
        trained = trained_context(path)
        check_windows(args.seq_len, args.stride, trained.tokens, trained.describe(str(path)))
    with stdout_to_stderr():  # stdout holds the table only (DeepSpeed prints there reading a checkpoint)
        model = EvalModel.load(path, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                               batch_size=args.batch_size, start=args.start, log=progress)
    with model:
        if args.threads:
            torch.set_num_threads(args.threads)
        results: dict[str, Any] = {"tokenizer": str(model.tokenizer_file), "tasks": [], "perplexity": []}
        for task, pool in plans:
            results["tasks"].append(evaluate_task(model, task, pool, few_shot(args)))
        if args.perplexity:
            ppl = perplexity(model, args.perplexity, split=args.split, mode=args.documents, seq_len=args.seq_len,
                             stride=args.stride, max_tokens=args.max_tokens, text_field=args.text_field,
                             progress=progress)
            results["perplexity"].append(ppl.as_dict())
    return results


# ---- every checkpoint of a run or a sweep (megallm.evaluation.ladder) ------------------------------
def ladder_runs(args: argparse.Namespace) -> Optional[tuple[list[tuple[str, Path]], bool]]:
    """((name, run folder) of each run whose checkpoints are all evaluated, whether they are a sweep's):
    the sweep's runs for a sweep folder, MODEL itself with --all-checkpoints; None for one checkpoint.
    Mistakes before any model is read."""
    plan_file = args.model / SWEEP_PLAN_FILE
    if not args.all_checkpoints and not plan_file.is_file():
        return None
    if args.masked_accuracy or args.wandb:
        raise UsageError(f"--{'masked-accuracy' if args.masked_accuracy else 'wandb'} takes one checkpoint, and "
                         f"{'--all-checkpoints' if args.all_checkpoints else f'sweep folder {args.model}'} "
                         "evaluates several; pass one checkpoint or run folder without --all-checkpoints")
    if not args.output:
        raise UsageError("evaluating every checkpoint writes its results, a CSV and the plot: pass --output FILE.json")
    if not plan_file.is_file():
        return [(args.model.resolve().name, args.model)], False
    try:
        planned = json.loads(plan_file.read_text())["runs"]
        runs = [(str(run["name"]), Path(run["run_dir"])) for run in planned]
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{plan_file} is not a sweep plan that launch/sweep.py wrote ({error}); pass a run "
                         "folder with --all-checkpoints instead") from None
    # Each run's folder lies in the sweep's, named after the run, wherever the sweep folder was moved.
    return [(name, args.model / name if (args.model / name).is_dir() else folder) for name, folder in runs], True


def run_ladder(args: argparse.Namespace, plans: list[tuple[Task, Optional[Task]]], runs: list[tuple[str, Path]],
               sweep: bool) -> int:
    """Every kept checkpoint of `runs`, evaluated, to the table, --output's JSON and CSV, and the plot; a
    sweep's run without a checkpoint (not started yet) is skipped, saying so."""
    # deferred: torch, megatron-core and DeepSpeed take seconds to import; argument mistakes need not wait
    from megallm.parallel.distributed import select_deepspeed_accelerator

    select_deepspeed_accelerator()  # DeepSpeed reads it when first imported, and guesses aloud without it
    # deferred: the checkpoint reader imports DeepSpeed, after the accelerator is chosen
    from megallm.evaluation.ladder import (
        LadderPoint,
        format_ladder,
        ladder_rows,
        plot_ladder,
        run_checkpoints,
        write_ladder,
    )

    points, skipped = [], []
    for name, folder in runs:
        try:
            points += [LadderPoint.of(name, checkpoint) for checkpoint in run_checkpoints(folder)]
        except MegallmError as error:
            if not sweep:
                raise
            skipped.append(f"{name}: skipped ({error})")
    if not points:
        first = f" ({skipped[0]})" if skipped else ""
        raise UsageError(f"no run of sweep folder {args.model} has a checkpoint yet{first}")
    for line in skipped:
        progress(line)
    progress(f"{len(points)} checkpoint(s) of {len({p.run for p in points})} run(s) to evaluate")
    document: dict[str, Any] = {"source": str(args.model), "created": now(), "versions": versions(),
                                "settings": settings(args), "points": []}
    table = []
    for point in points:
        results = {"model": point.checkpoint, **evaluate_model(args, plans, Path(point.checkpoint))}
        document["points"].append({**asdict(point), **results})
        table += ladder_rows(point, results)
    print(format_ladder(table), flush=True)
    written = write_ladder(args.output, document, table)
    written.append(plot_ladder(table, args.output.with_suffix(".png"), title=f"{args.model}"))
    progress(f"wrote {', '.join(map(str, written))}")
    return 0


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_masked(args: argparse.Namespace) -> int:
    """--masked-accuracy: an encoder's masked-token accuracy and the unigram baseline."""
    # deferred: torch, megatron-core and DeepSpeed take seconds to import; argument mistakes need not wait
    from megallm.cli.generate import stdout_to_stderr
    from megallm.evaluation.masked import masked_accuracy, summary

    with stdout_to_stderr():  # stdout holds the results only
        result = masked_accuracy(args.model, args.masked_accuracy, split=args.split, batches=args.batches,
                                 seq_len=args.seq_len, device="cpu" if args.device == "auto" else args.device,
                                 dtype=args.dtype, log=progress)
    print(summary(result), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        progress(f"wrote {args.output}")
    return 0


def few_shot(args: argparse.Namespace) -> FewShot:
    stop = tuple(unescape(text) for text in args.stop or ["\n\n"])
    return FewShot(k=args.k, method=args.demos, seed=args.seed, limit=args.limit, stop=stop,
                   max_new_tokens=args.max_new_tokens, progress=progress)


def unescape(text: str) -> str:
    """--stop '\\n' as a newline (what a shell passes for '\\n' is a backslash and an n)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def settings(args: argparse.Namespace) -> dict:
    return {k: [str(p) for p in v] if isinstance(v, list) and v and isinstance(v[0], Path)
            else str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
