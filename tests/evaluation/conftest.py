"""Fixtures of the evaluation tests: the session's tiny trained model (tests/evaluation/trained.py)."""

from __future__ import annotations

import pytest

from tests.evaluation.trained import Trained, trained_model


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """A corpus, its TP=2 run's checkpoint and that checkpoint's Hugging Face export (built once)."""
    return trained_model(tmp_path_factory)
