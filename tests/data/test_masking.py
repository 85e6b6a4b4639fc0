"""Masked-LM corruption (megallm.data.masking, megallm.engine.objective): BERT's proportions,
framing tokens never selected, masks that depend only on (seed, sample index), next-sentence pairs."""

from __future__ import annotations

import torch

from megallm.data.masking import MaskingRule, mask_tokens, next_sentence_pairs
from megallm.engine.objective import Objective
from megallm.model.packing import document_ids

EOS, MASK, VOCAB = 0, 1, 1000
RULE = MaskingRule(mask_prob=0.15, replace_with_mask=0.8, replace_with_random=0.1, mask_id=MASK, vocab_size=VOCAB,
                   protected_ids=(EOS,))


def windows(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    tokens = torch.randint(2, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    tokens[:, ::50] = EOS  # documents end every 50 tokens
    return tokens


def test_bert_proportions_and_framing_tokens_never_selected():
    tokens = windows(64, 1000)
    out = mask_tokens(tokens, list(range(64)), seed=1, rule=RULE)
    framing = tokens == EOS
    assert not out.selected[framing].any()
    eligible = (~framing).sum().item()
    selected = out.selected.sum().item()
    assert abs(selected / eligible - 0.15) < 0.005
    changed = out.inputs != tokens
    as_mask = (out.inputs == MASK) & out.selected
    as_random = changed & out.selected & (out.inputs != MASK)
    assert abs(as_mask.sum().item() / selected - 0.8) < 0.01
    assert abs(as_random.sum().item() / selected - 0.1) < 0.01  # (a random draw equal to the token: ~0.1%)
    assert not changed[~out.selected].any()  # only selected positions change
    assert torch.equal(out.labels, tokens)


def test_a_windows_mask_depends_on_its_sample_index_only():
    tokens = windows(4, 200)
    together = mask_tokens(tokens, [10, 11, 12, 13], seed=5, rule=RULE)
    alone = mask_tokens(tokens[2:3], [12], seed=5, rule=RULE)  # another micro-batch size and position
    assert torch.equal(together.selected[2:3], alone.selected)
    assert torch.equal(together.inputs[2:3], alone.inputs)
    other_seed = mask_tokens(tokens[2:3], [12], seed=6, rule=RULE)
    other_epoch = mask_tokens(tokens[2:3], [12 + 1000], seed=5, rule=RULE)  # the same window in a later epoch
    assert not torch.equal(other_seed.selected, alone.selected)
    assert not torch.equal(other_epoch.selected, alone.selected)


def test_next_sentence_pairs_swap_half_the_second_halves():
    tokens = windows(400, 16)
    paired, labels = next_sentence_pairs(tokens, list(range(400)), seed=3)
    assert 150 < labels.sum().item() < 250
    assert torch.equal(paired[:, :8], tokens[:, :8])
    for row in range(400):
        expected = tokens[(row + 1) % 400, 8:] if labels[row] else tokens[row, 8:]
        assert torch.equal(paired[row, 8:], expected)


def test_objective_keeps_the_documents_of_the_original_tokens():
    """A random replacement that draws the end-of-document token must not cut a document."""
    rule = MaskingRule(0.5, 0.0, 1.0, MASK, vocab_size=3, protected_ids=(EOS,))  # random ids in {0, 1, 2}
    window = windows(2, 101)
    objective = Objective(segment_start_id=EOS, masking=rule, seed=0)
    inputs = objective.inputs(window, [0, 1])
    assert (inputs.tokens[inputs.targets.loss_mask] == EOS).any()  # some replacements are EOS...
    assert torch.equal(inputs.doc_ids, document_ids(window[:, :-1], EOS))  # ...and the documents stand
    assert torch.equal(inputs.targets.labels, window[:, :-1])


def test_causal_objective_shifts_by_one():
    window = windows(2, 11)
    inputs = Objective(segment_start_id=None).inputs(window)
    assert torch.equal(inputs.tokens, window[:, :-1]) and torch.equal(inputs.targets.labels, window[:, 1:])
    assert inputs.doc_ids is None and inputs.targets.loss_mask is None
