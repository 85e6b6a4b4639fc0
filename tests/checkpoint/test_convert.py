"""tools/convert_ckpt.py on real checkpoints: reshard with optimizer state, export, import, bad input.

A TP=2 x PP=2 run (4 gloo ranks, ZeRO-1, vocabulary 300 padded to 512 rows for TP=2 and
to 384 for TP=1) saves a checkpoint at step 4 and goes on to step 8. Its step-4
checkpoint, resharded to TP=1 (one process) and to DP=2 ZeRO-3, resumes to step 8 with
the original run's losses: steps 6-8 depend on Adam's moments and step count, so the
optimizer state travelled, not only the weights. The same checkpoint exports to a
Hugging Face folder that transformers loads and that reproduces megallm's logits, and
a Hugging Face folder imported under TP=2 reads back bit for bit.

The export of the pipeline run starts the real tool (`python tools/convert_ckpt.py`);
the other conversions call its `main` in this process, whose worlds of ranks fork from
the server process this test session already started (megallm.parallel.local_world).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from megallm.cli.convert_ckpt import main as convert_main
from megallm.files import partial_path
from tests.helpers import (
    SMALL_MODEL,
    assert_one_line_error,
    records,
    run_main,
    run_tool,
    train,
)

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

MODEL = [*SMALL_MODEL, "model.num_layers=4"]

SCHEDULE = ["train.precision=fp32", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=256",
            "train.steps=8", "optim.lr=3e-3", "optim.warmup_steps=2", "logging.every=1", "train.eval_every=0",
            "checkpoint.every=4", "checkpoint.keep_last=0"]
RESUMED_STEPS = (5, 6, 7, 8)


@pytest.fixture
def convert(capsys):
    """tools/convert_ckpt.py's main in this process: (exit code, stdout, stderr)."""
    return lambda *args: run_main(convert_main, list(args), capsys)


