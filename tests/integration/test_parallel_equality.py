"""Every parallel layout trains the same model to the same numbers as one process.

Real gloo process groups (2 and 4 ranks via torchrun), 10 fp32 steps of a small Llama on
the same data and seed. Compared with the single-process run:
- the loss at every step, within 1e-5 relative;
- the final weights gathered from all ranks into one copy (checkpoint.consolidated),
  within 1e-3 relative L2 difference per tensor.

Why a tolerance at all: the layouts add the same numbers in other orders (TP splits the
matmul reductions, DP and ZeRO sum gradients over ranks), which changes fp32 results in
the last bits: a few eps (1.2e-7) per reduction, so losses agree within 1e-5 (84 eps;
observed <= 1.7e-7 with AVX-512, AVX2 and scalar kernels). Single weight entries can
differ by more: Adam divides each update by sqrt(v), so an entry whose gradient is itself
of rounding size takes a step that rounding decides, up to the learning rate (3e-3) per
step. One such entry in the embedding (norm 3.8) is 8e-4 of it: hence 1e-3 per tensor,
while a run that trains another model is off by far more (document masking switched
off: 0.5). Observed: rounding alone leaves every tensor within 9e-6; one embedding entry
of the TP=2 x DP=2 ZeRO-3 run took another step: 3.4e-5 with AVX-512 kernels, 5.1e-5 with
AVX2 ones (MKL_ENABLE_INSTRUCTIONS=AVX2, as on an AMD EPYC), which failed the earlier
bound of 5e-5 (docs/testing/tolerances.md). Each run prints its worst tensor (`pytest -s`).

The corpus is the standard library's short modules (~60 tokens each), so that the
layouts train with document masking at work (on by default): many training windows
span an end of document. A run with masking switched off
(`data.document_masking=false`) shows that it is.

The masked-LM objective is checked the same way: an encoder with BERT's next-sentence head
at TP=2 and PP=2 (its TP=2 checkpoint resumes bit-identically), and with document masking
at DP=2 under ZeRO-2.

Also here: a checkpoint of a TP x PP run resumes under the same layout bit-identically,
and resuming it under another layout stops with one line naming both layouts and the
command that reshards it.

The runs start launch/pretrain.py's `main` on gloo ranks forked from one server process
(tests.helpers.train), which pays the imports once instead of once per rank;
tests/integration/test_train_resume.py launches through torchrun.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import (
    SMALL_MODEL,
    assert_one_line_error,
    records,
    run_tool,
    train,
    tree_digest,
)

pytestmark = pytest.mark.slow

STEPS = 10
MODEL = [*SMALL_MODEL, "model.num_layers=4"]
# 8 sequences of 32 tokens per step: 4 micro-batches of 2 on one data-parallel rank, 2 on each of two.
SCHEDULE = ["train.precision=fp32", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=256", f"train.steps={STEPS}",
            "optim.lr=3e-3", "optim.warmup_steps=2", "logging.every=1", "train.eval_every=5", "train.eval_batches=2",
            "checkpoint.every=5", "checkpoint.keep_last=0", "checkpoint.consolidated=true"]
UNTIED = ["model.tie_embeddings=false"]
# Masked-LM with next-sentence prediction (an encoder with the NSP head; halves must see each other).
MLM = ["train.objective=mlm", "mlm.nsp=true", "data.document_masking=false"]

# name: (ranks, overrides, baseline). Recompute modes ride along on some layouts; their exact
# equality to no recompute is tested in one process in tests/model/test_llama_reference.py.
LAYOUTS = {
    "tp2": (2, ["parallel.tp=2", "train.activation_checkpointing=selective"], "single"),
    "pp2": (2, ["+parallel=pp2", "train.activation_checkpointing=full"], "single"),
    "dp2_zero1": (2, ["parallel.zero_stage=1"], "single"),
    "dp2_zero2": (2, ["parallel.zero_stage=2"], "single"),
    "dp2_zero3": (2, ["+parallel=zero3"], "single"),
    "tp2pp2": (4, ["+parallel=tp2pp2", "parallel.pipeline_partition=parameters"], "single"),
    "tp2dp2_zero3_untied": (4, ["parallel.tp=2", "parallel.zero_stage=3", *UNTIED], "single_untied"),
    "mlm_tp2": (2, ["parallel.tp=2", *MLM], "single_mlm"),
    "mlm_pp2": (2, ["+parallel=pp2", *MLM], "single_mlm"),
    # Without next-sentence pairs (drawn within a micro-batch, so they follow its composition), masked LM
    # is the same in data-parallel layouts too: each step's loss is normalised by its scored tokens.
    "mlm_dp2_zero2": (2, ["parallel.zero_stage=2", "train.objective=mlm"], "single_mlm_documents"),
}


@pytest.fixture(scope="module")
def runs(short_documents, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    common = [*MODEL, *SCHEDULE, f"data.path={short_documents}"]

    def run(name: str, nproc: int, extra: list[str]):
        result = train([*common, *extra, f"run_dir={root / name}"], nproc=nproc)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        return result

    out = {"root": root, "common": common}
    out["single"] = run("single", 1, [])
    out["single_untied"] = run("single_untied", 1, UNTIED)
    out["single_unmasked"] = run("single_unmasked", 1, ["data.document_masking=false"])
    out["single_mlm"] = run("single_mlm", 1, MLM)
    out["single_mlm_documents"] = run("single_mlm_documents", 1, ["train.objective=mlm"])
    for name, (nproc, extra, _) in LAYOUTS.items():
        out[name] = run(name, nproc, extra)
    # The TP x PP run's step-5 checkpoint, resumed by new processes into another run folder.
    step5 = root / "tp2pp2" / "checkpoints" / "step_00000005"
    out["tp2pp2_resumed"] = run("tp2pp2_resumed", 4, [*LAYOUTS["tp2pp2"][1], f"train.resume={step5}"])
    mlm_step5 = root / "mlm_tp2" / "checkpoints" / "step_00000005"
    out["mlm_tp2_resumed"] = run("mlm_tp2_resumed", 2, [*LAYOUTS["mlm_tp2"][1], f"train.resume={mlm_step5}"])
    return out


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"step_{STEPS:08d}" / "consolidated.pt")["model"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(runs, layout):
    nproc, _, baseline = LAYOUTS[layout]
    root = runs["root"]
    ref, got = records(root / baseline, "train"), records(root / layout, "train")
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=0), (layout, step)
        assert got[step]["grad_norm"] == pytest.approx(ref[step]["grad_norm"], rel=1e-4), (layout, step)
    ref_eval, got_eval = records(root / baseline, "eval"), records(root / layout, "eval")
    assert got_eval[STEPS]["val_loss"] == pytest.approx(ref_eval[STEPS]["val_loss"], rel=1e-5)

    ref_w, got_w = final_weights(root / baseline), final_weights(root / layout)
    assert sorted(got_w) == sorted(ref_w)
    differences = {}
    for name, tensor in ref_w.items():
        assert got_w[name].shape == tensor.shape, name
        differences[name] = ((got_w[name] - tensor).norm() / tensor.norm()).item()
    worst = max(differences, key=differences.get)
    print(f"{layout}: worst weight relative L2 {differences[worst]:.1e} ({worst})")
    assert differences[worst] < 1e-3, (layout, worst, differences[worst])
    # Training moved the weights far more than the layouts disagree.
    start = torch.load(root / baseline / "checkpoints" / "step_00000005" / "consolidated.pt")["model"]
    assert (ref_w["blocks.0.attn.qkv.weight"] - start["blocks.0.attn.qkv.weight"]).norm() > 1e-3


def test_document_masking_is_at_work(runs):
    """Switched off, the documents of a window see each other: another loss trajectory."""
    masked, unmasked = records(runs["root"] / "single", "train"), records(runs["root"] / "single_unmasked", "train")
    differences = [abs(unmasked[step]["loss"] / masked[step]["loss"] - 1) for step in range(1, STEPS + 1)]
    assert max(differences) > 1e-3  # 100 x the layouts' tolerance


def test_runs_report_their_layout(runs):
    assert "TP=2 x PP=2 x DP=1 ZeRO-1" in runs["tp2pp2"].stdout
    assert "TP=2 x PP=1 x DP=2 ZeRO-3" in runs["tp2dp2_zero3_untied"].stdout
    assert "pipeline stages: 0: embedding, blocks 0-1 | 1: blocks 2-3, final_norm, output" in runs["pp2"].stdout
    state = json.loads((runs["root"] / "tp2pp2" / "checkpoints" / "step_00000010" / "megallm_state.json").read_text())
    assert state["layout"] == {"tp": 2, "pp": 2, "dp": 1, "zero_stage": 1}
    assert runs["tp2pp2"].stdout.count("step 10/10 |") == 1  # rank 0 alone reports


@pytest.mark.parametrize("layout", ["tp2pp2", "mlm_tp2"])
def test_checkpoint_resumes_exactly(runs, layout):
    """Resumed at step 5, the same losses bit for bit: the masked LM's masks and next-sentence pairs too."""
    root = runs["root"]
    assert "resumed from" in runs[f"{layout}_resumed"].stdout
    full, resumed = records(root / layout, "train"), records(root / f"{layout}_resumed", "train")
    assert sorted(resumed) == list(range(6, STEPS + 1))
    for step in resumed:
        # Bitwise on any CPU: same layout, same threads per rank, same kernels in the same order on both sides.
        assert resumed[step]["loss"] == full[step]["loss"], step
        assert resumed[step]["grad_norm"] == full[step]["grad_norm"], step
    a, b = final_weights(root / layout), final_weights(root / f"{layout}_resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mlm_runs_an_encoder_with_a_next_sentence_head(runs):
    """The masked-LM runs train the encoder and its NSP head; their loss starts near the MLM loss of a
    uniform guess plus ln 2 for the coin-flip NSP task."""
    weights = final_weights(runs["root"] / "single_mlm")
    assert {"nsp_head.pooler.weight", "nsp_head.classifier.weight"} <= set(weights)
    first = records(runs["root"] / "single_mlm", "train")[1]["loss"]
    assert first == pytest.approx(math.log(512) + math.log(2), rel=0.05)
    saved = yaml.safe_load((runs["root"] / "single_mlm" / "config.yaml").read_text())
    assert saved["model"]["bidirectional"] is True and saved["model"]["nsp_head"] is True


def test_resume_under_another_layout_is_refused(runs):
    run_dir = runs["root"] / "tp2pp2"
    before = tree_digest(run_dir / "checkpoints")
    result = train([*runs["common"], f"run_dir={run_dir}", "train.steps=12"])  # 1 rank: TP=1 PP=1
    assert_one_line_error(result, "TP=2 x PP=2 x DP=1 ZeRO-1", "TP=1 x PP=1 x DP=1 ZeRO-0",
                          "python tools/convert_ckpt.py reshard", "--tp 1 --pp 1 --dp 1 --zero-stage 0")
    assert tree_digest(run_dir / "checkpoints") == before


def test_an_encoder_is_not_exported_as_a_causal_model(runs, tmp_path):
    result = run_tool("convert_ckpt", "export", runs["root"] / "single_mlm", tmp_path / "hf")
    assert_one_line_error(result, "is a bidirectional encoder", "LlamaForCausalLM attends causally",
                          prefix="convert_ckpt: error: ")
    assert not (tmp_path / "hf").exists()
