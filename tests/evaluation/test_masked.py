"""Masked-token accuracy (megallm.evaluation.masked) against a recomputation from first principles:
the validation windows cut from the shards here, masked through megallm.data.masking with the
run's settings, scored from the model's logits; the unigram baseline from a numpy bincount of
the train shards. A causal checkpoint is refused in one line.

One tiny encoder (train.objective=mlm, 20 steps, one process) is trained on `small_corpus`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from megallm.cli.evaluate import main as evaluate_main
from megallm.data.masking import MaskingRule, mask_tokens
from megallm.data.shards import Manifest, read_documents
from megallm.evaluation.masked import masked_accuracy
from megallm.model.packing import document_ids
from tests.helpers import SMALL_MODEL, assert_one_line_error, records, run_main, train

pytestmark = pytest.mark.slow  # the module trains a tiny encoder (about 10 s)

SEQ_LEN, MBS, EVAL_BATCHES = 64, 4, 4
RUN = [*SMALL_MODEL, "model.num_layers=2", "train.precision=fp32", f"train.seq_len={SEQ_LEN}",
       f"train.micro_batch_size={MBS}", f"train.global_batch_tokens={SEQ_LEN * MBS}", "optim.lr=1e-2",
       "optim.warmup_steps=2", "logging.every=5", "data.num_workers=0", "checkpoint.consolidated=true"]


def _train(run_dir: Path, corpus: Path, steps: int, *extra: str) -> Path:
    result = train([*RUN, f"train.steps={steps}", f"checkpoint.every={steps}", f"data.path={corpus}",
                    f"run_dir={run_dir}", *extra])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def encoder(small_corpus, tmp_path_factory) -> Path:
    """A run folder: a tiny encoder, evaluated on EVAL_BATCHES validation micro-batches at its last step."""
    return _train(tmp_path_factory.mktemp("mlm") / "run", small_corpus, 20, "train.objective=mlm",
                  "train.eval_every=20", f"train.eval_batches={EVAL_BATCHES}")


@pytest.fixture(scope="module")
def result(encoder, small_corpus) -> dict:
    return masked_accuracy(encoder, small_corpus, batches=EVAL_BATCHES)


def val_windows(corpus: Path, count: int) -> torch.Tensor:
    """The split's first `count` windows [count, SEQ_LEN + 1]: each shard's documents joined and cut into
    windows of SEQ_LEN + 1 tokens (the rest left), shards in manifest order, from the first again
    when the split has fewer."""
    manifest, rows = Manifest.load(corpus), []
    for info in manifest.splits["val"]:
        tokens = np.concatenate(list(read_documents(str(corpus / info.path))))
        usable = len(tokens) // (SEQ_LEN + 1) * (SEQ_LEN + 1)
        rows += list(tokens[:usable].reshape(-1, SEQ_LEN + 1))
    return torch.from_numpy(np.stack([rows[i % len(rows)] for i in range(count)]).astype(np.int64))


def train_counts(corpus: Path) -> np.ndarray:
    manifest = Manifest.load(corpus)
    tokens = np.concatenate([d for info in manifest.splits["train"] for d in read_documents(str(corpus / info.path))])
    return np.bincount(tokens.astype(np.int64), minlength=manifest.vocab_size)


@pytest.fixture(scope="module")
def expected(world_of_one, encoder, small_corpus) -> dict:
    return recompute(encoder, small_corpus)


def recompute(run_dir: Path, corpus: Path) -> dict:
    """The encoder's and the unigram guess's hits on the selected positions of EVAL_BATCHES micro-batches."""
    from megallm.model.config import ModelConfig
    from megallm.model.weights import model_from_weights

    checkpoint = run_dir / "checkpoints" / "step_00000020"
    saved = yaml.safe_load((checkpoint / "config.yaml").read_text())
    manifest = Manifest.load(corpus)
    mlm = saved["mlm"]
    rule = MaskingRule(mlm["mask_prob"], mlm["replace_with_mask"], mlm["replace_with_random"], mask_id=manifest.mask_id,
                       vocab_size=manifest.vocab_size, protected_ids=(manifest.eos_id,))
    tokens = val_windows(corpus, EVAL_BATCHES * MBS)[:, :-1]
    masked = mask_tokens(tokens, list(range(len(tokens))), saved["train"]["seed"], rule)
    state = json.loads((checkpoint / "megallm_state.json").read_text())
    weights = torch.load(checkpoint / "consolidated.pt", map_location="cpu", weights_only=False)["model"]
    model = model_from_weights(weights, ModelConfig(**state["model"]))
    with torch.no_grad():
        logits = model(masked.inputs, doc_ids=document_ids(tokens, manifest.eos_id)).transpose(0, 1)
    selected = masked.selected
    scored, labels = logits[selected], tokens[selected]
    counts = train_counts(corpus)
    counts[[manifest.eos_id, manifest.mask_id]] = 0  # never selected: no guess, no probability
    top = int(np.argmax(counts))
    p = (counts + 1.0) / (counts.sum() + manifest.vocab_size - 2)  # add-one over the vocabulary less those two
    return {"selected": int(selected.sum()), "correct": int((scored.argmax(-1) == labels).sum()),
            "mask": int((masked.inputs[selected] == manifest.mask_id).sum()),
            "mask_correct": int(((scored.argmax(-1) == labels) & (masked.inputs[selected] == manifest.mask_id)).sum()),
            "loss": float(F.cross_entropy(scored, labels)), "top": top, "unigram_correct": int((labels == top).sum()),
            "unigram_loss": float(-np.log(p[labels.numpy()]).mean()), "train_tokens": int(counts.sum())}


def test_accuracy_equals_a_recomputation_from_the_logits(expected, result):
    assert expected["selected"] > 50
    assert (result["selected"], result["correct"]) == (expected["selected"], expected["correct"])
    assert (result["mask_positions"], result["mask_correct"]) == (expected["mask"], expected["mask_correct"])
    assert result["accuracy"] == expected["correct"] / expected["selected"]
    assert result["mlm_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert sum(kind["positions"] for kind in result["by_input"].values()) == result["selected"]


def test_the_loss_is_the_runs_validation_loss(encoder, result):
    """Over the windows the run evaluated, with the run's masks: the val_loss it logged."""
    assert result["mlm_loss"] == pytest.approx(records(encoder, "eval")[20]["val_loss"], rel=1e-5)


