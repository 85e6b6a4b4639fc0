"""Three corpora of one tokenizer for the mixture tests (tests/data/test_mixture.py,
tests/integration/test_mixture_layouts.py): the standard library's email, json and http packages,
prepared by tools/prepare_data.py's code, the first training the 512-token BPE the others are given;
and the logging package with a tokenizer of its own (to be refused beside them). The fixture that
prepares them is `mixture_sources` (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import stdlib_subset

WEIGHTS = {"email": 0.5, "json": 0.2, "http": 0.3}


def package_files(package: str) -> list[Path]:
    return [p for p in stdlib_subset() if f"/{package}/" in str(p)]


def prepare_sources(root: Path) -> dict[str, Path]:
    from megallm.data.prepare import prepare

    quiet = dict(val_fraction=0.1, shard_tokens=20_000, tokenizer_train_bytes=1 << 20, log=lambda *_: None)
    prepare(package_files("email"), root / "email", vocab_size=512, tokenizer_path=None, **quiet)
    tokenizer = root / "email" / "tokenizer.json"
    for name in ("json", "http"):
        prepare(package_files(name), root / name, vocab_size=512, tokenizer_path=tokenizer, **quiet)
    prepare(package_files("logging"), root / "other_tokenizer", vocab_size=600, tokenizer_path=None, **quiet)
    return {name: root / name for name in (*WEIGHTS, "other_tokenizer")}


def source_args(sources: dict[str, Path], weights: dict[str, float] = WEIGHTS) -> list[str]:
    """launch/pretrain.py's overrides declaring `weights`' sources."""
    return [arg for name, weight in weights.items()
            for arg in (f"+data.sources.{name}.path={sources[name]}", f"+data.sources.{name}.weight={weight}")]
