"""megallm's optional extras: which libraries each application brings, and the one line when one is missing.

`pip install megallm` is the core: what pretraining needs (torch, DeepSpeed, megatron-core,
WebDataset, W&B, Hydra, tokenizers). The applications that sit on the core bring their own
libraries through extras (pyproject.toml's [project.optional-dependencies]; a test keeps the
two equal):

    eval      tools/evaluate.py, launch/finetune.py's classification scores, downstream evaluation
              during training: BLEU, ROUGE, BM25 demonstrations, accuracy / macro-F1, plots
    harness   lm-evaluation-harness tasks (python -m megallm.evaluation.harness)
    scaling   tools/scaling_law.py: L-BFGS-B fits and plots
    hf        checking exported folders in transformers
    parquet   tools/prepare_data.py reading .parquet files
    gpu       flash-attn and liger-kernel (CUDA kernels)

A command that needs an extra calls `require` before it starts work, so a missing library is
`PROG: error: ... pip install 'megallm[EXTRA]'`, not an ImportError halfway through.
"""

from __future__ import annotations

import importlib.util

from megallm.errors import UsageError

# extra -> {module megallm imports: the distribution (PyPI name) that provides it}
EXTRAS: dict[str, dict[str, str]] = {
    "eval": {"sacrebleu": "sacrebleu", "rouge_score": "rouge-score", "bm25s": "bm25s", "sklearn": "scikit-learn",
             "matplotlib": "matplotlib"},
    "harness": {"lm_eval": "lm-eval", "accelerate": "accelerate"},
    "scaling": {"scipy": "scipy", "matplotlib": "matplotlib", "threadpoolctl": "threadpoolctl"},
    "hf": {"transformers": "transformers"},
    "parquet": {"pyarrow": "pyarrow"},
    "gpu": {"flash_attn": "flash-attn", "liger_kernel": "liger-kernel"},
}


class MissingExtraError(UsageError):
    """An application started without the extra that brings its libraries."""


def missing(extra: str) -> list[str]:
    """The distributions of `extra` that this environment cannot import."""
    return [dist for module, dist in EXTRAS[extra].items() if not _importable(module)]


def require(extra: str, needed_by: str) -> None:
    """Raise MissingExtraError (one line with the pip command) unless `extra`'s libraries are installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(f"{needed_by} needs megallm's [{extra}] extra ({', '.join(absent)} not installed): "
                                f"pip install 'megallm[{extra}]' (in a checkout: pip install -e '.[{extra}]')")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a broken __spec__
        return False
