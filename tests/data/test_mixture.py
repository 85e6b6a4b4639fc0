"""Data mixtures (data.sources, megallm.data.mixture): three corpora prepared with one tokenizer read as
one run's data, and what is refused before start-up.

Sources: the standard library's email, json and http packages, each prepared by tools/prepare_data.py's
code, the first training the 512-token BPE the others are given. Which source and which of its windows a
global sample is reading is exact integer arithmetic (megallm.data.blend, megallm.data.order), so the
sample checks compare token rows exactly.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from megallm.cli.pretrain import main as pretrain_main
from megallm.config import SourceConfig
from megallm.data.loader import TrainBatches
from megallm.data.mixture import open_mixture
from tests.helpers import SMALL_MODEL, assert_one_line_error, records, run_main, traced_steps, train
from tests.mixture_inputs import WEIGHTS, source_args

SEQ_LEN, MBS = 64, 2


def mixture_batches(sources, dp_rank=0, dp=1, consumed=0, workers=0) -> TrainBatches:
    mixture = open_mixture("", {n: SourceConfig(str(sources[n]), w) for n, w in WEIGHTS.items()}, None, ("train",))
    return TrainBatches(mixture, "train", seq_len=SEQ_LEN, micro_batch_size=MBS, streams=4, seed=7, dp_rank=dp_rank,
                        dp=dp, consumed_samples=consumed, num_workers=workers, prefetch=8, skip_bad_shards=False,
                        device=torch.device("cpu"))


def read(batches: TrainBatches, micro_batches: int) -> dict[int, bytes]:
    """{global sample: its token row's bytes} of the next micro-batches."""
    rows = {}
    for _ in range(micro_batches):
        batch = batches.next_micro_batch()
        rows.update({g: row.numpy().tobytes() for g, row in zip(batches.last_samples, batch)})
    batches.close()
    return rows


def test_samples_follow_the_weights_and_every_layout_reads_the_same(mixture_sources):
    """One rank reading 120 samples, two data-parallel ranks with loader workers, and a rank resumed
    at sample 40: the same rows for the same global samples; each source gives its blend count of them,
    each row one of that source's windows."""
    sources = mixture_sources
    one = read(mixture_batches(sources), 60)
    two = {**read(mixture_batches(sources, 0, 2, workers=2), 30), **read(mixture_batches(sources, 1, 2, workers=2), 30)}
    resumed = read(mixture_batches(sources, consumed=40), 40)
    assert one == two and all(resumed[g] == one[g] for g in range(40, 120))
    batches = mixture_batches(sources)
    assert batches.source_samples(120) == dict(zip(WEIGHTS, batches.blend.counts(120))) == {"email": 60, "json": 24,
                                                                                          "http": 36}
    windows = {name: {row.tobytes() for row in _all_windows(sources[name])} for name in WEIGHTS}
    found = Counter(next(name for name in WEIGHTS if one[g] in windows[name]) for g in range(120))
    assert found == Counter({"email": 60, "json": 24, "http": 36})
    batches.close()


def _all_windows(corpus: Path) -> list[np.ndarray]:
    from megallm.data.loader import read_shard_windows
    from megallm.data.shards import Manifest

    manifest = Manifest.load(corpus)
    return [row.astype(np.int64) for s in manifest.splits["train"]
            for row in read_shard_windows(str(corpus / s.path), s, manifest.vocab_size, SEQ_LEN)]


@pytest.mark.parametrize("extra, phrases", [
    (lambda s: [f"+data.sources.odd.path={s['other_tokenizer']}"],
     ["data.sources.email and data.sources.odd were prepared with different tokenizers", "--tokenizer"]),
    (lambda s: ["+data.sources.json.max_epochs=0.001"],
     ["data.sources.json: the run reads", "epochs of its", "more than its max_epochs=0.001"]),
    (lambda s: ["data.sources.http.weight=-1"], ["data.sources.http.weight must be a finite number >= 0, got -1.0"]),
    (lambda s: ["+data.sources.http.wieght=1"], ["data.sources.http.wieght is not a setting of a source"]),
    (lambda s: ["+data.sources.extra.weight=1"], ["data.sources.extra.path is missing"]),
    (lambda s: ["+data.stages=[{at_step:5,weights:{jsn:1}}]"], ["data.stages[0] names 'jsn', which is not a source"]),
    (lambda s: ["+data.stages=[{at_step:20,weights:{json:1}}]"],
     ["data.stages[0] starts after step 20, which must lie after the previous stage's (0) and before train.steps=20"]),
    (lambda s: ["+data.anneal.json=1"], ["data.anneal starts at the WSD decay: set optim.schedule=wsd"]),
    (lambda s: ["+data.stages=[{at_step:5}]"], ["data.stages[0] must be {at_step: STEP, weights:"]),
])
def test_what_a_mixture_cannot_be_is_one_line_before_start_up(mixture_sources, tmp_path, capsys, extra, phrases):
    result = run_main(pretrain_main, [*SMALL_MODEL, *source_args(mixture_sources), *extra(mixture_sources),
                                      f"run_dir={tmp_path}/run",
                                      "train.seq_len=64", "train.micro_batch_size=2",
                                      "train.global_batch_tokens=256", "train.steps=20"], capsys)
    assert_one_line_error(result, *phrases)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_stages_change_the_mix_and_a_resume_inside_or_across_one_is_exact(mixture_sources, tmp_path):
    """json alone after step 3, http alone in the WSD decay (its last step): resumed after step 2 (before the
    stage) and after step 4 (inside it), each run logs the uninterrupted run's losses bitwise (same machine,
    layout and kernels; the samples are the same pure function of the sample count)."""
    args = [*SMALL_MODEL, *source_args(mixture_sources), "train.seq_len=64", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", "train.steps=6", "train.eval_every=0", "checkpoint.every=1",
            "logging.every=1", "optim.warmup_steps=1", "train.precision=fp32", "optim.schedule=wsd",
            "+data.stages=[{at_step:3,weights:{json:1}}]", "+data.anneal.http=1"]
    whole = train([*args, f"run_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    steps = records(tmp_path / "whole", "train")
    tokens = {name: [steps[s][f"{name}/tokens"] for s in range(1, 7)] for name in WEIGHTS}
    per_step = 256
    assert [b - a for a, b in zip(tokens["json"][2:], tokens["json"][3:])] == [per_step, per_step, 0]
    assert tokens["http"][5] - tokens["http"][4] == per_step and tokens["email"][5] == tokens["email"][2]
    (mixture,) = records(tmp_path / "whole", "mixture").values()
    assert mixture["json/tokens"] == tokens["json"][5] and sum(mixture[f"{n}/share"] for n in WEIGHTS) == \
        pytest.approx(1, abs=3e-6)  # shares rounded to 6 decimals
    for stop in (2, 4):
        run = tmp_path / f"stopped_{stop}"
        assert train([*args, f"run_dir={run}", f"train.stop_at_step={stop}"]).returncode == 0
        assert train([*args, f"run_dir={run}"]).returncode == 0
        resumed = records(run, "train")
        assert [resumed[s]["loss"] for s in range(1, 7)] == [steps[s]["loss"] for s in range(1, 7)], stop
    # Resuming the step-4 checkpoint with the first stage's weights changed would read steps 1-4 otherwise:
    # refused; changing the mix from step 4 on is a stage, and goes.
    changed = [a.replace("weights:{json:1}", "weights:{email:1}") for a in args]
    refused = train([*changed, f"run_dir={tmp_path / 'stopped_4'}", "train.steps=8"])
    assert_one_line_error(refused, "the checkpoint at step 6 read its data with from step 0: email 0.5, json 0.2, "
                          "http 0.3; from step 3: email 0, json 1, http 0", "+data.stages=[{at_step:6,weights:")
    later = [*args[:-2], "+data.stages=[{at_step:3,weights:{json:1}},{at_step:5,weights:{http:1}},"
                         "{at_step:6,weights:{email:1}}]"]  # the anneal at step 5 kept as an explicit stage
    assert train([*later, f"run_dir={tmp_path / 'stopped_4'}", "train.steps=8"]).returncode == 0
    extended = records(tmp_path / "stopped_4", "train")
    assert extended[8]["email/tokens"] - extended[6]["email/tokens"] == 2 * per_step


@pytest.mark.slow
def test_a_mixture_trains_logs_its_sources_and_resumes_bitwise(mixture_sources, tmp_path):
    """A 6-step run on 2 ranks logs each source's tokens (their sum is tokens_seen) and validation loss
    (val_loss their weighted mean); stopped after step 3 and resumed, it logs the uninterrupted run's
    losses bitwise (same machine and layout: the same kernels in the same order on the same samples)."""
    args = [*SMALL_MODEL, *source_args(mixture_sources), "train.seq_len=64", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", "train.steps=6", "train.eval_every=3", "train.eval_batches=2",
            "checkpoint.every=3", "logging.every=1", "optim.warmup_steps=1", "train.precision=fp32"]
    whole = train([*args, f"run_dir={tmp_path / 'whole'}"], nproc=2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    steps = records(tmp_path / "whole", "train")
    for record in steps.values():
        assert sum(record[f"{name}/tokens"] for name in WEIGHTS) == record["tokens_seen"]
    assert {name: steps[6][f"{name}/tokens"] // 64 for name in WEIGHTS} == {"email": 12, "json": 5, "http": 7}
    evals = records(tmp_path / "whole", "eval")[6]
    assert evals["val_loss"] == pytest.approx(sum(w * evals[f"{n}/loss"] for n, w in WEIGHTS.items()), rel=1e-12)
    assert "email/loss" in whole.stdout
    first = train([*args, f"run_dir={tmp_path / 'resumed'}", "train.stop_at_step=3"], nproc=2)
    second = train([*args, f"run_dir={tmp_path / 'resumed'}"], nproc=2)
    assert first.returncode == second.returncode == 0, second.stderr[-3000:]
    resumed = records(tmp_path / "resumed", "train")
    assert [resumed[s]["loss"] for s in range(1, 7)] == [steps[s]["loss"] for s in range(1, 7)]
    assert records(tmp_path / "resumed", "eval")[6] | {"time": 0} == evals | {"time": 0}


def test_renormalize_drops_a_used_up_source_and_the_others_share_its_weight(mixture_sources):
    """json capped at a third of an epoch over a run that would read it for longer: with data.renormalize a
    stage at the last step within the cap gives it 0 from there, email and http keeping their 5:3 ratio; the
    run reads json within its cap. Without it the run is refused (above)."""
    from megallm.config import check_config, compose_config
    from megallm.data.mixture import Mixture, open_run_data

    cfg, _ = compose_config([*SMALL_MODEL, *source_args(mixture_sources), "+data.sources.json.max_epochs=0.3",
                             "data.renormalize=true", "train.seq_len=64", "train.micro_batch_size=2",
                             "train.global_batch_tokens=256", "train.steps=400", "data.streams=4"])
    check_config(cfg, 1)
    mixture = open_run_data(cfg)
    per_step = 4
    (start, weights), = mixture.stages
    json_epoch = mixture.orders("train", 64, 4, cfg.train.seed)[1].epoch_samples
    cap = int(0.3 * json_epoch)
    counts = mixture.blend(cfg.train.seed).counts
    unchanged = Mixture(mixture.sources).blend(cfg.train.seed).counts
    assert start % per_step == 0 and counts(start)[1] <= cap < unchanged(start + per_step)[1]  # the last step within
    assert counts(400 * per_step)[1] == counts(start)[1] <= cap
    assert weights == {"email": 0.5, "json": 0.0, "http": 0.3}
    after = [c1 - c0 for c0, c1 in zip(counts(start), counts(400 * per_step))]
    assert after[1] == 0 and abs(after[0] / (after[0] + after[2]) - 0.5 / 0.8) < 2 / (after[0] + after[2])


@pytest.mark.slow
def test_a_two_rank_mixture_resumed_on_one_rank_reads_the_same_samples(mixture_sources, tmp_path):
    """Stopped after step 3 on DP=2 and resumed on DP=1: steps 4-6 read the (global sample, token rows) the
    uninterrupted DP=2 run read (data.trace_samples), across a stage at step 4."""
    args = [*SMALL_MODEL, *source_args(mixture_sources), "train.seq_len=64", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", "train.steps=6", "train.eval_every=0", "checkpoint.every=3",
            "logging.every=1", "optim.warmup_steps=1", "data.trace_samples=true",
            "+data.stages=[{at_step:4,weights:{json:1,http:1}}]"]
    assert train([*args, f"run_dir={tmp_path / 'whole'}"], nproc=2).returncode == 0
    assert train([*args, f"run_dir={tmp_path / 'moved'}", "train.stop_at_step=3"], nproc=2).returncode == 0
    resumed = train([*args, f"run_dir={tmp_path / 'moved'}"], nproc=1)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]

    whole, moved = traced_steps(tmp_path / "whole"), traced_steps(tmp_path / "moved")
    assert [moved[s] for s in range(1, 7)] == [whole[s] for s in range(1, 7)]
