"""Perplexity with a stride (tools/evaluate.py --stride): Hugging Face's sliding-window recipe ("Perplexity of
fixed-length models"), computed here with transformers' own loss (labels -100 outside each window's
targets) on the exported model, against megallm's windows on the TP=2 checkpoint; stride = seq_len is
the disjoint windows megallm computed before; and --seq-len beyond the context the model was trained at
(train.seq_len 64) is refused in one line, for the checkpoint and for its export.
"""

from __future__ import annotations

import pytest
import torch

from megallm.cli.evaluate import main as evaluate_main
from megallm.data.shards import Manifest, read_documents
from megallm.errors import UsageError
from megallm.evaluation.model import EvalModel, windows
from megallm.evaluation.perplexity import perplexity
from tests.evaluation.trained import SEQ_LEN
from tests.helpers import assert_one_line_error, run_main

transformers = pytest.importorskip("transformers")

SEQ = 32  # tokens fed per window
CAP = 600  # val tokens scored: 1 + 600 = 33 + 71 * 8, so Hugging Face's last window at stride 8 is a full one


@pytest.fixture(scope="module")
def model(world_of_one, trained):
    with EvalModel.load(trained.checkpoint, batch_size=4) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def hf_model(trained):
    return transformers.AutoModelForCausalLM.from_pretrained(trained.hf, dtype=torch.float32).eval()


def hf_recipe_nll(hf_model, stream: list[int], max_length: int, stride: int, full_last_window: bool) -> float:
    """Hugging Face's loop on one stream: windows [begin, end) with begin = 0, stride, ...; the tokens after the
    previous window's end are the targets (labels elsewhere -100), transformers' mean loss times the targets it
    predicts (its labels shift by one: the window's first token is never one) summed. `full_last_window`: the
    window that reaches the end begins at end - max_length instead (lm-eval's last rolling window)."""
    total, prev_end = 0.0, 0
    for begin in range(0, len(stream), stride):
        end = min(begin + max_length, len(stream))
        if full_last_window:
            begin = max(0, end - max_length)
        input_ids = torch.tensor([stream[begin:end]])
        labels = input_ids.clone()
        labels[:, :-(end - prev_end)] = -100
        with torch.no_grad():
            loss = hf_model(input_ids, labels=labels).loss.double()
        total += float(loss) * int((labels[:, 1:] != -100).sum())
        prev_end = end
        if end == len(stream):
            break
    return total


def val_stream(model, corpus, cap: int) -> list[list[int]]:
    """The val split's documents in manifest order up to `cap` tokens (the last one cut)."""
    docs, total = [], 0
    for info in Manifest.load(corpus).splits["val"]:
        for doc in read_documents(str(corpus / info.path)):
            docs.append(doc.tolist()[:cap - total])
            total += len(docs[-1])
            if total == cap:
                return docs
    raise AssertionError(f"the val split has fewer than {cap} tokens")


@pytest.mark.slow
def test_stride_follows_hugging_faces_sliding_window(model, hf_model, trained):
    docs = val_stream(model, trained.corpus, CAP)
    start = [model.special.document_start_id]
    stream = start + [t for d in docs for t in d]

    disjoint = perplexity(model, [trained.corpus], seq_len=SEQ, max_tokens=CAP)
    same = perplexity(model, [trained.corpus], seq_len=SEQ, stride=SEQ, max_tokens=CAP)
    assert (same.nll, same.tokens, same.stride) == (disjoint.nll, CAP, SEQ)  # stride = seq_len: as before
    # Hugging Face's max_length counts a window's tokens: the SEQ fed and the one after them, only predicted.
    # Tolerance: fp32 logits (eps 1.2e-7) of 600 predictions, summed in other orders.
    assert same.nll == pytest.approx(hf_recipe_nll(hf_model, stream, SEQ + 1, SEQ, full_last_window=True), rel=1e-6)

    sliding = perplexity(model, [trained.corpus], seq_len=SEQ, stride=8, max_tokens=CAP)
    assert (sliding.tokens, sliding.bytes, sliding.stride) == (CAP, disjoint.bytes, 8)
    assert sliding.nll == pytest.approx(hf_recipe_nll(hf_model, stream, SEQ + 1, 8, full_last_window=False), rel=1e-6)
    assert sliding.nll != pytest.approx(disjoint.nll, rel=1e-5)  # the windows moved: other contexts

    # documents scored apart: each ends in a window that keeps a full span (Hugging Face's loop: a shorter one)
    separate = perplexity(model, [trained.corpus], mode="separate", seq_len=SEQ, stride=8, max_tokens=CAP)
    assert separate.nll == pytest.approx(sum(hf_recipe_nll(hf_model, start + d, SEQ + 1, 8, full_last_window=True)
                                             for d in docs), rel=1e-6)


