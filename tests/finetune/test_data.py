"""Fine-tuning data: rows from JSON lines and CSV with errors naming file and line, token arrays,
the rank's micro-batches, and the loss that scores responses only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megallm.errors import DataError
from megallm.finetune import examples
from megallm.finetune.batches import ExampleBatches, classify_batch, encode_classification, encode_pairs, window_batch
from megallm.finetune.examples import LabelledText, PromptResponse
from megallm.finetune.objectives import ClassifyObjective, SupervisedObjective
from tests.helpers import REPO, tiny_tokenizer

FORTUNES = REPO / "tests" / "fixtures" / "eval" / "fortunes_classification"


def write_lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_rows_from_json_lines_and_csv(tmp_path):
    rows = examples.read_classification(FORTUNES / "train.jsonl", "text", "label")
    assert len(rows) > 20 and {row.label for row in rows} >= {"science", "food"}
    assert rows[0].where.endswith("train.jsonl:1")
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text('text,label\n"hello, world",1\n"multi\nline",0\n')
    read = examples.read_classification(csv_file, "text", "label")
    assert [(r.text, r.label) for r in read] == [("hello, world", "1"), ("multi\nline", "0")]
    assert read[1].where.endswith("rows.csv:4")  # the line its record ends on
    task = REPO / "tests" / "fixtures" / "eval" / "docstring.jsonl"  # an evaluation task file: header skipped
    pairs = examples.read_pairs(task, "input", "target")
    assert pairs[0].where.endswith("docstring.jsonl:2") and pairs[0].response


@pytest.mark.parametrize("lines,phrases", [
    (['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"', ], ["rows.jsonl:2", "not valid JSON"]),
    (['{"text": "a", "label": "x"}', '["b", "y"]'], ["rows.jsonl:2", "JSON list, not an object"]),
    (['{"text": "a", "label": "x"}', '{"txt": "b", "label": "y"}'], ["rows.jsonl:2", "no 'text'", "'txt'"]),
    (['{"text": "a", "label": "x"}', '{"text": "  ", "label": "y"}'], ["rows.jsonl:2", "no 'text'"]),
    (['{"text": {"a": 1}, "label": "x"}'], ["rows.jsonl:1", "'text' is a JSON dict"]),
])
def test_malformed_rows_are_named_by_file_and_line(tmp_path, lines, phrases):
    path = write_lines(tmp_path / "rows.jsonl", lines)
    with pytest.raises(DataError) as error:
        examples.read_classification(path, "text", "label")
    assert all(phrase in str(error.value) for phrase in phrases) and "\n" not in str(error.value)


def test_a_validation_label_the_training_rows_lack_is_named():
    names = examples.label_names([LabelledText("a", "x", "t:1"), LabelledText("b", "y", "t:2")])
    with pytest.raises(DataError, match=r"v.jsonl:7: label 'z' is not among the 2 labels of the training rows \(x, y\)"):
        examples.check_labels([LabelledText("c", "x", "v.jsonl:3"), LabelledText("d", "z", "v.jsonl:7")], names)
    with pytest.raises(DataError, match="a classifier needs two or more"):
        examples.label_names([LabelledText("a", "x", "t:1")])


def test_hold_out_depends_on_each_rows_text_only():
    rows = [LabelledText(f"text {i}", str(i % 3), f"f:{i}") for i in range(400)]
    kept, held = examples.hold_out(rows, 0.1, key=lambda r: r.text)
    assert 20 < len(held) < 70 and len(kept) + len(held) == 400
    _, held_reversed = examples.hold_out(rows[::-1], 0.1, key=lambda r: r.text)
    assert sorted(r.text for r in held_reversed) == sorted(r.text for r in held)


def test_classification_rows_are_padded_and_cut_keeping_the_final_eos(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok.json")
    rows = [LabelledText("short", "b", "f:1"), LabelledText("a much longer text " * 20, "a", "f:2")]
    encoded = encode_classification(rows, tok, start_id=0, eos_id=0, seq_len=16, names=["a", "b"])
    tokens, lengths, labels = (encoded.arrays[k] for k in ("tokens", "lengths", "labels"))
    assert labels.tolist() == [1, 0] and encoded.truncated == 1
    assert lengths[1] == 16 and tokens[1, 0] == 0 and tokens[1, -1] == 0  # [start] ... [eos], cut
    short = tok.encode("short", add_special_tokens=False).ids
    assert tokens[0, :lengths[0]].tolist() == [0, *short, 0]


def test_pairs_are_packed_whole_with_responses_flagged(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok.json")
    pairs = [PromptResponse(f"question {i}?", f"answer {i}.", f"f:{i}") for i in range(12)]
    encoded = encode_pairs(pairs, tok, start_id=0, eos_id=0, seq_len=31)
    windows = encoded.arrays["windows"]
    assert windows.shape[1:] == (2, 32) and encoded.truncated == 0
    assert all(window[0, 0] == 0 and window[1, 0] == 0 for window in windows)  # each starts a whole example
    first = [0, *tok.encode("question 0?", add_special_tokens=False).ids]
    answer = [*tok.encode("answer 0.", add_special_tokens=False).ids, 0]
    assert windows[0, 0, :len(first) + len(answer)].tolist() == first + answer
    assert windows[0, 1, :len(first) + len(answer)].tolist() == [0] * len(first) + [1] * len(answer)
    assert windows[:, 1].sum() == sum(len(tok.encode(f"answer {i}.", add_special_tokens=False).ids) + 1 for i in range(12))


def test_batches_split_over_ranks_and_resume_where_they_stopped(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok.json")
    rows = [LabelledText(f"row {i}", str(i % 2), f"f:{i}") for i in range(10)]
    encoded = encode_classification(rows, tok, 0, 0, 8, ["0", "1"])
    cpu = torch.device("cpu")

    def open_at(consumed, rank=0, dp=1):
        return ExampleBatches(encoded, classify_batch, micro_batch_size=3, seed=4, dp_rank=rank, dp=dp,
                              consumed_samples=consumed, device=cpu)

    single = open_at(0)
    seen = [single.next_micro_batch() for _ in range(4)]  # 12 samples: into the second epoch
    assert sorted(single.row_of(g) for g in range(10)) == list(range(10))  # an epoch is a permutation
    assert [single.row_of(g) for g in range(10)] != [single.row_of(g) for g in range(10, 20)]  # reshuffled
    resumed = open_at(6)
    assert torch.equal(resumed.next_micro_batch().tokens, seen[2].tokens)
    r0, r1 = open_at(0, 0, 2), open_at(0, 1, 2)
    r0.next_micro_batch(), r1.next_micro_batch()
    assert sorted(r0.last_samples + r1.last_samples) == list(range(6))


def test_prompt_tokens_get_no_gradient(world_of_one, tmp_path):
    """The response-only loss: its gradient reaches the logits of response positions only, and it is the
    cross-entropy of the response tokens."""
    from megallm.model.config import ModelConfig
    from megallm.model.llama import build_model

    tok = tiny_tokenizer(tmp_path / "tok.json")
    pairs = [PromptResponse("def add(a, b):", "return a + b", "f:1"), PromptResponse("x = 1", "y = 2", "f:2")]
    windows = window_batch(encode_pairs(pairs, tok, 0, 0, seq_len=23).arrays, torch.device("cpu"))
    inputs = SupervisedObjective(segment_start_id=0).inputs(windows)
    model = build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, ffn_hidden_size=64,
                                    vocab_size=tok.get_vocab_size()))
    logits = model(inputs.tokens, doc_ids=inputs.doc_ids)  # [s, b, vocab]
    logits.retain_grad()
    before = logits.detach().clone()  # megatron's cross-entropy works on the logits in place
    from megallm.model.loss import lm_loss

    loss = lm_loss(logits, inputs.targets.labels, inputs.targets.loss_mask)
    loss.backward()
    per_position = logits.grad.abs().sum(dim=-1).t()  # [b, s]
    scored = inputs.targets.loss_mask
    assert scored.any() and (~scored).any()
    assert torch.all(per_position[~scored] == 0)  # prompt (and padding) positions: no gradient
    assert torch.all(per_position[scored] > 0)
    vocab = tok.get_vocab_size()
    expected = F.cross_entropy(before.transpose(0, 1)[scored][:, :vocab], inputs.targets.labels[scored])
    torch.testing.assert_close(loss.detach(), expected)


def test_classification_inputs_keep_the_padding_apart():
    batch = classify_batch({"tokens": np.array([[0, 5, 6, 0, 0, 0]]), "lengths": np.array([4]),
                            "labels": np.array([1])}, torch.device("cpu"))
    inputs = ClassifyObjective("mean").inputs(batch)
    assert inputs.doc_ids.tolist() == [[0, 0, 0, 0, 1, 1]]
    assert inputs.targets.pool_weights.tolist() == [[0.25] * 4 + [0.0] * 2]
    assert ClassifyObjective("last").inputs(batch).targets.pool_weights.tolist() == [[0, 0, 0, 1, 0, 0]]
