"""Every GPU measurement of the first-light issue in one script, JSON lines to --output.

Made to run on a lent GPU machine inside its few minutes (bench/gpu_run.sh installs the
wheels and calls this), in two parts that each fit one call:

    python bench/gpu_suite.py --part correctness --output $OUT/gpu.jsonl
    python bench/gpu_suite.py --part speed --output $OUT/gpu.jsonl
    python bench/gpu_suite.py --part correctness --smoke   # on a CPU: the same code paths, tiny sizes

correctness:
- FlexAttention (compiled) outputs and gradients against SDPA with the boolean mask in
  fp32, on random packed batches; the bf16 SDPA error beside it as the scale of bf16 noise.
- `tiny` and `125m`, 50 steps, bf16 on the GPU against fp32 on this machine's CPU (same
  config and data): document masking on and off, plain and fast path. Runs on the GPU go
  in parallel (small models), the CPU references in the background.
- A bf16 run stopped at step 25 and resumed continues with the uninterrupted run's losses;
  its checkpoint exported to a Hugging Face folder and verified in transformers.
speed:
- `1b` at sequence 2048 in bf16, each optimisation switched on in turn (bench/train_speed.py),
  then `125m` and `3b` (Llama 3.2 3B) with all of them, megallm over the plain
  loop (bench/plain_loop.py), and the top operators by device time of the fastest `1b` path.
Each stage checks the time left (--budget) and says what it skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, append_jsonl, clean_environment, ensure_corpus, environment, run_megallm
from train_speed import model_overrides

# The fast path, everything that runs on CUDA without extra packages; LIGER adds liger-kernel's loss.
FAST = ["kernels.compile=true", "optim.fused=true", "kernels.loss=chunked"]
LIGER = ["kernels.compile=true", "optim.fused=true", "kernels.loss=liger"]
# Optimisations for the 1b table, cumulative, in order.
SPEED_VARIANTS = [
    ("plain (SDPA + mask)", ["kernels.attention=sdpa"]),
    ("flex attention", ["kernels.attention=flex"]),
    ("+ torch.compile", ["kernels.attention=flex", "kernels.compile=true"]),
    ("+ fused AdamW", ["kernels.attention=flex", "kernels.compile=true", "optim.fused=true"]),
    ("+ chunked loss", ["kernels.attention=flex", *FAST]),
    ("+ liger loss", ["kernels.attention=flex", *LIGER]),
    ("+ liger loss, micro-batch 8", ["kernels.attention=flex", *LIGER, "train.micro_batch_size=8",
                                     "train.global_batch_tokens=16384"]),
    ("no document masking, liger", ["data.document_masking=false", *LIGER]),
]
BF16_LOSS_TOLERANCE = 0.02  # |bf16 - fp32| / fp32 per step, for 50 steps from the same initial weights


class Clock:
    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()


def flex_check(smoke: bool) -> list[dict]:
    """FlexAttention against the SDPA-mask reference on random packed batches."""
    import torch

    from megallm.model.attention import self_attention
    from megallm.model.packing import document_ids

    device = "cpu" if smoke else "cuda"
    shapes = [(2, 96, 4, 2, 16)] if smoke else [(4, 2048, 16, 4, 64), (2, 4096, 32, 8, 128)]
    records = []
    for b, s, nh, nkv, d in shapes:
        gen = torch.Generator(device="cpu").manual_seed(s)
        q, k, v = (torch.randn(s, b, n, d, generator=gen).to(device) for n in (nh, nkv, nkv))
        tokens = torch.randint(1, 100, (b, s), generator=gen)
        tokens[torch.rand(b, s, generator=gen) < 8 / s] = 0  # about 8 documents a row, any lengths
        doc_ids = document_ids(tokens, 0).to(device)
        dtypes = [torch.float32] if smoke else [torch.bfloat16]

        def run(backend, dtype, with_grad):
            inputs = [t.detach().to(dtype).clone().requires_grad_(with_grad) for t in (q, k, v)]  # noqa: B023 (as below)
            out = self_attention(*inputs, doc_ids, backend=backend)  # noqa: B023 (called in this iteration only)
            if not with_grad:
                return out.float(), []
            out.float().square().mean().backward()
            return out.float(), [t.grad.float() for t in inputs]

        with_grad = not smoke
        ref_out, ref_grads = run("sdpa", torch.float32, with_grad)
        for dtype in dtypes:
            record = {"check": "flex_vs_sdpa_mask", "shape_b_s_nh_nkv_d": [b, s, nh, nkv, d], "dtype": str(dtype),
                      "reference_max_abs_out": ref_out.abs().max().item()}  # the scale the errors are read against
            if ref_grads:
                record["reference_max_abs_grad"] = max(g.abs().max().item() for g in ref_grads)
            for backend in ("flex", "sdpa"):
                out, grads = run(backend, dtype, with_grad)
                record[f"{backend}_max_abs_err_out"] = (out - ref_out).abs().max().item()
                if grads:
                    record[f"{backend}_max_abs_err_grad"] = max((g - r).abs().max().item()
                                                                for g, r in zip(grads, ref_grads))
            records.append(record)
    return records


def losses(result: dict) -> list[float]:
    return [r["loss"] for r in result["train"]]


def run_cpu_reference(overrides: list[str], run_dir: Path) -> subprocess.Popen:
    """The same run in fp32 on this machine's CPU (no GPU visible), in the background."""
    env = {**clean_environment(), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, str(REPO / "launch" / "pretrain.py"), *overrides, "train.precision=fp32",
                             f"run_dir={run_dir}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(run_dir.with_suffix(".err"), "w"))


def read_train(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {"train": [r for r in map(json.loads, lines) if r["kind"] == "train"]}


def compare(name: str, got: list[float], reference: list[float], tolerance: float) -> dict:
    worst = max(abs(a - b) / b for a, b in zip(got, reference, strict=True))
    return {"check": name, "steps": len(got), "max_rel_loss_diff": worst, "tolerance": tolerance,
            "passed": worst <= tolerance, "first_last": [got[0], got[-1]], "reference_first_last":
            [reference[0], reference[-1]]}


def correctness(args, corpus: Path, tmp: Path, out, clock: Clock) -> None:
    for record in flex_check(args.smoke):
        out(record)
    steps = 6 if args.smoke else 50
    models = ["tiny"] if args.smoke else ["tiny", "125m"]
    base = [f"data.path={corpus}", f"train.steps={steps}", "train.seq_len=256", "train.global_batch_tokens=2048",
            "train.micro_batch_size=8", "train.eval_every=0", "logging.every=1", "train.resume=none",
            "optim.warmup_steps=5", f"checkpoint.every={steps // 2}"]
    gpu_precision = "fp32" if args.smoke else "bf16"
    runs = {}  # name -> (overrides, reference name)
    for model in models:
        common = [*model_overrides(model), *base]
        runs[f"{model} masked"] = (common, None)
        runs[f"{model} masked fast"] = ([*common, "kernels.attention=flex" if not args.smoke else "kernels.attention=sdpa",
                                        *FAST], f"{model} masked")
    runs["tiny unmasked"] = ([*model_overrides("tiny"), *base, "data.document_masking=false"], None)
    references = {}
    for name, (overrides, reference) in runs.items():
        if reference is not None:
            continue
        run_dir = tmp / f"cpu {name}".replace(" ", "_")
        made = args.cpu_references / run_dir.name if args.cpu_references else None
        if made is not None and (made / "metrics.jsonl").is_file():  # made beforehand on another CPU
            shutil.copytree(made, run_dir)
            out({"check": "cpu reference", "name": name, "from": str(made)})
        else:
            references[name] = run_cpu_reference(overrides, run_dir)
    gpu = {name: subprocess.Popen([sys.executable, str(REPO / "launch" / "pretrain.py"), *overrides,
                                   f"train.precision={gpu_precision}", f"run_dir={tmp / name.replace(' ', '_')}"],
                                  cwd=REPO, env=clean_environment(), stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / f"{name.replace(' ', '_')}.err", "w"))
           for name, (overrides, _) in runs.items()}
    for name, process in {**gpu, **{f"cpu {n}": p for n, p in references.items()}}.items():
        try:
            code = process.wait(timeout=max(clock.left(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            out({"check": "run", "name": name, "error": "out of time"})
            continue
        if code:
            err = (tmp / f"{name.replace(' ', '_')}.err").read_text().strip().splitlines()
            out({"check": "run", "name": name, "error": (err or ["failed"])[-1]})
    for name, (_, reference) in runs.items():
        try:
            got = losses(read_train(tmp / name.replace(" ", "_")))
            fp32 = losses(read_train(tmp / f"cpu_{(reference or name).replace(' ', '_')}"))
        except (OSError, KeyError) as exc:
            out({"check": f"{gpu_precision} GPU vs fp32 CPU: {name}", "error": str(exc)})
            continue
        out(compare(f"{gpu_precision} GPU vs fp32 CPU: {name}", got, fp32, BF16_LOSS_TOLERANCE))
    resume_and_export(args, tmp, runs["tiny masked"][0], gpu_precision, out)


def resume_and_export(args, tmp: Path, overrides: list[str], precision: str, out) -> None:
    """The GPU run of `tiny masked` stopped at its middle checkpoint and resumed; then exported."""
    full = tmp / "tiny_masked"
    middle = sorted((full / "checkpoints").glob("step_*"))[0]
    resumed = tmp / "tiny_resumed"
    result = run_megallm([*overrides, f"train.precision={precision}", f"train.resume={middle}"], resumed)
    if "error" in result:
        out({"check": "bf16 resume", "error": result["error"]})
    else:
        want = {r["step"]: r["loss"] for r in read_train(full)["train"]}
        got = {r["step"]: r["loss"] for r in result["train"]}
        diffs = [abs(got[s] - want[s]) for s in got if s in want]
        out({"check": f"{precision} resume from {middle.name}", "steps_compared": len(diffs),
             "max_abs_loss_diff": max(diffs), "passed": max(diffs) == 0.0})
    hf = tmp / "hf"
    export = subprocess.run([sys.executable, str(REPO / "tools" / "convert_ckpt.py"), "export", str(full), str(hf)],
                            cwd=REPO, env=clean_environment(), capture_output=True, text=True)
    out({"check": f"{precision} export + transformers verify", "passed": export.returncode == 0,
         "output_tail": (export.stdout + export.stderr).strip().splitlines()[-3:]})


def speed(args, corpus: Path, tmp: Path, out, clock: Clock) -> None:
    from train_speed import build_parser as speed_parser
    from train_speed import measure

    if args.smoke:
        plan = [("tiny", "plain", ["kernels.attention=sdpa"]), ("tiny", "fast (CPU-capable)", FAST),
                "framework_overhead", "profile"]
        settings = ["--model", "tiny", "--seq-len", "128", "--micro-batch-size", "2", "--warmup", "2", "--steps", "2",
                    "--log-every", "2", "--precision", "fp32"]
    else:
        # most telling first, in case the budget runs out: plain against the whole fast path, the other
        # sizes, what megallm adds and where the time goes; then the optimisations one at a time
        variants = [("1b", *variant) for variant in SPEED_VARIANTS]
        three_b = ("3b", "+ liger loss, micro-batch 2", [*SPEED_VARIANTS[5][1], "train.micro_batch_size=2"])
        plan = [variants[0], variants[5], three_b, ("125m", *SPEED_VARIANTS[5]),
                "profile", "framework_overhead", variants[4], variants[6], variants[1], variants[2], variants[3],
                variants[7]]
        settings = ["--model", "1b", "--seq-len", "2048", "--micro-batch-size", "4", "--warmup", "4", "--steps", "12",
                    "--log-every", "4", "--precision", "bf16"]
    # the plain loop steps its optimizer every micro-batch; megallm's runs may accumulate
    accumulate = ["--global-batch-tokens", str(args.global_batch_tokens)] if args.global_batch_tokens else []
    speed_args = speed_parser().parse_args([*settings, *accumulate])
    fast = [] if args.smoke else ["kernels.attention=flex", *LIGER]
    plain_loop = {"framework_overhead": ["--compare", "--rounds", "1"], "profile": ["--profile", "2"]}
    for index, stage in enumerate(plan):
        if args.stages is not None and index not in args.stages:
            continue
        needed = args.per_run_s * (2 if stage == "framework_overhead" else 1)
        if clock.left() < needed:
            out({"bench": stage, "skipped": "out of time"} if isinstance(stage, str) else
                {"bench": "train_speed", "model": stage[0], "variant": stage[1], "skipped": "out of time"})
            continue
        if isinstance(stage, tuple):
            out(measure(speed_args, *stage, corpus, tmp / f"speed-{index}"))
            continue
        run = subprocess.run([sys.executable, str(REPO / "bench" / "plain_loop.py"), *plain_loop[stage], *settings,
                              *fast], cwd=REPO, env=clean_environment(), capture_output=True, text=True)
        lines = run.stdout.strip().splitlines()
        out({"bench": stage, "error": run.stderr[-500:]} if run.returncode else json.loads(lines[-1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["correctness", "speed"], required=True)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--budget", type=float, default=480, help="seconds this part may take")
    parser.add_argument("--per-run-s", type=float, default=75, help="a speed run's expected seconds")
    parser.add_argument("--cpu-references", type=Path,
                        help="folder of fp32 CPU runs made beforehand (cpu_<name>/metrics.jsonl), used instead of "
                             "running them on the GPU machine's CPU")
    parser.add_argument("--stages", type=lambda text: {int(i) for i in text.split(",")},
                        help="speed: only these stages of the plan (indices, e.g. 2,3,4), to finish a cut-short run")
    parser.add_argument("--global-batch-tokens", type=int,
                        help="speed: tokens per optimizer step (default: one micro-batch, no accumulation)")
    parser.add_argument("--smoke", action="store_true", help="on a CPU: tiny sizes, fp32, to test the script")
    args = parser.parse_args(argv)
    clock = Clock(args.budget)
    env = environment()

    def out(record: dict) -> None:
        append_jsonl(args.output, {**record, "part": args.part, **env})

    corpus = ensure_corpus()
    with tempfile.TemporaryDirectory(prefix="megallm-gpu-") as tmp:
        (correctness if args.part == "correctness" else speed)(args, corpus, Path(tmp), out, clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