def test_windows_cover_every_token_once():
    stream = list(range(100, 141))  # 41 tokens: 40 predicted
    for length, stride in [(8, 8), (8, 3), (8, 1), (40, 7), (50, 50)]:
        requests = windows(stream, 1, length, stride)
        assert [t for _, cont in requests for t in cont] == stream[1:]
        assert all(1 <= len(ctx) and len(ctx) + len(cont) <= length + 1 for ctx, cont in requests)
        assert all(len(ctx) >= length - stride + 1 for ctx, _ in requests[1:])  # the sliding window's context
        assert sum(map(len, requests[-1])) == min(length + 1, len(stream))  # the last window: a full span
    assert windows(stream, 1, 8) == windows(stream, 1, 8, 8)
    # a continuation from position 30: one window of lm-eval's left-truncated input
    assert windows(stream, 30, 16) == [(stream[24:30], stream[30:])]  # the last 17 tokens
    with pytest.raises(ValueError):
        windows(stream, 1, 8, 9)


@pytest.mark.slow
def test_seq_len_beyond_the_trained_context_is_refused(model, trained, world_of_one, capsys):
    assert (model.max_length, model.trained.tokens) == (SEQ_LEN, SEQ_LEN)
    with pytest.raises(UsageError, match=f"--seq-len {SEQ_LEN + 1} is beyond the {SEQ_LEN} tokens"):
        perplexity(model, [trained.corpus], seq_len=SEQ_LEN + 1)
    with pytest.raises(UsageError, match="--stride 9 is longer than the 8-token window"):
        perplexity(model, [trained.corpus], seq_len=8, stride=9)

    run, hf = trained.checkpoint.parent.parent, trained.hf
    line = assert_one_line_error(run_main(evaluate_main, [run, "--perplexity", trained.corpus, "--seq-len", 256],
                                          capsys), prefix="evaluate: error: ")
    assert f"--seq-len 256 is beyond the {SEQ_LEN} tokens {run} was trained at (train.seq_len of " \
           f"{trained.checkpoint})" in line and f"pass --seq-len {SEQ_LEN} or less" in line
    line = assert_one_line_error(run_main(evaluate_main, [hf, "--perplexity", trained.corpus, "--seq-len", 256],
                                          capsys), prefix="evaluate: error: ")
    assert f"(max_position_embeddings in {hf / 'config.json'})" in line
    line = assert_one_line_error(run_main(evaluate_main, [hf, "--perplexity", trained.corpus, "--seq-len", 16,
                                                          "--stride", 17], capsys), prefix="evaluate: error: ")
    assert "--stride 17 is longer than the 16-token window" in line
    with pytest.raises(UsageError, match=f"max_length 128 is not within 1 .. the {SEQ_LEN} tokens"):
        EvalModel.load(hf, max_length=128)  # lm-eval's model_args max_length, likewise

    result = run_main(evaluate_main, [hf, "--perplexity", trained.corpus, "--seq-len", SEQ_LEN, "--stride", 16,
                                      "--max-tokens", 200], capsys)
    assert result.returncode == 0, result.stderr
    assert "perplexity:corpus" in result.stdout
