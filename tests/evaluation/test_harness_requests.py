"""lm-evaluation-harness requests that lm-eval's own split cannot score, with a tokenizer of the README's
kind: an 8192-token byte-level BPE trained on the standard library (as launch/quickstart.sh's
`tools/prepare_data.py --python-stdlib --vocab-size 8192`, here on a few of its packages), in which
'def main(' + '):' (tests/fixtures/lm_eval/tiny_mc.jsonl) tokenizes 'def', ' main', '():' so that
lm-eval's cut at the context's own encoding leaves the continuation no token.

The README's harness command runs all three local tasks to the end on a checkpoint of a model trained
with that tokenizer, and every multiple-choice log-likelihood it reports equals transformers' on the
exported folder, the split following lm-eval's rule (and, where one token spans the boundary, starting
the continuation at that token). Continuations that are empty or longer than the window are scored, not
fatal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from megallm.evaluation.model import EvalModel, split_pair
from tests.helpers import REPO, SMALL_MODEL, clean_environment, stdlib_subset, train

transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

pytestmark = pytest.mark.slow  # trains a tiny model with the 8192-token tokenizer (about 15 s)

SEQ_LEN = 64
TASKS = REPO / "tests" / "fixtures" / "lm_eval"


@dataclass(frozen=True)
class Stdlib8192:
    checkpoint: Path  # a one-process run's checkpoint: tiny, trained 10 steps on the corpus below
    hf: Path          # its export


@pytest.fixture(scope="module")
def stdlib8192(tmp_path_factory) -> Stdlib8192:
    from megallm.cli.convert_ckpt import main as convert
    from megallm.data.prepare import prepare

    root = tmp_path_factory.mktemp("stdlib8192")
    prepare(stdlib_subset(), root / "corpus", vocab_size=8192, tokenizer_path=None, val_fraction=0.05,
            shard_tokens=50_000, workers=1, log=lambda *_: None)
    result = train([*SMALL_MODEL, "model.num_layers=2", "train.precision=fp32", f"train.seq_len={SEQ_LEN}",
                    "train.micro_batch_size=4", f"train.global_batch_tokens={4 * SEQ_LEN}", "train.steps=10",
                    "optim.lr=1e-2", "optim.warmup_steps=2", "logging.every=5", "train.eval_every=0",
                    "checkpoint.every=10", "data.num_workers=0", f"data.path={root / 'corpus'}",
                    f"run_dir={root / 'run'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = root / "run" / "checkpoints" / "step_00000010"
    assert convert(["export", str(checkpoint), str(root / "hf")]) == 0
    return Stdlib8192(checkpoint, root / "hf")


@pytest.fixture(scope="module")
def hf_model(stdlib8192):
    return transformers.AutoModelForCausalLM.from_pretrained(stdlib8192.hf, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(stdlib8192):
    return transformers.AutoTokenizer.from_pretrained(stdlib8192.hf, add_bos_token=True)


def hf_loglikelihood(hf_model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) by transformers, one unpadded row, float64 log-softmax."""
    ids = context + continuation
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids[:-1]])).logits[0].double()
    chosen = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(chosen[-len(continuation):].sum())


