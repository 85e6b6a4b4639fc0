"""tools/prepare_data.py: formats, split, determinism across workers and parts, resume, errors, progress."""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from megallm.cli.prepare_data import main
from megallm.data.prepare import prepare
from megallm.data.progress import Progress
from megallm.data.shards import Manifest, file_sha256, read_documents
from megallm.data.tokenizer import load_tokenizer, tokenizer_hash, train_bpe
from megallm.data.units import UnitResult
from tests.helpers import stdlib_subset

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def synthetic_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"doc {seed}-{i}: " + " ".join(rng.choices(WORDS, k=rng.randint(5, 60))) for i in range(count)]


def write_jsonl(path: Path, records: list[dict], compress: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def write_parquet(path: Path, columns: dict[str, list], row_group_size: int) -> Path:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_bpe(synthetic_texts(200, seed=0), vocab_size=300).save(str(path))
    return path


@pytest.fixture
def mixed_inputs(tmp_path) -> dict:
    """Text files, JSON lines (plain and gzipped) and Parquet, with the documents each holds."""
    folder = tmp_path / "inputs"
    (folder / "text").mkdir(parents=True)
    texts = synthetic_texts(6, seed=1)
    for i, text in enumerate(texts):
        (folder / "text" / f"{i}.txt").write_text(text)
    lines = synthetic_texts(300, seed=2)
    write_jsonl(folder / "a.jsonl", [{"id": i, "body": t} for i, t in enumerate(lines)]
                + [{"id": -1, "body": ""}, {"id": -2, "body": None}])  # empty texts are skipped
    with open(folder / "a.jsonl", "a") as f:
        f.write("\n   \n")  # blank lines are skipped
    gz = synthetic_texts(40, seed=3)
    write_jsonl(folder / "b.jsonl.gz", [{"body": t} for t in gz], compress=True)
    rows = synthetic_texts(90, seed=4)
    write_parquet(folder / "c.parquet", {"id": list(range(90)), "body": rows}, row_group_size=30)
    return {"folder": folder, "documents": texts + lines + gz + rows}


def corpus_files(folder: Path) -> dict[str, bytes]:
    """What a corpus consists of (records aside): manifest, tokenizer, shards."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def decoded_documents(folder: Path) -> dict[str, list[str]]:
    manifest = Manifest.load(folder)
    tok = load_tokenizer(folder / "tokenizer.json")
    decoded = {}
    for split, shards in manifest.splits.items():
        docs = [d for shard in shards for d in read_documents(str(folder / shard.path))]
        assert all(d[-1] == manifest.eos_id for d in docs)
        decoded[split] = [tok.decode(d[:-1].tolist()) for d in docs]
    return decoded


def prepare_quietly(files, output, **options) -> Manifest:
    return prepare(files, output, log=lambda *_: None, **options)


def test_manifest_describes_the_shards(small_corpus):
    manifest = Manifest.load(small_corpus)
    tok = load_tokenizer(small_corpus / "tokenizer.json")
    assert manifest.vocab_size == tok.get_vocab_size() == 512
    assert manifest.tokenizer_sha256 == tokenizer_hash(tok)
    assert len(manifest.splits["train"]) >= 3 and manifest.splits["val"]
    assert (manifest.text_field, manifest.val_fraction, manifest.shard_tokens) == ("text", 0.05, 50_000)
    for shards in manifest.splits.values():
        for shard in shards:
            docs = list(read_documents(str(small_corpus / shard.path)))
            assert len(docs) == shard.documents
            assert sum(len(d) for d in docs) == shard.tokens
            assert all(d[-1] == manifest.eos_id and d.dtype == np.dtype(manifest.dtype) for d in docs)
            assert file_sha256(small_corpus / shard.path) == shard.sha256
    # Decoding a document gives back source text.
    doc = next(read_documents(str(small_corpus / manifest.splits["train"][0].path)))
    assert "import" in tok.decode(doc[:-1].tolist())


def test_same_input_gives_identical_shards(small_corpus, tmp_path):
    again = tmp_path / "again"
    prepare(stdlib_subset(), again, vocab_size=512, tokenizer_path=None, val_fraction=0.05,
            shard_tokens=50_000, tokenizer_train_bytes=1 << 20, log=lambda *_: None)
    assert corpus_files(again) == corpus_files(small_corpus)


def test_every_format_yields_its_documents_once(mixed_inputs, tokenizer_file, tmp_path):
    files = sorted(p for p in mixed_inputs["folder"].rglob("*") if p.is_file())
    manifest = prepare_quietly(files, tmp_path / "out", tokenizer_path=tokenizer_file, text_field="body",
                               unit_bytes=4000, shard_tokens=2000, workers=2)
    decoded = decoded_documents(tmp_path / "out")
    assert sorted(decoded["train"] + decoded["val"]) == sorted(mixed_inputs["documents"])
    assert manifest.text_field == "body" and manifest.units >= 5  # a.jsonl is cut into line-aligned ranges
    shard_units = {s.path.split("-")[1] for s in manifest.splits["train"]}
    assert len(shard_units) == manifest.units


def test_worker_count_does_not_change_the_corpus(mixed_inputs, tokenizer_file, tmp_path):
    files = sorted(p for p in mixed_inputs["folder"].rglob("*") if p.is_file())
    for workers in (1, 2):
        prepare_quietly(files, tmp_path / f"w{workers}", tokenizer_path=tokenizer_file, text_field="body",
                        unit_bytes=4000, shard_tokens=2000, workers=workers)
    assert corpus_files(tmp_path / "w1") == corpus_files(tmp_path / "w2")
    assert len([n for n in corpus_files(tmp_path / "w1") if n.endswith(".tar")]) > 10


def test_split_follows_each_documents_identity(tmp_path, tokenizer_file):
    lines = synthetic_texts(1000, seed=5)
    source = write_jsonl(tmp_path / "big.jsonl", [{"text": t} for t in lines])
    val_sets = []
    for unit_bytes in (10_000, 1 << 20):  # the same documents held out however the file is cut
        out = tmp_path / f"units-{unit_bytes}"
        prepare_quietly([source], out, tokenizer_path=tokenizer_file, val_fraction=0.1, unit_bytes=unit_bytes,
                        workers=1)
        decoded = decoded_documents(out)
        assert len(decoded["train"]) + len(decoded["val"]) == 1000
        val_sets.append(sorted(decoded["val"]))
    assert val_sets[0] == val_sets[1]
    assert 65 <= len(val_sets[0]) <= 135  # 10% of 1000, within 3.5 standard deviations


def test_a_tiny_corpus_still_gets_a_validation_document(tmp_path, tokenizer_file):
    files = []
    for i, text in enumerate(synthetic_texts(3, seed=6)):
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text(text)
    manifest = prepare_quietly(files, tmp_path / "out", tokenizer_path=tokenizer_file, val_fraction=0.01, workers=1)
    assert [sum(s.documents for s in manifest.splits[split]) for split in ("train", "val")] == [2, 1]


def test_resume_redoes_only_the_units_left_unfinished(mixed_inputs, tokenizer_file, tmp_path):
    files = sorted(p for p in mixed_inputs["folder"].rglob("*") if p.is_file())
    out = tmp_path / "out"
    options = dict(tokenizer_path=tokenizer_file, text_field="body", unit_bytes=4000, shard_tokens=2000, workers=2)
    manifest = prepare_quietly(files, out, **options)
    finished = corpus_files(out)
    # Unit 1 died half-way through a shard; unit 3 wrote its shards but not its record; no manifest yet.
    damaged = next(s.path for s in manifest.splits["train"] if "-u000001-" in s.path)
    (out / damaged).write_bytes((out / damaged).read_bytes()[:1000])
    (out / "records" / "unit-000003.json").unlink()
    (out / "manifest.json").unlink()
    interrupted = time.time_ns()

    lines = []
    prepare(files, out, log=lines.append, **options)
    assert f"tokenized 2 of {manifest.units} units ({manifest.units - 2} done by an earlier run)" in "\n".join(lines)
    rewritten = {p.name for p in out.glob("*.tar") if p.stat().st_mtime_ns > interrupted}
    assert rewritten == {name for name in finished if "-u000001-" in name or "-u000003-" in name}
    assert corpus_files(out) == finished


def test_parts_then_merge_match_a_single_run(mixed_inputs, tmp_path, capsys):
    common = ["--input", f"{mixed_inputs['folder']}/**/*", "--text-field", "body", "--vocab-size", "300",
              "--unit-mb", "0.004", "--shard-tokens", "2000", "--workers", "1"]
    assert main([*common, "--output", str(tmp_path / "single")]) == 0
    parts = tmp_path / "parts"
    assert main([*common, "--output", str(parts), "--tokenizer-only"]) == 0
    assert sorted(p.name for p in parts.iterdir()) == ["tokenizer.json"]
    assert main([*common, "--output", str(parts), "--part", "0/2"]) == 0
    capsys.readouterr()
    assert main(["--output", str(parts), "--merge"]) == 2
    assert "part(s) 1/2 of" in capsys.readouterr().err
    assert main([*common, "--output", str(parts), "--part", "1/2"]) == 0
    assert main([*common, "--output", str(parts), "--merge"]) == 0
    assert corpus_files(parts) == corpus_files(tmp_path / "single")


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare_data: error: "), lines
    return lines[0]


def bad_jsonl_line(folder: Path) -> tuple[Path, list[str]]:
    lines = [json.dumps({"text": t}) for t in synthetic_texts(200, seed=7)]
    lines[149] = '{"text": "unterminated'
    path = folder / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")  # line 150 lies in a later unit: its number is still right
    return path, [f"{path} line 150: invalid JSON", "fix or remove the line"]


def jsonl_without_field(folder: Path) -> tuple[Path, list[str]]:
    path = write_jsonl(folder / "nofield.jsonl", [{"text": "fine"}, {"body": "x", "id": 1}])
    return path, [f"{path} line 2 has no field 'text' (it has body, id)", "--text-field"]


def parquet_without_column(folder: Path) -> tuple[Path, list[str]]:
    path = write_parquet(folder / "nocol.parquet", {"body": ["a", "b"], "id": [1, 2]}, row_group_size=1)
    return path, [f"{path} has no column 'text' (it has body, id)", "--text-field"]


def empty_file(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "empty.txt"
    path.write_bytes(b"")
    return path, [f"input file {path} is empty", "remove it"]


@pytest.mark.parametrize("make_input", [bad_jsonl_line, jsonl_without_field, parquet_without_column, empty_file])
@pytest.mark.parametrize("tokenizer", ["given", "trained"])
def test_bad_input_is_a_one_line_error(make_input, tokenizer, tokenizer_file, tmp_path, capsys):
    path, phrases = make_input(tmp_path)
    chosen = ["--tokenizer", str(tokenizer_file)] if tokenizer == "given" else ["--vocab-size", "300"]
    line = one_line_error(capsys, ["--input", str(path), "--output", str(tmp_path / "out"), "--unit-mb", "0.005",
                                   "--workers", "2", *chosen])
    for phrase in phrases:
        assert phrase in line
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_glob_matching_nothing_and_part_without_tokenizer_are_errors(tmp_path, capsys):
    line = one_line_error(capsys, ["--input", f"{tmp_path}/nothing/*.txt", "--output", str(tmp_path / "out")])
    assert "matches no file" in line and "nothing/*.txt" in line
    (tmp_path / "doc.txt").write_text("some text")
    line = one_line_error(capsys, ["--input", str(tmp_path / "doc.txt"), "--output", str(tmp_path / "out"),
                                   "--part", "0/2"])
    assert "--tokenizer-only" in line
    line = one_line_error(capsys, ["--input", str(tmp_path / "doc.txt"), "--output", str(tmp_path / "out"),
                                   "--part", "2/2"])
    assert "0 <= I < N" in line


def test_progress_lines_are_spaced_and_report_rate_and_eta():
    now, lines = [0.0], []
    progress = Progress(units=4, size=400, workers=2, log=lines.append, every=5.0, clock=lambda: now[0])
    for t, skipped in ((1.0, True), (6.0, False), (7.0, False)):
        now[0] = t
        progress.update(UnitResult(index=0, tokens=3000, documents=3, size=100, skipped=skipped))
    # One line (at t=6): 2 of 4 units done, 3,000 tokens tokenized in 6 s; 200 bytes left at 100 bytes per 6 s.
    assert lines == ["units 2/4 | 3,000 tokens | 500 tokens/s | eta 0m12s"]
    now[0] = 10.0
    progress.update(UnitResult(index=3, tokens=4000, documents=4, size=100, skipped=False))
    assert len(lines) == 1  # the last unit prints no progress line, only the summary
    assert progress.summary() == ("tokenized 3 of 4 units (1 done by an earlier run): 10,000 tokens in 10.0s, "
                                  "1,000 tokens/s, 500 tokens/s per worker (2 worker processes)")
