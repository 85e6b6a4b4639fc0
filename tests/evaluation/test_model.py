"""EvalModel against transformers' LlamaForCausalLM on the exported folder of the same model:
log-likelihoods of (context, continuation) pairs split as lm-evaluation-harness splits them,
per-token log-probabilities, rolling windows, greedy generation cut at stop strings, embeddings.

The model is the session's tiny trained one (the `trained` fixture, tests/evaluation/trained.py):
40 steps at TP=2 (a sharded checkpoint) and its Hugging Face export.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megallm.errors import UsageError
from megallm.evaluation.model import EvalModel, cut_at_stop, rolling_requests, split_pair

transformers = pytest.importorskip("transformers")

@pytest.fixture(scope="module")
def model(world_of_one, trained) -> EvalModel:
    with EvalModel.load(trained.hf, batch_size=3) as loaded:  # 3: batches of mixed lengths
        yield loaded


@pytest.fixture(scope="module")
def hf_model(trained):
    return transformers.AutoModelForCausalLM.from_pretrained(trained.hf, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(trained):
    """The exported tokenizer, putting the document start (bos) in front of each text as megallm does."""
    return transformers.AutoTokenizer.from_pretrained(trained.hf, add_bos_token=True)


def hf_logprobs(hf_model, ids: list[int]) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i >= 1, by transformers, one unpadded row."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0, :-1].double()
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()


PAIRS = [("def __init__(self", "):\n        return"), ("import os\nimport ", "sys"), ("", "class Parser(object):"),
         ("for key in", " items:"), ("x" * 3, " = 1")]


def test_loglikelihood_equals_transformers(model, hf_model, hf_tokenizer):
    ours = model.loglikelihood(PAIRS)
    for (context, cont), (logprob, greedy) in zip(PAIRS, ours):
        if context:  # lm-eval's split with the Hugging Face tokenizer: whole text encoded, context's length cut off
            context, cont = split_pair(context, cont)
            whole, head = hf_tokenizer(context + cont)["input_ids"], hf_tokenizer(context)["input_ids"]
        else:  # an empty context is the document start token
            head = [hf_tokenizer.bos_token_id]
            whole = head + hf_tokenizer(cont, add_special_tokens=False)["input_ids"]
        assert head[0] == model.special.document_start_id and len(whole) > len(head)
        assert model.encode_pair(*(context, cont)) == (head, whole[len(head):])
        theirs = hf_logprobs(hf_model, whole)[len(head) - 1:]
        assert logprob == pytest.approx(theirs.sum(), abs=1e-4)
        with torch.no_grad():
            top = hf_model(torch.tensor([whole])).logits[0, len(head) - 1:-1].argmax(-1).tolist()
        assert greedy == (top == whole[len(head):])
    assert split_pair("a \n", "b") == ("a", " \nb")


def test_token_logprobs_and_rolling_windows(model, hf_model):
    ids = [model.special.document_start_id] + model.encode("import os\n\ndef main():\n    return os.getcwd()\n")
    (ours,) = model.token_logprobs([ids])
    np.testing.assert_allclose(ours, hf_logprobs(hf_model, ids), atol=1e-4)

    tokens = list(range(10, 35))
    windows = rolling_requests(tokens, 0, 8)
    assert [t for _, cont in windows for t in cont] == tokens  # every token predicted once
    assert all(len(c) + len(x) - 1 == 8 for c, x in windows)  # each window feeds 8 tokens, the last too
    assert windows[0] == ([0], tokens[:8]) and windows[-1] == (tokens[16:24], tokens[24:])

    text = "class Parser(object):\n    def parse(self, text):\n        return text.split()\n"
    short = EvalModel(model.model, model.tokenizer, model.tokenizer_file, model.special, max_length=16)
    stream = [model.prefix_token_id] + model.encode(text)
    expected = sum(hf_logprobs(hf_model, stream[max(0, end - 16):end + 1])[-(end - first):].sum()
                   for first in range(0, len(stream) - 1, 16) for end in [min(first + 16, len(stream) - 1)])
    assert 40 < len(stream) <= model.max_length  # several windows of 16; one of the model's own
    assert short.loglikelihood_rolling([text])[0] == pytest.approx(expected, abs=1e-4)
    assert model.loglikelihood_rolling([text])[0] == pytest.approx(hf_logprobs(hf_model, stream).sum(), abs=1e-4)


def test_greedy_generation_cut_at_stop_strings(model, hf_model, hf_tokenizer):
    prompts = ["def __init__(self", "import os\n", "class"]
    ours = model.generate(prompts, 12, stop=[])
    for prompt, text in zip(prompts, ours):
        ids = hf_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = hf_model.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=0,
                                    eos_token_id=model.special.eos_id)
        assert text == hf_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(ours[0]) >= 5
    stop = ours[0][3:5]
    assert model.generate(prompts[:1], 12, stop=[stop]) == [ours[0][:ours[0].index(stop)]]
    assert cut_at_stop("a\n\nb\nc", ["\n", "\n\n"]) == "a" and cut_at_stop("abc", ["", "x"]) == "abc"


def test_embeddings_are_unit_mean_hidden_states(model, hf_model):
    texts = ["import os", "def __init__(self):\n    return", "class Parser(object):"]
    vectors = model.embed(texts)
    assert vectors.shape == (3, model.model.cfg.hidden_size) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.embed(texts[1:2])[0], vectors[1], atol=1e-5)  # batch-independent
    ids = [model.special.document_start_id] + model.encode(texts[1])
    with torch.no_grad():
        hidden = hf_model.model(torch.tensor([ids])).last_hidden_state[0, 1:].mean(0)
    np.testing.assert_allclose(vectors[1], (hidden / hidden.norm()).numpy(), atol=1e-4)


def test_load_refuses_what_it_cannot_use(tmp_path, trained):
    with pytest.raises(UsageError, match="does not exist"):
        EvalModel.load(tmp_path / "nothing")
    with pytest.raises(UsageError, match="dtype 'fp8'"):
        EvalModel.load(trained.hf, dtype="fp8")
    with pytest.raises(UsageError, match="start 'bos'"):
        EvalModel.load(trained.hf, start="bos")
