"""The tiny trained model the evaluation tests share: 40 steps at TP=2 on the standard library's short
modules (a sharded checkpoint: 2 gloo ranks), exported to a Hugging Face folder. One corpus, one run
and one export per test session, built on first use (~20 s on 2 cores).

Tests take it as the `trained` fixture (tests/evaluation/conftest.py); `trained_model` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.helpers import SMALL_MODEL, short_stdlib_modules, train

SEQ_LEN = 64


@dataclass(frozen=True)
class Trained:
    corpus: Path      # a prepared corpus with a "val" split, vocabulary 300
    checkpoint: Path  # its run's TP=2 checkpoint (step 40): mp_rank_00 and mp_rank_01 shards
    hf: Path          # that checkpoint exported by tools/convert_ckpt.py's export (verified)


_BUILT: dict[str, Trained] = {}


def trained_model(tmp_path_factory) -> Trained:
    """The session's tiny trained model (built on first use, ~20 s on 2 cores)."""
    if "model" not in _BUILT:
        from megallm.cli.convert_ckpt import main as convert
        from megallm.data.prepare import prepare

        root = tmp_path_factory.mktemp("eval_model")
        prepare(short_stdlib_modules(), root / "corpus", vocab_size=300, tokenizer_path=None, val_fraction=0.1,
                shard_tokens=5000, tokenizer_train_bytes=1 << 20, workers=1, log=lambda *_: None)
        result = train([*SMALL_MODEL, "model.num_layers=2", "train.precision=fp32", f"train.seq_len={SEQ_LEN}",
                        "train.micro_batch_size=4", "train.global_batch_tokens=256", "train.steps=40", "optim.lr=1e-2",
                        "optim.warmup_steps=5", "logging.every=10", "train.eval_every=0", "checkpoint.every=40",
                        "data.num_workers=0", f"data.path={root / 'corpus'}", "parallel.tp=2", "parallel.zero_stage=1",
                        f"run_dir={root / 'run'}"], nproc=2)
        assert result.returncode == 0, result.stderr[-3000:]
        checkpoint = root / "run" / "checkpoints" / "step_00000040"
        assert (checkpoint / "mp_rank_01_model_states.pt").is_file()
        assert convert(["export", str(checkpoint), str(root / "hf")]) == 0
        _BUILT["model"] = Trained(root / "corpus", checkpoint, root / "hf")
    return _BUILT["model"]
