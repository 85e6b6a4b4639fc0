"""Bad input to launch/pretrain.py: one line on stderr, exit code 2, nothing written.

The config, data and dry-run checks finish before any process group starts, so they run
here through the entry point's `main`, in this process. The real script is launched
twice: over torchrun, where only rank 0 reports a mistake, and as a 2-rank run whose
shards are truncated, where every rank names its shard and none hangs.
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
        (["+model=tiny", "train.activation_checkpointing=partial"], ["none, full or selective"]),
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
        (["+model=tiny", "nan_guard.policy=retry"], ["nan_guard.policy must be stop, skip or rollback"]),
        (["+model=tiny", "nan_guard.skip_steps=[9-7]"], ["nan_guard.skip_steps: '9-7' is not a step"]),
        # the objective
        (["+model=tiny", "train.objective=bert"], ["train.objective must be causal or mlm, got 'bert'"]),
        (["+model=tiny", "model.bidirectional=true"], ["model tiny is bidirectional", "train.objective=mlm"]),
        (["+model=bert_base"], ["model bert_base is bidirectional", "train.objective=mlm"]),
        (["+model=tiny", "mlm.nsp=true"], ["mlm.nsp=true needs train.objective=mlm"]),
        (["+model=tiny", "train.objective=mlm", "mlm.nsp=true"], ["mlm.nsp=true needs data.document_masking=false"]),
        (["+model=tiny", "train.objective=mlm", "mlm.mask_prob=1.5"], ["mlm.mask_prob must be within (0, 1), got 1.5"]),
        (["+model=tiny", "train.objective=mlm", "mlm.replace_with_mask=0.95"],
         ["mlm.replace_with_mask + mlm.replace_with_random must be <= 1"]),
    ],
)
def test_config_mistakes(args, phrases, tmp_path, capsys):
    result = pretrain([*args, f"run_dir={tmp_path}/run"], capsys)
    assert_one_line_error(result, *phrases)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="these settings run on a GPU")
@pytest.mark.parametrize("setting,phrases", [
    ("kernels.attention=flex", ["kernels.attention=flex needs a GPU to train", "kernels.attention=auto"]),
    ("kernels.loss=liger", ["kernels.loss=liger needs a GPU", "kernels.loss=chunked"]),
])
def test_gpu_only_kernels_on_cpu(setting, phrases, small_corpus, tmp_path, capsys):
    result = pretrain(["+model=tiny", setting, f"data.path={small_corpus}", f"run_dir={tmp_path}/run"], capsys)
    assert_one_line_error(result, *phrases)
    assert not (tmp_path / "run").exists()


def test_data_path_without_shards(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(pretrain(["+model=tiny", f"data.path={empty}"], capsys), "manifest.json is missing")


def test_manifest_listing_missing_shard(small_corpus, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(small_corpus, broken)
    first = json.loads((broken / "manifest.json").read_text())["splits"]["train"][0]["path"]
    (broken / first).unlink()
    assert_one_line_error(pretrain(["+model=tiny", f"data.path={broken}"], capsys), "lacks 1 shard", first)


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
    assert_one_line_error(pretrain(["+model=tiny", f"data.path={broken}"], capsys), *phrases)


def test_tokenizer_that_does_not_match_manifest(small_corpus, tmp_path, capsys):
    from megallm.data.tokenizer import train_bpe

    other = tmp_path / "other-tokenizer.json"
    train_bpe(["a completely different little corpus " * 50], vocab_size=300).save(str(other))
    line = assert_one_line_error(
        pretrain(["+model=tiny", f"data.path={small_corpus}", f"data.tokenizer={other}"], capsys),
        "does not match corpus", "vocab 512",
    )
    assert str(other) in line


def test_mlm_on_a_corpus_without_mask_token(small_corpus, tmp_path, capsys):
    """A corpus prepared before tokenizers had a mask token (its manifest has no mask_id) is refused for MLM."""
    old = tmp_path / "old"
    shutil.copytree(small_corpus, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["mask_id"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(pretrain(["+model=tiny", "train.objective=mlm", f"data.path={old}",
                                    f"run_dir={tmp_path}/run"], capsys),
                          "train.objective=mlm needs a mask token", str(old), "--mask-token")
    assert not (tmp_path / "run").exists()


def test_model_vocab_smaller_than_tokenizer(small_corpus, capsys):
    assert_one_line_error(
        pretrain(["+model=tiny", f"data.path={small_corpus}", "model.vocab_size=100"], capsys),
        "model.vocab_size=100 is smaller",
    )


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