@pytest.fixture(scope="module")
def padded_corpus(tmp_path_factory) -> Path:
    """Short standard-library modules, a 300-token vocabulary (padded for TP)."""
    from megallm.data.prepare import prepare
    from tests.helpers import short_stdlib_modules

    out = tmp_path_factory.mktemp("padded_corpus")
    prepare(short_stdlib_modules(), out, vocab_size=300, tokenizer_path=None, val_fraction=0.1, shard_tokens=5000,
            tokenizer_train_bytes=1 << 20, workers=1, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def pipeline_run(padded_corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tp2pp2") / "run"
    result = train([*MODEL, *SCHEDULE, f"data.path={padded_corpus}", "+parallel=tp2pp2", f"run_dir={run_dir}"],
                   nproc=4)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def step4(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "step_00000004"


@pytest.mark.parametrize("target,nproc,parallel", [
    (("--tp", 1, "--pp", 1, "--dp", 1, "--zero-stage", 0), 1, []),
    (("--tp", 1, "--pp", 1, "--dp", 2, "--zero-stage", 3), 2, ["+parallel=zero3"]),
], ids=["tp1", "dp2_zero3"])
def test_resharded_checkpoint_resumes_with_the_original_losses(pipeline_run, padded_corpus, tmp_path, target, nproc,
                                                               parallel, convert):
    out = tmp_path / "resharded"
    result = convert("reshard", step4(pipeline_run), out, *target)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not partial_path(out).exists()
    state = json.loads((out / "megallm_state.json").read_text())
    assert state["step"] == 4 and state["layout"]["dp"] == nproc and state["consumed_samples"] == 32

    resumed = tmp_path / "resumed"
    result = train([*MODEL, *SCHEDULE, f"data.path={padded_corpus}", *parallel, f"run_dir={resumed}",
                    f"train.resume={out}"], nproc=nproc)
    assert result.returncode == 0, result.stderr[-3000:]
    original, after = records(pipeline_run, "train"), records(resumed, "train")
    assert sorted(after) == list(RESUMED_STEPS)
    for step in RESUMED_STEPS:
        assert after[step]["loss"] == pytest.approx(original[step]["loss"], rel=1e-5), step
        assert after[step]["lr"] == pytest.approx(original[step]["lr"], rel=1e-9), step


def test_export_from_pipeline_checkpoint_loads_in_transformers(pipeline_run, tmp_path, convert):
    out = tmp_path / "hf"
    # The real tool, a run folder (its newest checkpoint), several safetensors shards.
    result = run_tool("convert_ckpt", "export", pipeline_run, out, "--max-shard-size", "0.0002")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reproduces megallm's logits" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == 300 and model.get_input_embeddings().weight.shape == (300, 64)
    ids = tokenizer("def main():\n    return 0\n")["input_ids"]
    assert 0 < len(ids) and max(ids) < 300

    # The folder verifies against the checkpoint it came from (the CLI's verify --against).
    result = convert("verify", out, "--against", step4(pipeline_run).with_name("step_00000008"))
    assert result.returncode == 0, result.stderr[-3000:]
    # A folder with two query heads swapped fails verification.
    from safetensors.torch import load_file, save_file

    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.self_attn.q_proj.weight"
    shard = out / weight_map[name]
    tensors = load_file(str(shard))
    tensors[name] = torch.cat(tensors[name].chunk(4)[::-1]).contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    result = convert("verify", out, "--against", step4(pipeline_run).with_name("step_00000008"))
    assert result.returncode == 1 and "does not reproduce megallm's logits" in result.stderr


def test_hugging_face_import_reads_back_bit_for_bit_and_continues_pretraining(pipeline_run, padded_corpus, tmp_path,
                                                                             convert):
    from megallm.checkpoint.convert import read_model
    from megallm.checkpoint.hf import read_hf_folder

    hf = tmp_path / "hf"
    assert convert("export", step4(pipeline_run), hf, "--no-verify").returncode == 0
    imported = tmp_path / "imported_tp2"
    result = convert("import", hf, imported, "--tp", 2, "--pp", 1, "--dp", 1, "--zero-stage", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((imported / "megallm_state.json").read_text())
    assert state["layout"] == {"tp": 2, "pp": 1, "dp": 1, "zero_stage": 1} and state["step"] == 0

    original, _ = read_hf_folder(hf)
    back, cfg, tokenizer = read_model(imported)  # spawns the TP=2 ranks and gathers
    assert cfg.vocab_size == 300 and tokenizer is not None
    assert sorted(back) == sorted(original)
    for name in original:  # bitwise: import, reshard and gather copy, split and join tensors, no arithmetic
        assert torch.equal(back[name], original[name]), name

    weights_only = tmp_path / "weights_only"
    assert convert("import", hf, weights_only, "--weights-only").returncode == 0
    again, _, _ = read_model(weights_only)
    assert all(torch.equal(again[name], original[name]) for name in original)

    # Both continue pretraining from the imported weights, with the resuming run's own LR schedule.
    continued = {}
    for name, checkpoint, nproc, parallel in (("weights_only", weights_only, 1, []),
                                              ("tp2", imported, 2, ["parallel.tp=2", "parallel.zero_stage=1"])):
        run_dir = tmp_path / f"continued_{name}"
        two_steps = [a for a in SCHEDULE if not a.startswith("train.steps=")] + ["train.steps=2"]
        result = train([*MODEL, *two_steps, f"data.path={padded_corpus}", *parallel,
                        f"train.resume={checkpoint}", f"run_dir={run_dir}"], nproc=nproc)
        assert result.returncode == 0, result.stderr[-3000:]
        continued[name] = records(run_dir, "train")
    fresh_start = records(pipeline_run, "train")  # the same first batches, from random weights
    for step in (1, 2):
        assert continued["tp2"][step]["loss"] == pytest.approx(continued["weights_only"][step]["loss"], rel=1e-5)
        assert continued["tp2"][step]["lr"] == pytest.approx(fresh_start[step]["lr"], rel=1e-9)
    assert continued["weights_only"][1]["loss"] < fresh_start[1]["loss"] - 0.3  # trained weights, not random


def test_bad_input_is_one_line(pipeline_run, tmp_path, convert):
    not_a_checkpoint = tmp_path / "empty"
    not_a_checkpoint.mkdir()
    assert_one_line_error(convert("export", not_a_checkpoint, tmp_path / "o1"), "is not a megallm checkpoint",
                          prefix="convert_ckpt: error: ")

    damaged = tmp_path / "damaged"
    shutil.copytree(step4(pipeline_run), damaged)
    lost = sorted(damaged.glob("layer_*-model_01-model_states.pt"))[-1]
    lost.unlink()
    assert_one_line_error(convert("reshard", damaged, tmp_path / "o2", "--tp", 1, "--pp", 1, "--dp", 1,
                                  "--zero-stage", 0), "is damaged: 1 of the", f"{lost.name} (missing or truncated)",
                          prefix="convert_ckpt: error: ")
    assert not (tmp_path / "o2").exists() and not partial_path(tmp_path / "o2").exists()

    assert_one_line_error(convert("reshard", step4(pipeline_run), tmp_path / "o3", "--tp", 3, "--pp", 1, "--dp", 1,
                                  "--zero-stage", 0), "--tp=3 does not divide model.num_kv_heads=2",
                          prefix="convert_ckpt: error: ")

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    assert_one_line_error(convert("import", gpt2, tmp_path / "o4", "--weights-only"),
                          "architecture 'GPT2LMHeadModel' is not supported", prefix="convert_ckpt: error: ")