def test_unigram_baseline_is_the_most_frequent_train_token(expected, result):
    unigram = result["unigram"]
    assert unigram["token_id"] == expected["top"]
    assert unigram["correct"] == expected["unigram_correct"]
    assert unigram["accuracy"] == expected["unigram_correct"] / expected["selected"]
    assert unigram["train_tokens"] == expected["train_tokens"]
    assert unigram["cross_entropy"] == pytest.approx(expected["unigram_loss"], rel=1e-9)
    assert 0 < unigram["accuracy"] < 0.5


def test_command_line_writes_json(encoder, small_corpus, tmp_path, capsys):
    out = tmp_path / "masked.json"
    ran = run_main(evaluate_main, [encoder, "--masked-accuracy", small_corpus, "--batches", EVAL_BATCHES, "--output",
                                   out], capsys)
    assert ran.returncode == 0, ran.stderr
    assert "masked-token accuracy" in ran.stdout and "unigram baseline" in ran.stdout
    written = json.loads(out.read_text())
    assert written["correct"] > 0 and written["unigram"]["token_id"] >= 0


def test_a_causal_checkpoint_is_refused_in_one_line(small_corpus, tmp_path, capsys):
    causal = _train(tmp_path / "causal", small_corpus, 1, "train.eval_every=0")
    ran = run_main(evaluate_main, [causal, "--masked-accuracy", small_corpus], capsys)
    assert_one_line_error(ran, "is not an encoder", "train.objective=mlm", prefix="evaluate: error: ")


def test_an_encoder_does_not_generate(encoder, capsys):
    from megallm.cli.generate import main as generate_main

    ran = run_main(generate_main, [encoder, "--prompt", "def f("], capsys)
    assert_one_line_error(ran, "is a bidirectional encoder", "cannot generate", prefix="generate: error: ")
