"""Several corpora with one tokenizer (a data mixture): `tools/prepare_data.py --source NAME=GLOB ...`.

Each source, a name and a file pattern, becomes the corpus OUTPUT/NAME, prepared as a single
corpus is (megallm.data.prepare: plan, units, merge) and with the same tokenizer.json bytes as
every other, so that the corpora train together as `data.sources` (megallm.data.mixture refuses
corpora with different tokenizers). The overrides that do so end the output.

The tokenizer is --tokenizer, installed in each corpus as a single corpus installs it, or one
trained on a weighted sample of all the sources: --tokenizer-train-bytes split by the sources'
weights (--source-weight NAME=W, the same weights the overrides give data.sources; without
them every source weighs 1), each source's share the prefix of its documents that a single
corpus's sample is (megallm.data.prepare.training_texts). A source with less text than its
share gives all it has and the rest of the budget is left unused, so the sample's shares follow
the weights wherever the sources hold enough text. `--tokenizer-only` writes only
OUTPUT/tokenizer.json, for preparing the sources one by one with --tokenizer (SLURM arrays).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer

from megallm.data.parts import Part, merge
from megallm.data.plan import Plan, collect_inputs
from megallm.data.prepare import (
    Log,
    PrepareOptions,
    install_tokenizer,
    make_plan,
    obtain_tokenizer,
    run_part,
    start_writing,
    train_tokenizer,
    training_texts,
)
from megallm.data.shards import Manifest
from megallm.data.tokenizer import tokenizer_json
from megallm.errors import DataError
from megallm.files import TOKENIZER_FILE

# A source's name becomes a folder and the key of data.sources.NAME in a command-line override.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    pattern: str  # file or glob (** recurses) of the source's inputs
    weight: float = 1.0


def parse_sources(sources: list[str], weights: list[str]) -> list[SourceSpec]:
    """`--source NAME=GLOB` and `--source-weight NAME=W` flags as specs, in the order given. DataError (one
    line) for a flag without NAME=, a name that is repeated or not identifier-like, a weight that is not a
    number > 0 or names no source, and weights for some sources but not all."""
    patterns: dict[str, str] = {}
    for value in sources:
        name, pattern = _name_and_value("--source", value, "GLOB", "code='src/**/*.py'")
        if name in patterns:
            raise DataError(f"--source {name} is given twice; give each source one name and one pattern "
                            "(a glob: ** recurses)")
        patterns[name] = pattern
    weighted: dict[str, float] = {}
    for value in weights:
        name, text = _name_and_value("--source-weight", value, "W", "code=0.3")
        if name not in patterns:
            raise DataError(f"--source-weight {value!r} names no source; the sources are {', '.join(patterns)}")
        if name in weighted:
            raise DataError(f"--source-weight {name} is given twice; give each source one weight")
        try:
            weight = float(text)
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise DataError(f"--source-weight {value!r}: a weight must be a number > 0 (weights are relative: "
                            "code=0.3 prose=0.7 is code=3 prose=7)")
        weighted[name] = weight
    unweighted = [name for name in patterns if name not in weighted]
    if weighted and unweighted:
        raise DataError(f"--source-weight weighs {', '.join(weighted)} but not {', '.join(unweighted)}; weigh every "
                        "source or none (then each weighs 1)")
    return [SourceSpec(name, pattern, weighted.get(name, 1.0)) for name, pattern in patterns.items()]


def _name_and_value(flag: str, value: str, what: str, example: str) -> tuple[str, str]:
    name, equals, rest = value.partition("=")
    if not equals or not rest:
        raise DataError(f"{flag} {value!r} must be NAME={what}, e.g. {flag} {example}")
    if not _NAME.fullmatch(name):
        raise DataError(f"{flag} {value!r}: the name {name!r} must be letters, digits and _ (not starting with a "
                        f"digit): it names the folder OUTPUT/{name} and data.sources.{name}")
    return name, rest


@dataclass
class TokenizerSample:
    """What a mixture's tokenizer is trained on: from each source (plans, in order) the prefix of its
    documents of `budgets[name]` characters. `read` holds the characters each source gave, once
    `texts` has been read through."""

    plans: dict[str, Plan]
    budgets: dict[str, int]
    read: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, plans: dict[str, Plan], weights: dict[str, float], total: int) -> TokenizerSample:
        """`total` characters split by `weights` (relative) across the sources."""
        weight_sum = sum(weights.values())
        return cls(plans, {name: math.floor(total * weights[name] / weight_sum) for name in plans})

    def texts(self, text_field: str) -> Iterator[str]:
        for name, plan in self.plans.items():
            self.read[name] = 0
            for piece in training_texts(plan, text_field, self.budgets[name]):
                self.read[name] += len(piece)
                yield piece

    def describe(self, counts: dict[str, int]) -> str:
        total = sum(counts.values()) or 1
        return ", ".join(f"{name} {_size(count)} ({count / total:.0%})" for name, count in counts.items())


def _size(characters: int) -> str:
    return f"{characters / 2**20:,.1f} MiB" if characters >= 2**20 else f"{characters / 2**10:,.0f} KiB"


def prepare_mixture(specs: list[SourceSpec], output: Path, log: Log = print, tokenizer_only: bool = False,
                    **options) -> dict[str, Manifest]:
    """Every source's corpus OUTPUT/NAME with one tokenizer (module docstring); `options`: fields of
    PrepareOptions. Every pattern is checked before anything is written. With `tokenizer_only`, only
    OUTPUT/tokenizer.json is written (and no manifest returned)."""
    opts = PrepareOptions(**options)
    files = {spec.name: collect_inputs([spec.pattern], False, what=f"--source {spec.name}") for spec in specs}
    plans = {name: make_plan(found, opts, log) for name, found in files.items()}
    trained = None
    if opts.tokenizer_path is None:
        sample = TokenizerSample.of(plans, {spec.name: spec.weight for spec in specs}, opts.tokenizer_train_bytes)
        log(f"training a {opts.vocab_size}-token byte-level BPE on up to {_size(opts.tokenizer_train_bytes)} "
            f"of {len(specs)} sources, split by their weights: {sample.describe(sample.budgets)}")
        tok = train_tokenizer(sample.texts(opts.text_field), opts, log)
        log(f"the tokenizer's sample: {sample.describe(sample.read)}")
        trained = tok, tokenizer_json(tok).encode()

    def install(target: Path, plan: Plan) -> Tokenizer:
        """The tokenizer, written to `target` as a single corpus gets it (a given one byte for byte)."""
        if trained is None:
            return obtain_tokenizer(plan, target, opts, log, may_train=False)
        install_tokenizer(target, *trained, opts)
        return trained[0]

    if tokenizer_only:
        output.mkdir(parents=True, exist_ok=True)
        tok = install(output, next(iter(plans.values())))
        log(f"wrote {output / TOKENIZER_FILE} ({tok.get_vocab_size()} tokens)")
        return {}
    manifests = {}
    for spec in specs:
        target = output / spec.name
        log(f"source {spec.name}: {len(files[spec.name])} files -> {target}")
        start_writing(target)
        tok = install(target, plans[spec.name])
        run_part(plans[spec.name], target, opts, tok, Part(0, 1), log)
        manifests[spec.name] = merge(target, count=1, log=log)
    log(f"wrote {len(specs)} corpora with one tokenizer; to train on them, give launch/pretrain.py:")
    log(mixture_overrides(specs, output))
    return manifests


def mixture_overrides(specs: list[SourceSpec], output: Path) -> str:
    """The command-line overrides that make the prepared sources a run's data.sources, on one line."""
    return " ".join(shlex.quote(override) for spec in specs
                    for override in (f"+data.sources.{spec.name}.path={output / spec.name}",
                                     f"+data.sources.{spec.name}.weight={spec.weight:.12g}"))