def hf_split(hf_tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's causal split (TemplateLM._encode_pair) with the Hugging Face tokenizer; where its cut leaves
    the continuation nothing, the continuation begins at the first token that holds any of its characters."""
    context, continuation = split_pair(context, continuation)
    whole = hf_tokenizer(context + continuation, return_offsets_mapping=True)
    head = hf_tokenizer(context)["input_ids"]
    cut = len(head)
    if cut >= len(whole["input_ids"]):
        cut = next(i for i, (_, end) in enumerate(whole["offset_mapping"]) if end > len(context))
    return whole["input_ids"][:cut], whole["input_ids"][cut:]


def test_readme_harness_command_scores_every_task(stdlib8192, hf_model, hf_tokenizer, tmp_path):
    # the input that found it: a token of the whole text spans the context / continuation boundary
    assert hf_tokenizer.tokenize("def main(") == ["def", "Ġmain", "("]
    assert hf_tokenizer.tokenize("def main():") == ["def", "Ġmain", "():"]

    env = {**clean_environment(), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    result = subprocess.run(
        [sys.executable, "-m", "megallm.evaluation.harness", "--model", "megallm",
         "--model_args", f"path={stdlib8192.checkpoint},dtype=fp32,batch_size=8", "--include_path", str(TASKS),
         "--tasks", "megallm_tiny_mc,megallm_tiny_gen,megallm_tiny_text", "--output_path", str(tmp_path / "out"),
         "--log_samples"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "megallm: 1 of 32 continuations share a token with their context (e.g. 'def main(' + '):')" \
        in result.stderr
    assert "Traceback" not in result.stderr

    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    assert set(results) == {"megallm_tiny_mc", "megallm_tiny_gen", "megallm_tiny_text"}
    assert 0.0 <= results["megallm_tiny_mc"]["acc,none"] <= 1.0
    assert np.isfinite(results["megallm_tiny_text"]["bits_per_byte,none"])

    (samples_file,) = (tmp_path / "out").rglob("samples_megallm_tiny_mc_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == 8
    differences = []
    for sample in samples:
        pairs = [(arguments["arg_0"], arguments["arg_1"]) for arguments in sample["arguments"].values()]
        for (context, continuation), ((logprob, _),) in zip(pairs, sample["resps"]):
            head, tail = hf_split(hf_tokenizer, context, continuation)
            if context == "def main(" and continuation == "):":
                assert (head[1:], tail) == (hf_tokenizer("def main", add_special_tokens=False)["input_ids"],
                                            hf_tokenizer("():", add_special_tokens=False)["input_ids"])
            differences.append(abs(float(logprob) - hf_loglikelihood(hf_model, head, tail)))
    assert len(differences) == 32 and max(differences) < 1e-4  # fp32 logits, float64 sums


def test_requests_lm_eval_cannot_split_are_scored(stdlib8192, hf_model, world_of_one):
    lines = []
    with EvalModel.load(stdlib8192.hf, batch_size=3) as model:
        model.log = lines.append
        start = model.special.document_start_id
        assert model.encode_pair("def main(", "):") == ([start] + model.encode("def main"), model.encode("():"))
        ((merged, _), (empty, empty_greedy)) = model.loglikelihood([("def main(", "):"), ("def main(", "")])
        assert merged == pytest.approx(hf_loglikelihood(hf_model, [start] + model.encode("def main"),
                                                       model.encode("():")), abs=1e-4)
        assert (empty, empty_greedy) == (0.0, True)  # an empty continuation has probability 1
        assert lines == ["1 of 2 continuations share a token with their context (e.g. 'def main(' + '):'): each is "
                         "scored from that token on, the context keeping the tokens before it",
                         "1 of 2 continuations have no token: log-likelihood 0 (probability 1), greedy"]

        # a continuation longer than the 64-token context: windows of 64 predictions, as loglikelihood_rolling
        context = "import os\n"
        continuation = "".join(f"def f{i}(x):\n    return os.path.join(x, '{i}')\n" for i in range(12))
        head, tail = model.encode_pair(context, continuation)
        assert len(tail) > 2 * SEQ_LEN and model.max_length == SEQ_LEN
        lines.clear()
        ((logprob, _),) = model.loglikelihood([(context, continuation)])
        stream, expected = head + tail, 0.0
        for first in range(len(head), len(stream), SEQ_LEN):
            end = min(first + SEQ_LEN, len(stream))
            begin = max(0, end - SEQ_LEN - 1)
            expected += hf_loglikelihood(hf_model, stream[begin:first], stream[first:end])
        assert logprob == pytest.approx(expected, abs=1e-4 * len(tail) / SEQ_LEN)
        assert lines == [f"1 of 1 continuations are longer than the {SEQ_LEN}-token context: scored in windows of "
                         f"{SEQ_LEN} predictions, as loglikelihood_rolling scores a text"]

        lines.clear()  # generate_until asking for more tokens than the context holds: generated, and said
        assert len(model.generate(["def"], SEQ_LEN, stop=[])) == 1
        assert lines == [f"{SEQ_LEN} new tokens run past the {SEQ_LEN}-token context: each prompt keeps its last "
                         "token, and positions beyond the context are extrapolated"]
