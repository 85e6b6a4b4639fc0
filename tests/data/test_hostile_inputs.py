"""tools/prepare_data.py on inputs it did not expect, each as it was found in the field:

- a file that is one long word (4 MiB; 50 MB trained for 10+ minutes without a line) trains
  the tokenizer in seconds, with progress lines, and tokenizes back to its text;
- a JSON line of 8 MiB (a 50 MB line peaked at 9.4 GB) is encoded in pieces: the worker's
  peak memory stays bounded (measured as the peak RSS of the tool's processes), and the
  pieces give the whole document's tokens (megallm's, Llama 3- and Llama 2-style tokenizers);
- a `.parquet` that is not Parquet, `--tokenizer README.md` and a tokenizer whose
  tokenizer_config.json was cut short are one-line errors;
- a binary file (a copy of /bin/ls) is left out with a warning, a Latin-1 file is read
  with a warning naming it and its bytes that are not UTF-8, and binary inputs alone are
  refused in one line.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megallm.cli.prepare_data import main as prepare_main
from megallm.data.shards import Manifest, read_documents
from megallm.data.tokenizer import load_tokenizer
from tests.helpers import REPO, assert_one_line_error, clean_environment, run_main, tiny_tokenizer

MiB = 1 << 20
# Runs a command (killed after argv[1] seconds: exit 124) and prints its processes' peak resident memory
# (KiB) as its last stderr line: a fresh process, so that no earlier child of the test process counts.
PEAK_RSS = """
import resource, subprocess, sys
try:
    code = subprocess.run(sys.argv[2:], timeout=float(sys.argv[1])).returncode
