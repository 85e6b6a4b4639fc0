"""Data-preparation throughput (tokens/s) of tools/prepare_data.py with 1 worker and with 2, on real text.

The corpus is the Python standard library's sources (`--python-stdlib`, about 31 MB,
8.6M tokens). An 8192-token BPE is trained on it once beforehand and passed with
--tokenizer, so tokenizer training is not timed. Each run prepares the whole corpus
into a fresh folder. Its time is the wall time of `prepare()`: planning, starting the
workers, tokenizing, writing and hashing the shards, and the merge. tokens/s is tokens
written / that time; per core, that divided by the workers. Each worker count is
run `--repeats` times, interleaved, and the fastest run is reported (the machine is shared).

    python bench/tokenization.py [--workers 1 2] [--repeats 3]

Results go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from megallm.cli.prepare_data import main as prepare_main
from megallm.data.plan import python_stdlib_files
from megallm.data.prepare import prepare


def timed_prepare(files: list[Path], tokenizer: Path, output: Path, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    manifest = prepare(files, output, log=lambda *_: None, tokenizer_path=tokenizer, workers=workers)
    seconds = time.perf_counter() - start
    return seconds, sum(manifest.tokens(split) for split in manifest.splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    files = python_stdlib_files()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        prepare_main(["--python-stdlib", "--output", str(tokenizer_dir), "--vocab-size", "8192", "--tokenizer-only"])
        best: dict[int, tuple[float, int]] = {}
        for repeat in range(args.repeats):
            for workers in args.workers:
                seconds, tokens = timed_prepare(files, tokenizer_dir / "tokenizer.json",
                                                Path(tmp) / f"w{workers}-{repeat}", workers)
                print(f"workers {workers} run {repeat + 1}: {tokens:,} tokens in {seconds:.2f}s", flush=True)
                if workers not in best or seconds < best[workers][0]:
                    best[workers] = (seconds, tokens)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; fastest of {args.repeats} runs:")
    print(f"| workers | tokens | seconds | tokens/s | tokens/s per core | vs {args.workers[0]} worker(s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = best[args.workers[0]][1] / best[args.workers[0]][0]
    for workers, (seconds, tokens) in best.items():
        rate = tokens / seconds
        print(f"| {workers} | {tokens:,} | {seconds:.2f} | {rate:,.0f} | {rate / workers:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
