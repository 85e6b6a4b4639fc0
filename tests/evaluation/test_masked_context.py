"""tools/evaluate.py --masked-accuracy with --seq-len beyond the encoder's train.seq_len: refused in one line
before any weight is read, as --perplexity is for a causal model (tests/evaluation/test_stride.py)."""

from __future__ import annotations

import pytest

from megallm.cli.evaluate import main as evaluate_main
from tests.helpers import SMALL_MODEL, assert_one_line_error, run_main, train

SEQ_LEN = 32


@pytest.mark.slow
def test_seq_len_beyond_the_encoders_context_is_refused(small_corpus, tmp_path, capsys):
    run = tmp_path / "mlm"
    result = train([*SMALL_MODEL, "model.num_layers=1", "train.precision=fp32", f"train.seq_len={SEQ_LEN}",
                    "train.micro_batch_size=2", f"train.global_batch_tokens={2 * SEQ_LEN}", "train.steps=2",
                    "checkpoint.every=2", "train.eval_every=0", "data.num_workers=0", "train.objective=mlm",
                    f"data.path={small_corpus}", f"run_dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    line = assert_one_line_error(run_main(evaluate_main, [run, "--masked-accuracy", small_corpus, "--seq-len", 64],
                                          capsys), prefix="evaluate: error: ")
    assert f"--seq-len 64 is beyond the {SEQ_LEN} tokens" in line and "(train.seq_len)" in line
    assert f"pass --seq-len {SEQ_LEN} or less" in line
