"""Bad input to launch/pretrain.py: one line on stderr, exit code 2, nothing written.

The config, data and dry-run checks finish before any process group starts, so they run
here through the entry point's `main`, in this process; each refused run is checked to
leave no run folder (`refused`). The real script is launched as users start it: with a
config mistake, over torchrun, where only rank 0 reports a mistake, and as a 2-rank run
whose shards are truncated, where every rank names its shard and none hangs. Refusals
that come from the run's folders, or after the run folder is locked, are in
tests/test_run_paths.py.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from megallm.cli.pretrain import main
from tests.helpers import assert_one_line_error, run_main, run_pretrain, train


def pretrain(args: list[str], capsys):
    return run_main(main, args, capsys)


def refused(args: list[str], tmp_path, capsys, *phrases: str) -> str:
    """launch/pretrain.py ARGS run_dir=TMP/run failed with one line holding `phrases`, and left no run folder."""
    line = assert_one_line_error(pretrain([*args, f"run_dir={tmp_path}/run"], capsys), *phrases)
    assert not (tmp_path / "run").exists()
    return line


@pytest.mark.parametrize(
    "args,phrases",
    [
        (["+model=tiny", "train.stpes=3"], ["unknown config key 'train.stpes'", "did you mean train.steps"]),
        (["+model=tiny", "optimm.lr=1"], ["unknown config key 'optimm'", "did you mean optim"]),
        (["+model=2b"], ["unknown model '2b'", "tiny, 125m, 350m, 1b, 3b, 7b, 8b, 13b, 70b, bert_base, ladder_2"]),
        ([], ["no model chosen", "+model=NAME"]),
        (["model=tiny"], ["+model=NAME"]),
        (["+model=tiny", "train.steps=many"], ["train.steps=many"]),
        (["+model=tiny", "model.num_heads=5"], ["not divisible by model.num_heads=5"]),
        (["+model=tiny", "train.global_batch_tokens=1000"], ["not a multiple of"]),
        (["+model=tiny", "+parallel=tp2pp2", "parallel.zero_stage=3"],
         ["parallel.zero_stage=3 cannot be combined with parallel.pp=2", "use parallel.zero_stage=1"]),
        (["+model=tiny", "parallel.tp=8"], ["parallel.tp=8 does not divide model.num_kv_heads=4", "whole key/value"]),
        (["+model=tiny", "parallel.tp=2"], ["1 rank(s) cannot be split into parallel.tp x parallel.pp = 2 x 1"]),
        (["+model=tiny", "parallel=tp2"], ["+parallel=NAME", "tp2pp2"]),
        (["+model=tiny", "+parallel=tp3"], ["unknown parallel 'tp3'", "tp2"]),
        (["+model=tiny", "parallel.sequence_parallel=true"], ["needs parallel.tp > 1"]),
        (["+model=tiny", "train.activation_checkpointing=partial"],
         ["train.activation_checkpointing must be one of none, full, selective, got 'partial'"]),
        (["+model=tiny", "kernels.attention=flash"], ["kernels.attention must be one of auto, sdpa, flex, flash_attn"]),
        (["+model=tiny", "+parallel=tp2pp2", "kernels.loss=chunked"],
         ["kernels.loss=chunked needs parallel.pp=1", "kernels.loss=plain"]),
        (["+model=tiny", "parallel.tp=2", "kernels.loss=liger"], ["kernels.loss=liger needs parallel.tp=1"]),
        (["+model=tiny", "kernels.loss_chunk_tokens=0"], ["kernels.loss_chunk_tokens must be > 0, got 0"]),
        # keys that `+` would add past the schema
        (["+model=tiny", "+train.foo=1"], ["unknown config key 'train.foo'"]),
        (["+model=tiny", "+optim.lrr=1"], ["unknown config key 'optim.lrr'", "did you mean optim.lr"]),
        (["+model=tiny", "+logging.wandb.x=1"], ["unknown config key 'logging.wandb.x'"]),
        # values out of range, each named with its range
        (["+model=tiny", "optim.lr=-1e-3"], ["optim.lr must be > 0, got -0.001"]),
        (["+model=tiny", "optim.lr=nan"], ["optim.lr must be > 0, got nan"]),
        (["+model=tiny", "optim.beta1=2"], ["optim.beta1 must be within [0, 1), got 2.0"]),
        (["+model=tiny", "optim.beta2=1"], ["optim.beta2 must be within [0, 1), got 1.0"]),
        (["+model=tiny", "optim.eps=-1"], ["optim.eps must be > 0, got -1.0"]),
        (["+model=tiny", "optim.weight_decay=-0.5"], ["optim.weight_decay must be >= 0, got -0.5"]),
        (["+model=tiny", "optim.grad_clip=-1"], ["optim.grad_clip must be >= 0 (0 disables clipping), got -1.0"]),
        (["+model=tiny", "optim.warmup_steps=-1"], ["optim.warmup_steps must be >= 0, got -1"]),
        (["+model=tiny", "optim.min_lr_ratio=1.5"], ["optim.min_lr_ratio must be within [0, 1], got 1.5"]),
        (["+model=tiny", "train.steps=0"], ["train.steps must be > 0, got 0"]),
        (["+model=tiny", "train.eval_every=-1"], ["train.eval_every must be >= 0", "got -1"]),
        (["+model=tiny", "train.eval_batches=0"], ["train.eval_batches must be > 0, got 0"]),
        (["+model=tiny", "data.streams=0"], ["data.streams must be > 0, got 0"]),
        (["+model=tiny", "data.num_workers=-1"], ["data.num_workers must be >= 0, got -1"]),
        (["+model=tiny", "checkpoint.every=-5"], ["checkpoint.every must be >= 0", "got -5"]),
        (["+model=tiny", "checkpoint.keep_last=-1"], ["checkpoint.keep_last must be >= 0", "got -1"]),
        (["+model=tiny", "logging.every=0"], ["logging.every must be > 0, got 0"]),
        (["+model=tiny", "nan_guard.policy=retry"],
         ["nan_guard.policy must be one of stop, skip, rollback, got 'retry'"]),
        (["+model=tiny", "nan_guard.skip_steps=[9-7]"], ["nan_guard.skip_steps: '9-7' is not a step"]),
        # the objective
        (["+model=tiny", "train.objective=bert"], ["train.objective must be one of causal, mlm, got 'bert'"]),
        (["+model=tiny", "model.bidirectional=true"], ["model tiny is bidirectional", "train.objective=mlm"]),
        (["+model=bert_base"], ["model bert_base is bidirectional", "train.objective=mlm"]),
        (["+model=tiny", "mlm.nsp=true"], ["mlm.nsp=true needs train.objective=mlm"]),
        (["+model=tiny", "train.objective=mlm", "mlm.nsp=true"], ["mlm.nsp=true needs data.document_masking=false"]),
        (["+model=tiny", "train.objective=mlm", "mlm.mask_prob=1.5"], ["mlm.mask_prob must be within (0, 1), got 1.5"]),
        (["+model=tiny", "train.objective=mlm", "mlm.replace_with_mask=0.95"],
         ["mlm.replace_with_mask + mlm.replace_with_random must be <= 1"]),
        # the model's numbers: tracebacks at start-up, or NaN at step 1, before they were checked
        (["+model=tiny", "model.init_std=-1"], ["model.init_std must be > 0", "got -1.0"]),
        (["+model=tiny", "model.make_vocab_size_divisible_by=0"],
         ["model.make_vocab_size_divisible_by must be >= 1", "got 0"]),
        (["+model=tiny", "model.rope_theta=0"], ["model.rope_theta must be > 1", "got 0.0"]),
        (["+model=tiny", "model.norm_eps=-1"], ["model.norm_eps must be > 0", "got -1.0"]),
        (["+model=tiny", "model.norm_eps=0"], ["model.norm_eps must be > 0", "got 0.0"]),
        (["+model=tiny", f"model.hidden_size={2**70}"], ["model.hidden_size must fit in 64 bits"]),
        # the run's numbers
        (["+model=tiny", f"train.seed={2**65}"], ["train.seed must be within [0, 2^63)", f"got {2**65}"]),
        (["+model=tiny", "train.seed=-1"], ["train.seed must be within [0, 2^63)", "got -1"]),
        (["+model=tiny", "train.seq_len=1", "train.global_batch_tokens=4"], ["train.seq_len must be >= 2", "got 1"]),
        (["+model=tiny", f"train.steps={10**23}"], ["train.steps must fit in 64 bits", f"got {10**23}"]),
        (["+model=tiny", f"train.steps={10**16}"],
         [f"train.steps x train.global_batch_tokens = {10**16} x 524288", "lower train.steps"]),
        (["+model=tiny", f"checkpoint.at_steps=[{2**70}]"], ["checkpoint.at_steps[0] must fit in 64 bits"]),
        (["+model=tiny", "train.dry_run=true", "train.dry_run_world_size=0"],
         ["train.dry_run_world_size must be >= 1, or null", "got 0"]),
        # a window longer than the model's context: TinyLlama was pretrained on 2048 tokens
        (["+model=tinyllama_1b", "train.seq_len=4096"],
         ["train.seq_len=4096 exceeds model.max_position_embeddings=2048", "model tinyllama_1b",
          "raise model.max_position_embeddings to at least 4096", "RoPE scaling", "model.rope_scaling.rope_type"]),
        (["+model=tiny", "model.max_position_embeddings=1024"],
         ["train.seq_len=2048 exceeds model.max_position_embeddings=1024"]),
    ],
)
def test_config_mistakes(args, phrases, tmp_path, capsys):
    refused(args, tmp_path, capsys, *phrases)


def test_sequence_parallel_needs_whole_shards_of_the_sequence(tmp_path, capsys, monkeypatch):
    """Sequence parallelism splits each window over the TP ranks: the README's planning command with a
    seq_len that 4 ranks cannot share is refused, and so is a 2-rank launch's (megatron-core asserted it
    inside the process group)."""
    refused(["+model=7b", "train.dry_run=true", "train.dry_run_world_size=8", "parallel.tp=4",
             "parallel.sequence_parallel=true", "train.activation_checkpointing=selective", "train.seq_len=4094",
             "train.micro_batch_size=1", "train.global_batch_tokens=8188"], tmp_path, capsys,
            "parallel.sequence_parallel=true splits each sequence over the parallel.tp=4",
            "train.seq_len=4094 is not a multiple of 4")
    fits = pretrain(["+model=7b", "train.dry_run=true", "train.dry_run_world_size=8", "parallel.tp=4",
                     "parallel.sequence_parallel=true", "train.seq_len=4096", "train.micro_batch_size=1",
                     "train.global_batch_tokens=8192"], capsys)
    assert fits.returncode == 0 and "TP=4" in fits.stdout, fits.stderr
    monkeypatch.setenv("WORLD_SIZE", "2")  # after the dry runs: they set this process's launcher variables
    refused(["+model=tiny", "parallel.tp=2", "parallel.sequence_parallel=true", "train.seq_len=2047",
             "train.global_batch_tokens=8188"], tmp_path, capsys, "train.seq_len=2047 is not a multiple of 2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="these settings run on a GPU")
@pytest.mark.parametrize("setting,phrases", [
    ("kernels.attention=flex", ["kernels.attention=flex needs a GPU to train", "kernels.attention=auto"]),
    ("kernels.loss=liger", ["kernels.loss=liger needs a GPU", "kernels.loss=chunked"]),
])
def test_gpu_only_kernels_on_cpu(setting, phrases, small_corpus, tmp_path, capsys):
    refused(["+model=tiny", setting, f"data.path={small_corpus}"], tmp_path, capsys, *phrases)


def test_data_path_without_shards(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(["+model=tiny", f"data.path={empty}"], tmp_path, capsys, "manifest.json is missing")


def test_manifest_listing_missing_shard(small_corpus, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(small_corpus, broken)
    first = json.loads((broken / "manifest.json").read_text())["splits"]["train"][0]["path"]
    (broken / first).unlink()
    refused(["+model=tiny", f"data.path={broken}"], tmp_path, capsys, "lacks 1 shard", first)


@pytest.mark.parametrize("args,phrases", [
    (["data.streams=100000"], ["fewer than data.streams=100000", "lower data.streams"]),
    # 675 held-out tokens
    (["train.seq_len=1024"], ["split 'val'", "holds no sequence of 1025 tokens", "lower train.seq_len"]),
])
def test_corpus_too_small_for_the_data_order(args, phrases, small_corpus, tmp_path, capsys):
    """Found when the data order is built: before any process group now, not in the loop (every rank
    reported it, and the run folder was left with its lock, config.yaml and metrics.jsonl)."""
    refused(["+model=tiny", f"data.path={small_corpus}", *args], tmp_path, capsys, *phrases)


@pytest.mark.parametrize("damage,phrases", [
    (lambda text: text[: len(text) // 2], ["manifest.json is not valid JSON", "re-run tools/prepare_data.py"]),
    (lambda text: json.dumps({**json.loads(text), "splits": {"train": [{"path": "x.tar"}]}}),
     ["manifest.json is not a complete megallm manifest", "re-run tools/prepare_data.py"]),
    (lambda text: "[]", ["manifest.json has format 'list'"]),
])
def test_invalid_manifest(damage, phrases, small_corpus, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(small_corpus, broken)
    (broken / "manifest.json").write_text(damage((broken / "manifest.json").read_text()))
    refused(["+model=tiny", f"data.path={broken}"], tmp_path, capsys, *phrases)


def test_tokenizer_that_does_not_match_manifest(small_corpus, tmp_path, capsys):
    from megallm.data.tokenizer import train_bpe

    other = tmp_path / "other-tokenizer.json"
    train_bpe(["a completely different little corpus " * 50], vocab_size=300).save(str(other))
    line = refused(["+model=tiny", f"data.path={small_corpus}", f"data.tokenizer={other}"], tmp_path, capsys,
                   "does not match corpus", "vocab 512")
    assert str(other) in line


def test_mlm_on_a_corpus_without_mask_token(small_corpus, tmp_path, capsys):
    """A corpus prepared before tokenizers had a mask token (its manifest has no mask_id) is refused for MLM."""
    old = tmp_path / "old"
    shutil.copytree(small_corpus, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["mask_id"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    refused(["+model=tiny", "train.objective=mlm", f"data.path={old}"], tmp_path, capsys,
            "train.objective=mlm needs a mask token", str(old), "--mask-token")


def test_model_vocab_smaller_than_tokenizer(small_corpus, tmp_path, capsys):
    refused(["+model=tiny", f"data.path={small_corpus}", "model.vocab_size=100"], tmp_path, capsys,
            "model.vocab_size=100 is smaller")


def test_dry_run_70b_on_a_laptop(capsys):
    result = pretrain(["+model=70b", "train.dry_run=true", "train.dry_run_world_size=64",
                       "parallel.zero_stage=3", "train.micro_batch_size=1"], capsys)
    assert result.returncode == 0, result.stderr
    assert "68.977B parameters" in result.stdout
    assert "GFLOP" in result.stdout and "ZeRO-3" in result.stdout and "64 rank(s)" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on GPUs sequence parallelism runs")
def test_sequence_parallel_is_refused_on_cpu(small_corpus, tmp_path):
    """The real script over torchrun: rank 0 alone reports, and the launch fails."""
    result = run_pretrain(["+model=tiny", "parallel.tp=2", "parallel.sequence_parallel=true",
                           f"data.path={small_corpus}", f"run_dir={tmp_path}/run"], nproc=2)
    assert result.returncode != 0  # torchrun adds its own report of the failed ranks
    errors = [line for line in result.stderr.splitlines() if line.startswith("megallm: error:")]
    assert len(errors) == 1 and "sequence_parallel=true needs GPUs with NCCL" in errors[0], result.stderr[-2000:]


@pytest.mark.slow
def test_truncated_shard_stops_every_rank_with_its_name(small_corpus, tmp_path):
    """Over 2 ranks with loader workers: one line naming the shard, and no rank left hanging."""
    broken = tmp_path / "broken"
    shutil.copytree(small_corpus, broken)
    names = [s["path"] for s in json.loads((broken / "manifest.json").read_text())["splits"]["train"]]
    for name in names:
        data = (broken / name).read_bytes()
        (broken / name).write_bytes(data[: len(data) // 3])
    args = ["+model=tiny", "model.num_layers=1", "train.seq_len=64", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", "train.steps=2", f"data.path={broken}", f"run_dir={tmp_path}/run"]
    result = train(args, nproc=2, timeout=300)  # a hang would time out
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if re.match(r"megallm: error: (\[rank \d\] )?shard ", line)]
    assert errors and all(any(name in line for name in names) for line in errors), result.stderr[-2000:]
    assert "data.skip_bad_shards=true" in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_script_reports_a_typo_in_one_line():
    """The entry point as users start it: a config mistake is one line, before any heavy import."""
    result = run_pretrain(["+model=tiny", "train.stpes=3"])
    assert_one_line_error(result, "unknown config key 'train.stpes'", "did you mean train.steps")


@pytest.mark.slow
@pytest.mark.parametrize("setting,phrase", [
    ("model.init_std=-1", "model.init_std must be > 0"),  # was: RuntimeError from torch's normal_ in the ranks
    ("model.rope_theta=0", "model.rope_theta must be > 1"),  # was: a NaN loss at step 1
    (f"train.seed={2**64}", "train.seed must be within [0, 2^63)"),  # was: RuntimeError from torch.manual_seed
])
def test_script_refuses_out_of_range_model_values(setting, phrase, small_corpus, tmp_path):
    """`python launch/pretrain.py +model=tiny ...` as the README writes it: one line, exit 2, no run folder."""
    result = run_pretrain(["+model=tiny", setting, f"data.path={small_corpus}", f"run_dir={tmp_path / 'run'}",
                           "train.steps=2", "train.seq_len=64", "train.micro_batch_size=2",
                           "train.global_batch_tokens=256"])
    assert_one_line_error(result, phrase)
    assert not (tmp_path / "run").exists()
