"""Inputs of the metric tests: the references of the evaluation fixtures (German UI messages,
docstring summaries), and outputs perturbed from them as a weak system gets them wrong.

Shared by tests/evaluation/test_metrics.py and tests/evaluation/test_stderr.py (a plain module, as
tests/model/inputs.py).
"""

from __future__ import annotations

from megallm.evaluation.tasks import read_task
from tests.helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "eval"


def references_of(name: str) -> list[str]:
    return [e.target for e in read_task(FIXTURES / f"{name}.jsonl").examples]


def weak_outputs(references: list[str]) -> list[str]:
    """Deterministic mistakes: every third reference kept, one with its last word dropped, one with
    its first two words swapped and lower-cased."""
    outputs = []
    for i, reference in enumerate(references):
        words = reference.split()
        if i % 3 == 1:
            words = words[:-1]
        elif i % 3 == 2:
            words = [w.lower() for w in words[1:2] + words[:1] + words[2:]]
        outputs.append(" ".join(words))
    return outputs
