"""Fixtures of the scaling-law tests."""

from __future__ import annotations

import pytest

from megallm.scaling.points import Points, read_csv
from tests.scaling.inputs import CHINCHILLA_CSV


@pytest.fixture(scope="session")
def chinchilla() -> Points:
    """Epoch's 245 points less the 5 highest losses (their outlier rule)."""
    return read_csv(CHINCHILLA_CSV).without_highest(5)
