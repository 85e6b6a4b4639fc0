"""Tests of the tools that live beside their entry point in tools/ rather than in the library.

`python tools/make_eval_data.py` imports `eval_sources` from its own folder (Python puts a
script's folder first on sys.path); the tests import both the same way.
"""

import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "tools"))
