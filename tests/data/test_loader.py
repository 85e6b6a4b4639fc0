"""The streaming loader: the global sample order, rank/worker splitting over real gloo
processes, and damaged shards (an error naming the shard, or skipped and counted)."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from megallm.data.corpus import open_corpus
from megallm.data.loader import TrainBatches, read_shard_tokens, read_shard_windows
from megallm.data.order import SampleOrder
from megallm.data.shards import Manifest, write_shard
from megallm.errors import DataError
from tests.helpers import run_ranks

SEQ_LEN, MBS, STREAMS, WORKERS = 64, 2, 8, 2


def train_batches(location: str | Path, dp_rank: int = 0, dp: int = 1, consumed: int = 0, workers: int = WORKERS,
                  skip_bad: bool = False, streams: int = STREAMS) -> TrainBatches:
    corpus = open_corpus(str(location), None, ("train",))
    return TrainBatches(corpus, "train", seq_len=SEQ_LEN, micro_batch_size=MBS, streams=streams, seed=7,
                        dp_rank=dp_rank, dp=dp, consumed_samples=consumed, num_workers=workers, prefetch=8,
                        skip_bad_shards=skip_bad, device=torch.device("cpu"))


def digest(row) -> str:
    return hashlib.sha1(np.asarray(row, dtype=np.int64).tobytes()).hexdigest()


def reference_windows(corpus_dir: Path) -> list[np.ndarray]:
    manifest = Manifest.load(corpus_dir)
    return [read_shard_windows(str(corpus_dir / s.path), s, manifest.vocab_size, SEQ_LEN)
            for s in manifest.splits["train"]]


# ---- the order: a pure function of the sample index -------------------------------------------
def test_each_epoch_is_a_permutation_of_the_windows():
    shard_tokens = [65 * n + 17 for n in (40, 3, 25, 1, 60, 9)]  # unequal shards with leftovers
    order = SampleOrder(shard_tokens, seq_len=64, streams=8, seed=1)
    assert order.epoch_samples == 8 * (138 // 8) and order.left_out_per_epoch == 138 % 8
    epochs = [[order.address(e * order.epoch_samples + i)[1:] for i in range(order.epoch_samples)] for e in (0, 1)]
    for addresses in epochs:
        assert len(set(addresses)) == order.epoch_samples  # no window twice within an epoch
        assert all(0 <= w < shard_tokens[s] // 65 for s, w in addresses)
    assert epochs[0] != epochs[1]  # each epoch has its own order
    again = SampleOrder(shard_tokens, seq_len=64, streams=8, seed=1)
    assert [again.address(i) for i in range(50)] == [order.address(i) for i in range(50)]
    other_seed = SampleOrder(shard_tokens, seq_len=64, streams=8, seed=2)
    assert [other_seed.address(i) for i in range(50)] != [order.address(i) for i in range(50)]
    # Consecutive samples come from different streams, i.e. far-apart parts of the epoch.
    assert len({order.stream(i) for i in range(8)}) == 8


def test_too_few_sequences_for_the_streams_is_an_error():
    with pytest.raises(DataError, match=r"fewer than data.streams=64; .*lower data.streams"):
        SampleOrder([65 * 10], seq_len=64, streams=64, seed=0)


# ---- ranks x workers over real processes ----------------------------------------------------------
def _read_epoch(corpus_dir: str, steps: int) -> dict:
    """One rank (a process of tests.helpers.run_ranks) reading `steps` steps of 2 micro-batches."""
    import torch.distributed as dist

    mp.set_start_method("fork", force=True)  # as under torchrun (a spawned rank would spawn its workers too)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = train_batches(Path(corpus_dir), dp_rank=rank, dp=world)
    seen, done = [], 0
    for _ in range(steps):  # in lockstep, as training: a rank that ran dry would stop the others
        for _ in range(2):  # gradient accumulation
            rows = batches.next_micro_batch()
            seen += [(s, digest(r)) for s, r in zip(batches.last_samples, rows)]
        ranks_here = torch.ones(())
        dist.all_reduce(ranks_here)  # every rank finished this step
        done += int(ranks_here.item()) == world
    dist.destroy_process_group()
    return {"rank": rank, "seen": seen, "steps": done}


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_each_sample_of_an_epoch_is_read_once_by_ranks_and_workers(small_corpus, world):
    """dp ranks x 2 workers (8 readers for world=4, more than the corpus's train shards:
    streams split shards at the sample level)."""
    manifest = Manifest.load(small_corpus)
    if world == 4:
        assert len(manifest.splits["train"]) < world * WORKERS  # the case of more readers than shards
    order = SampleOrder([s.tokens for s in manifest.splits["train"]], SEQ_LEN, STREAMS, seed=7)
    per_step = world * MBS * 2
    steps = order.epoch_samples // per_step + 3  # past the end of the epoch
    gathered = run_ranks(world, _read_epoch, str(small_corpus), steps)
    assert [g["steps"] for g in gathered] == [steps] * world  # every rank took every step
    assert {len(g["seen"]) for g in gathered} == {steps * MBS * 2}
    seen = sorted(tuple(item) for g in gathered for item in g["seen"])
    assert [s for s, _ in seen] == list(range(steps * per_step))  # each global sample once, none missing
    windows = reference_windows(small_corpus)
    for sample, sha in seen:
        _, shard, window = order.address(sample)
        assert sha == digest(windows[shard][window]), sample
    epoch0 = {order.address(s)[1:] for s, _ in seen if s < order.epoch_samples}
    assert len(epoch0) == order.epoch_samples  # all distinct windows
    assert sum(len(w) for w in windows) - len(epoch0) == order.left_out_per_epoch < STREAMS


def test_resume_reads_the_same_samples_with_any_number_of_ranks(small_corpus):
    """From consumed=C, the samples after C are the same as an uninterrupted read, for 1 or 2 ranks."""
    uninterrupted = train_batches(small_corpus, workers=0)
    rows = []
    for _ in range(12):
        batch = uninterrupted.next_micro_batch()
        rows += [(s, digest(r)) for s, r in zip(uninterrupted.last_samples, batch)]
    consumed = 8
    resumed = []
    for rank in range(2):
        batches = train_batches(small_corpus, dp_rank=rank, dp=2, consumed=consumed)
        for _ in range(4):
            batch = batches.next_micro_batch()
            resumed += [(s, digest(r)) for s, r in zip(batches.last_samples, batch)]
    assert sorted(resumed) == rows[consumed:]


@pytest.mark.parametrize("location", ["file://{folder}", "pipe:cat {folder}/{{name}}"])
def test_corpus_streams_from_a_url(small_corpus, location):
    """data.path may be any URL WebDataset opens; here a file: URL and a pipe: command."""
    url = location.format(folder=small_corpus)
    remote = open_corpus(url, None, ("train", "val"))
    assert remote.manifest == Manifest.load(small_corpus)
    local_batches, remote_batches = train_batches(small_corpus, workers=0), train_batches(url)
    for _ in range(5):
        assert torch.equal(remote_batches.next_micro_batch(), local_batches.next_micro_batch())


def test_unreachable_corpus_url_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"cannot read pipe:cat .*manifest.json .*check data.path"):
        open_corpus(f"pipe:cat {tmp_path}/nothing/{{name}}", None, ("train",))


# ---- damaged shards ------------------------------------------------------------------------------
@pytest.fixture
def corpus_copy(small_corpus, tmp_path) -> Path:
    copy = tmp_path / "corpus"
    shutil.copytree(small_corpus, copy)
    return copy


def first_shard_read(corpus_dir: Path) -> Path:
    manifest = Manifest.load(corpus_dir)
    order = SampleOrder([s.tokens for s in manifest.splits["train"]], SEQ_LEN, STREAMS, seed=7)
    return corpus_dir / manifest.splits["train"][order.address(0).shard].path


def test_truncated_shard_is_an_error_naming_it(corpus_copy):
    shard = first_shard_read(corpus_copy)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    batches = train_batches(corpus_copy)  # through 2 worker processes: the error must still arrive whole
    with pytest.raises(DataError, match=rf"shard .*{shard.name} is damaged: its sha256 is \w+, the manifest says"):
        batches.next_micro_batch()


def flip_token_bytes(shard: Path, count: int, vocab_size: int) -> None:
    """Change `count` bytes inside the token payloads of `shard`, each to a value that keeps every id
    below the vocabulary (the bit rot that reading alone cannot see)."""
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:  # the first tokens after each .npy header (128 bytes)
        positions = [m.offset_data + 128 + 2 * k for m in tar.getmembers()
                     for k in range(0, (m.size - 128) // 2 - 1, 7)]  # never a document's last token (eos)
    assert len(positions) >= count
    for position in positions[:count]:
        data[position] = (data[position] + 1) % min(256, vocab_size)  # low byte of a uint16 id
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("flipped", [1, 64])
def test_bytes_flipped_inside_a_shard_are_named_as_damage(corpus_copy, flipped):
    shard = first_shard_read(corpus_copy)
    manifest = Manifest.load(corpus_copy)
    flip_token_bytes(shard, flipped, manifest.vocab_size)
    info = next(s for s in manifest.splits["train"] if s.path == shard.name)
    # unchecked, the shard reads as well-formed tokens, every one inside the vocabulary
    tokens = read_shard_tokens(str(shard), info, manifest.vocab_size, verify=False)
    assert len(tokens) == info.tokens and int(tokens.max()) < manifest.vocab_size
    with pytest.raises(DataError, match=rf"shard .*{shard.name} is damaged: its sha256 is \w+, the manifest says "
                                        rf"{info.sha256[:12]} \(changed on disk since it was written\)"):
        train_batches(corpus_copy).next_micro_batch()


def test_token_ids_beyond_the_vocabulary_are_an_error(corpus_copy):
    shard = first_shard_read(corpus_copy)
    manifest = Manifest.load(corpus_copy)
    info = next(s for s in manifest.splits["train"] if s.path == shard.name)
    tokens = np.full(info.tokens, manifest.vocab_size + 3, dtype=np.uint16)  # same size, foreign ids
    info.sha256 = write_shard(shard, [tokens], 0).sha256  # a consistent manifest: only the ids are wrong
    manifest.save(corpus_copy)
    with pytest.raises(DataError, match=rf"{shard.name} holds token id {manifest.vocab_size + 3} >= vocab size"):
        train_batches(corpus_copy).next_micro_batch()


def test_bad_shard_can_be_skipped_and_counted(corpus_copy):
    shard = first_shard_read(corpus_copy)
    shard.write_bytes(shard.read_bytes()[:1000])
    batches = train_batches(corpus_copy, skip_bad=True)
    rows = [batches.next_micro_batch() for _ in range(20)]
    assert all(r.shape == (MBS, SEQ_LEN + 1) for r in rows)
    manifest = Manifest.load(corpus_copy)
    bad_index = [s.path for s in manifest.splits["train"]].index(shard.name)
    assert batches.skipped_shards == {bad_index}
    # The replacement is deterministic: a fresh loader (e.g. after resume) reads the same rows.
    again = train_batches(corpus_copy, skip_bad=True, workers=0)
    assert all(torch.equal(r, again.next_micro_batch()) for r in rows)