except subprocess.TimeoutExpired:
    code = 124
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def prepare_measured(*args, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """`python tools/prepare_data.py ARGS` as a user runs it (exit 124 after `timeout` seconds), and the
    peak RSS of its processes in MiB."""
    command = [sys.executable, "-c", PEAK_RSS, str(timeout), sys.executable, str(REPO / "tools" / "prepare_data.py"),
               *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=clean_environment(), capture_output=True, text=True)
    *stderr, peak = result.stderr.splitlines()
    result.stderr = "\n".join(stderr)
    return result, int(peak) / 1024


def corpus_documents(corpus: Path) -> list[np.ndarray]:
    manifest = Manifest.load(corpus)
    return [d for split in manifest.splits.values() for s in split for d in read_documents(str(corpus / s.path))]


@pytest.mark.slow
def test_a_file_of_one_long_word_trains_the_tokenizer_in_seconds(tmp_path):
    word = "".join(random.Random(0).choices(string.ascii_lowercase, k=4 * MiB))
    (tmp_path / "word.txt").write_text(word)
    corpus = tmp_path / "corpus"
    # Before: the trainer rescanned the 4 MiB word at each of its merges (a 2 MB one ran past 5 minutes).
    result, peak = prepare_measured("--input", tmp_path / "word.txt", "--output", corpus, "--val-fraction", "0",
                                    "--workers", "1", "--progress-every", "0.5", timeout=150)
    assert result.returncode == 0, f"exit {result.returncode} (124: still training after 150 s)\n{result.stderr}"
    assert "trained a 258-token tokenizer" in result.stdout  # bytes and the two special tokens: nothing to merge
    assert "tokenizer: learning merges from 4.0 MiB of text" in result.stdout  # said when the merges start
    assert peak < 800, f"peak RSS {peak:.0f} MiB"  # observed 315 MiB
    (document,) = corpus_documents(corpus)
    tok = load_tokenizer(corpus / "tokenizer.json")
    assert document[-1] == tok.token_to_id("<|endoftext|>")
    assert tok.decode(document[:-1].tolist()) == word


@pytest.mark.slow
def test_a_long_line_is_encoded_in_pieces_with_bounded_memory(tmp_path):
    rng = random.Random(1)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 9))) for _ in range(5000)]
    text = " ".join(rng.choices(words, k=8 * MiB // 6))
    (tmp_path / "line.jsonl").write_text(json.dumps({"text": text}) + "\n")
    tiny_tokenizer(tmp_path / "tokenizer.json")
    corpus = tmp_path / "corpus"
    result, peak = prepare_measured("--input", tmp_path / "line.jsonl", "--output", corpus, "--tokenizer",
                                    tmp_path / "tokenizer.json", "--val-fraction", "0", "--workers", "1", timeout=300)
    assert result.returncode == 0, result.stderr
    # Before: the 8 MiB line went to the tokenizer in one call, 1.7 GiB at its peak.
    assert peak < 800, f"peak RSS {peak:.0f} MiB"  # observed 374 MiB
    (document,) = corpus_documents(corpus)
    assert load_tokenizer(corpus / "tokenizer.json").decode(document[:-1].tolist()) == text


def test_encoding_in_pieces_gives_the_whole_documents_tokens():
    from megallm.data.tokenizer import train_bpe
    from megallm.data.units import encoding_pieces
    from tests.llama_families import TEXT, build_tokenizer

    text = "".join(TEXT) + " héllo wörld 12345 ...\t\t  x  \n\n  'll 's"
    tokenizers = {"llama3": build_tokenizer("llama3")[0], "llama2": build_tokenizer("llama2")[0],
                  "megallm": train_bpe(TEXT, 400)}
    for limit in (48, 64, 200):  # over twice the longest run without a space: every cut is at a space
        pieces = list(encoding_pieces(text, limit))
        assert "".join(pieces) == text and max(map(len, pieces)) <= limit and len(pieces) > len(text) // limit
        assert all(p[0] == " " and not p[1].isspace() for p in pieces[1:])
        for name, tok in tokenizers.items():
            whole = tok.encode(text, add_special_tokens=False).ids
            assert sum((tok.encode(p, add_special_tokens=False).ids for p in pieces), []) == whole, (name, limit)
    assert list(encoding_pieces("abcdefghij", 4)) == ["abcd", "efgh", "ij"]  # no space: cut at the limit


def test_a_fake_parquet_and_unreadable_tokenizers_are_one_line_errors(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    fake = tmp_path / "data.parquet"
    fake.write_text("id,text\n1,not parquet\n")
    result = run_main(prepare_main, ["--input", fake, "--output", tmp_path / "c1"], capsys)
    assert_one_line_error(result, str(fake), "is not a readable Parquet file", prefix="prepare_data: error: ")

    text = tmp_path / "doc.txt"
    text.write_text("def f(x):\n    return x\n")
    result = run_main(prepare_main, ["--input", text, "--output", tmp_path / "c2", "--tokenizer",
                                     REPO / "README.md"], capsys)
    assert_one_line_error(result, "README.md is not a tokenizer.json", "give the tokenizer.json",
                          prefix="prepare_data: error: ")
    assert not (tmp_path / "c2").exists()

    folder = tmp_path / "tokenizer"  # a tokenizer.json whose tokenizer_config.json beside it was cut short
    folder.mkdir()
    tiny_tokenizer(folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>", "model_max')
    result = run_main(prepare_main, ["--input", text, "--output", tmp_path / "c3", "--tokenizer",
                                     folder / "tokenizer.json"], capsys)
    assert_one_line_error(result, f"{folder / 'tokenizer_config.json'} is not valid JSON", "--eos-token",
                          prefix="prepare_data: error: ")


def test_binary_files_are_left_out_and_latin1_is_named(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy("/bin/ls", inputs / "ls")
    (inputs / "latin1.txt").write_bytes("Café crème brûlée, naïve façade.\n".encode("latin-1"))
    (inputs / "code.py").write_text("def export(model):\n    return model.weights\n" * 20)
    corpus = tmp_path / "corpus"
    result = run_main(prepare_main, ["--input", f"{inputs}/*", "--output", corpus, "--vocab-size", "300",
                                     "--val-fraction", "0", "--workers", "1"], capsys)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, result.stdout
    assert f"skipping {inputs / 'ls'}: binary (a NUL byte at offset 7)" in warnings[0]
    assert f"{inputs / 'latin1.txt'} is not UTF-8: 6 byte(s), the first at offset 3" in warnings[1]
    assert "iconv" in warnings[1]
    tok = load_tokenizer(corpus / "tokenizer.json")
    texts = sorted(tok.decode(d[:-1].tolist()) for d in corpus_documents(corpus))
    assert texts == sorted([(inputs / "code.py").read_text(), "Caf\ufffd cr\ufffdme br\ufffdl\ufffde, "
                                                              "na\ufffdve fa\ufffdade.\n"])  # ls is not in it

    result = run_main(prepare_main, ["--input", inputs / "ls", "--output", tmp_path / "c2"], capsys)
    assert_one_line_error(result, "every input is binary", str(inputs / "ls"), prefix="prepare_data: error: ")
