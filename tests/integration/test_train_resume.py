"""The training job end to end over 2 gloo ranks: loss falls, evaluation and checkpoints are
written, a stopped-and-resumed run equals an uninterrupted one exactly (the same token ids
at every step after the resume, the same losses), also when it resumes on one rank instead
of two, and a resume that does not fit the checkpoint stops with one line and leaves the
checkpoint untouched.

These runs start the real script as users do (torchrun, and plain python for one rank).
"""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import (
    SMALL_MODEL,
    assert_one_line_error,
    records,
    run_pretrain,
    traced_steps,
    train,
    tree_digest,
)

pytestmark = pytest.mark.slow

STEPS = 8
# 2 ranks x 2 sequences x 2 accumulation steps x 64 tokens.
SCHEDULE = ["train.seq_len=64", "train.micro_batch_size=2", "train.global_batch_tokens=512",
            f"train.steps={STEPS}", "optim.lr=3e-3", "optim.warmup_steps=2", "logging.every=1",
            "train.eval_every=4", "train.eval_batches=2", "checkpoint.every=4", "checkpoint.keep_last=0",
            "data.trace_samples=true"]


@pytest.fixture(scope="module")
def runs(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    common = [*SMALL_MODEL, "model.num_layers=2", *SCHEDULE, f"data.path={small_corpus}"]
    full = run_pretrain([*common, f"run_dir={root / 'full'}"], nproc=2)
    assert full.returncode == 0, full.stderr[-3000:]
    first = run_pretrain([*common, f"run_dir={root / 'resumed'}", "train.stop_at_step=3"], nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_pretrain([*common, f"run_dir={root / 'resumed'}"], nproc=2)
    assert second.returncode == 0, second.stderr[-3000:]
    # The step-3 checkpoint of the 2-rank run, continued by one process (ZeRO-0: replicas may change).
    step3 = root / "resumed" / "checkpoints" / "step_00000003"
    one_rank = run_pretrain([*common, f"run_dir={root / 'one_rank'}", f"train.resume={step3}"])
    assert one_rank.returncode == 0, one_rank.stderr[-3000:]
    return {"root": root, "common": common, "full": full, "first": first, "second": second}


def test_loss_falls_from_log_vocab(runs):
    losses = records(runs["root"] / "full", "train")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert abs(losses[1]["loss"] - math.log(512)) < 0.3  # a fresh model is near uniform
    assert losses[STEPS]["loss"] < losses[1]["loss"] - 0.3
    evals = records(runs["root"] / "full", "eval")
    assert sorted(evals) == [4, 8] and evals[8]["val_loss"] < evals[4]["val_loss"]
    assert math.isclose(evals[8]["val_ppl"], math.exp(evals[8]["val_loss"]), rel_tol=1e-9)
    for record in losses.values():
        assert record["tokens_per_s"] > 0 and record["grad_norm"] > 0 and record["lr"] > 0


def test_only_rank0_reports_progress(runs):
    out = runs["full"].stdout
    assert out.count(f"step {STEPS}/{STEPS} |") == 1
    assert out.count("model tiny:") == 1


def test_checkpoints_are_complete(runs):
    ckpts = runs["root"] / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000004", "step_00000008"]
    state = json.loads((ckpts / "step_00000008" / "megallm_state.json").read_text())
    assert state["step"] == STEPS and state["consumed_samples"] == STEPS * 8 and state["tokens_seen"] == STEPS * 512
    assert state["layout"] == {"tp": 1, "pp": 1, "dp": 2, "zero_stage": 0}
    assert len(state["tokenizer_sha256"]) == 64 and state["model"]["vocab_size"] == 512
    assert sorted(p.name for p in (ckpts / "step_00000008" / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    assert (ckpts / "step_00000008" / "config.yaml").is_file()


def test_resumed_run_equals_uninterrupted_run(runs):
    full = records(runs["root"] / "full", "train")
    resumed_dir = runs["root"] / "resumed"
    assert "resumed from" in runs["second"].stdout and "step_00000003" in runs["second"].stdout
    resumed = records(resumed_dir, "train")  # steps 1-3 from the first run, 4-8 after resuming
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        # Bitwise on any CPU: the same layout and threads per rank run the same kernels in the same order on
        # both sides, so a difference is state the checkpoint lost (docs/testing/tolerances.md).
        assert resumed[step]["loss"] == full[step]["loss"], step
        assert resumed[step]["grad_norm"] == full[step]["grad_norm"], step
    assert records(resumed_dir, "eval")[8]["val_loss"] == records(runs["root"] / "full", "eval")[8]["val_loss"]


def test_resumed_run_reads_the_same_token_ids(runs):
    full = traced_steps(runs["root"] / "full")
    assert sorted(full) == list(range(1, STEPS + 1))
    assert [s for step in full for s, _ in full[step]] == list(range(STEPS * 8))  # 8 sequences a step
    assert traced_steps(runs["root"] / "resumed") == full
    for rank in (0, 1):  # and each rank read exactly what it read uninterrupted
        name = f"samples/dp_rank_{rank:05d}.jsonl"
        assert (runs["root"] / "resumed" / name).read_text() == (runs["root"] / "full" / name).read_text()


def test_resume_on_another_number_of_ranks(runs):
    """Two ranks stop at step 3; one rank continues: same samples, the same losses up to summation order."""
    one_rank = traced_steps(runs["root"] / "one_rank")
    full = traced_steps(runs["root"] / "full")
    assert sorted(one_rank) == list(range(4, STEPS + 1))
    assert {step: full[step] for step in one_rank} == one_rank  # nothing skipped or repeated
    losses, reference = records(runs["root"] / "one_rank", "train"), records(runs["root"] / "full", "train")
    for step in range(4, STEPS + 1):
        assert losses[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-5), step
    state = json.loads((runs["root"] / "one_rank" / "checkpoints" / "step_00000008" / "megallm_state.json").read_text())
    assert state["layout"]["dp"] == 1 and state["consumed_samples"] == STEPS * 8


def test_mismatched_resume_leaves_checkpoint_untouched(runs, tmp_path):
    from megallm.data.tokenizer import train_bpe

    run_dir = runs["root"] / "full"
    before = tree_digest(run_dir / "checkpoints")
    other = tmp_path / "tok.json"
    train_bpe(["some other text " * 40], vocab_size=300).save(str(other))
    bad_tokenizer = train([*runs["common"], f"run_dir={run_dir}", f"data.tokenizer={other}"])
    assert_one_line_error(bad_tokenizer, "does not match corpus")
    bad_model = train([*runs["common"], f"run_dir={run_dir}", "model.num_layers=3", "train.steps=9"])
    assert_one_line_error(bad_model, "holds a different model", "model.num_layers: saved 2 vs now 3")
    assert tree_digest(run_dir / "checkpoints") == before
