"""A run's training data as a mixture of named corpora (`data.sources`), or the one corpus of `data.path`.

Each source is a folder written by tools/prepare_data.py with a weight and an optional cap on
repetition (`max_epochs`). All must share one tokenizer. Which source global sample g comes from is
megallm.data.blend's pure function of (weights, train.seed, g); within its source it is that
source's own sample (megallm.data.order), so a mixture resumes, requeues and changes layout
exactly as one corpus does. The first source is the primary: its manifest gives the vocabulary,
the document tokens and the tokenizer saved with checkpoints (the same for every source).

Stages (`data.stages`, `data.anneal`) change the weights after given steps: from then on the
blend is the stage's (megallm.data.blend.StagedBlend), each source still read in its own order.
Their steps become sample counts here (step x sequences per step), so a stage, too, is a pure
function of the sample index and a resume inside it is exact.

`data.path` alone is a mixture of one source (weight 1): its samples are the corpus's own, in
the same order as before mixtures existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

from megallm.config import RunConfig, batch_layout
from megallm.data.blend import Blend, StagedBlend
from megallm.data.corpus import Corpus, open_corpus
from megallm.data.order import SampleOrder
from megallm.errors import ConfigError, DataError

SINGLE_SOURCE = "data"  # the name of data.path's corpus when no data.sources are given


@dataclass(frozen=True)
class Source:
    name: str
    corpus: Corpus
    weight: float = 1.0
    max_epochs: Optional[float] = None  # None: no cap


@dataclass(frozen=True)
class Mixture:
    sources: tuple[Source, ...]
    # Later stages: (their first global sample, {source name: weight}); the sources' weights before.
    stages: tuple[tuple[int, dict[str, float]], ...] = ()

    @classmethod
    def of(cls, corpus: Corpus | Mixture) -> Mixture:
        """A mixture as is; a corpus as the mixture of itself alone."""
        return corpus if isinstance(corpus, Mixture) else cls((Source(SINGLE_SOURCE, corpus),))

    @property
    def primary(self) -> Corpus:
        return self.sources[0].corpus

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def mixed(self) -> bool:
        """More than one source: per-source metrics are logged."""
        return len(self.sources) > 1

    def blend(self, seed: int) -> Blend | StagedBlend:
        first = Blend([s.weight for s in self.sources], seed, where="data.sources")
        if not self.stages:
            return first
        return StagedBlend([(0, first), *((start, Blend([weights.get(s.name, 0.0) for s in self.sources], seed,
                                                        where="data.stages")) for start, weights in self.stages)])

    def orders(self, split: str, seq_len: int, streams: int, seed: int) -> list[SampleOrder]:
        """Each source's sample order of `split` (DataError in one line when one is too small)."""
        return [SampleOrder([s.tokens for s in source.corpus.manifest.splits[split]], seq_len, streams, seed,
                            where=f"split {split!r} of {self._describe(source)}") for source in self.sources]

    def check_epochs(self, split: str, seq_len: int, streams: int, seed: int, total_samples: int) -> None:
        """Refuse (ConfigError, one line with the numbers) a run that would read a source more often than
        its max_epochs allows."""
        counts = self.blend(seed).counts(total_samples)
        for source, order, count in zip(self.sources, self.orders(split, seq_len, streams, seed), counts):
            epochs = count / order.epoch_samples
            if source.max_epochs is not None and epochs > source.max_epochs:
                raise ConfigError(
                    f"data.sources.{source.name}: the run reads {count:,} windows of it, {epochs:.2f} epochs of its "
                    f"{order.epoch_samples:,}, more than its max_epochs={source.max_epochs:g}; lower its weight or "
                    "train.steps, add text to it, raise max_epochs, or set data.renormalize=true (the others then "
                    "share its weight once it is used up)")

    def renormalized(self, split: str, seq_len: int, streams: int, seed: int, per_step: int,
                     steps: int) -> Mixture:
        """This mixture with a stage after the last step at which each capped source is within its
        max_epochs: from there it gets weight 0 (in every later stage too) and the others share its
        weight. ConfigError (one line) when a source cannot give even one step, or none is left."""
        mixture, orders = self, self.orders(split, seq_len, streams, seed)
        caps = {i: int(s.max_epochs * orders[i].epoch_samples) for i, s in enumerate(self.sources)
                if s.max_epochs is not None}
        while True:
            counts_at = mixture.blend(seed).counts
            over = [(i, step) for i, cap in caps.items()
                    if (step := _first_step_over(counts_at, i, cap, per_step, steps)) is not None]
            if not over:
                return mixture
            index, step = min(over, key=lambda found: found[1])
            name = self.sources[index].name
            if step == 0:
                raise ConfigError(f"data.sources.{name}: its max_epochs={self.sources[index].max_epochs:g} "
                                  "does not last one step of its share; raise max_epochs or lower its weight")
            mixture = mixture._without(index, step * per_step)
            if not any(w > 0 for w in mixture.weights_at(step * per_step).values()):
                raise ConfigError(f"data.renormalize: every source is used up by step {step} of {steps}; add text, "
                                  "raise max_epochs or train fewer steps")
            del caps[index]

    def weights_at(self, sample: int) -> dict[str, float]:
        """The weights in force at global sample `sample`."""
        weights = {s.name: s.weight for s in self.sources}
        for start, stage in self.stages:
            if start <= sample:
                weights = {s.name: stage.get(s.name, 0.0) for s in self.sources}
        return weights

    def _without(self, index: int, sample: int) -> Mixture:
        """Source `index` at weight 0 from global sample `sample` on (a stage there, and in every later one)."""
        name = self.sources[index].name
        later = [(start, {**w, name: 0.0}) for start, w in self.stages if start > sample]
        earlier = [(start, w) for start, w in self.stages if start < sample]
        here = {**self.weights_at(sample), name: 0.0}
        return Mixture(self.sources, tuple([*earlier, (sample, here), *later]))

    def _describe(self, source: Source) -> str:
        return source.corpus.location if not self.mixed else f"data.sources.{source.name} ({source.corpus.location})"


def weight_history(cfg: RunConfig, before_step: int) -> list[tuple[int, dict[str, Fraction]]]:
    """The mixtures `cfg` trains with before step `before_step`: (first step, {source: share}) of each
    stage that starts before it (one source named "data" without data.sources)."""
    base = {name: settings.weight for name, settings in cfg.data.source_settings().items()} or {SINGLE_SOURCE: 1.0}
    stages = [(0, base)]
    for at, weights in cfg.data.stage_settings():
        step = cfg.optim.decay_start(cfg.train.steps) if at == "decay" else int(at)
        stages.append((step, {name: weights.get(name, 0.0) for name in base}))
    history = []
    for step, weights in stages:
        if step < before_step:
            shares = Blend(list(weights.values()), where="data.sources").shares
            history.append((step, dict(zip(weights, shares))))
    return history


def history_change(saved: RunConfig, current: RunConfig, step: int) -> Optional[str]:
    """How `current` would read the first `step` steps' data otherwise than `saved` (a checkpoint's config)
    did, or None: a resume then continues what was read (later stages may change freely)."""
    before, now = weight_history(saved, step), weight_history(current, step)
    if before == now:
        return None
    described = "; ".join(f"from step {s}: " + ", ".join(f"{n} {float(w):.3g}" for n, w in shares.items())
                          for s, shares in before)
    return (f"the checkpoint at step {step} read its data with {described}; this run's data.sources and data.stages "
            f"differ before that step, which would read other samples; keep them as they were and change the mix "
            f"from step {step} on with +data.stages=[{{at_step:{step},weights:{{SOURCE:WEIGHT,...}}}}]")


def open_run_data(cfg: RunConfig) -> Mixture:
    """The training data of a run's config: data.sources (or data.path) with data.stages and data.anneal,
    their steps as sample counts (megallm.config.checks has checked them)."""
    mixture = open_mixture(cfg.data.path, cfg.data.source_settings(), cfg.data.tokenizer,
                           (cfg.data.train_split, cfg.data.val_split))
    per_step, _ = batch_layout(cfg.train, 1)
    stages = []
    for at, weights in cfg.data.stage_settings():
        step = cfg.optim.decay_start(cfg.train.steps) if at == "decay" else int(at)
        stages.append((step * per_step, weights))
    mixture = Mixture(mixture.sources, tuple(stages))
    if cfg.data.renormalize:
        mixture = mixture.renormalized(cfg.data.train_split, cfg.train.seq_len, cfg.data.streams, cfg.train.seed,
                                       per_step, cfg.train.steps)
    return mixture


def _first_step_over(counts_at, source: int, cap: int, per_step: int, steps: int) -> Optional[int]:
    """The last step boundary (in steps) before `source`'s count first exceeds `cap`, or None if it never
    does within `steps` steps: the count is non-decreasing, so a binary search over steps finds it."""
    if counts_at(steps * per_step)[source] <= cap:
        return None
    low, high = 0, steps  # counts_at(low) <= cap < counts_at(high)
    while high - low > 1:
        middle = (low + high) // 2
        if counts_at(middle * per_step)[source] <= cap:
            low = middle
        else:
            high = middle
    return low


def open_mixture(path: str, sources: dict, tokenizer: Optional[str], splits: Sequence[str]) -> Mixture:
    """The run's data: `sources` ({name: settings with path, weight, max_epochs}: data.sources) when
    given, else the one corpus at `path` (data.path). Every source is opened and checked
    (megallm.data.corpus.open_corpus); sources prepared with different tokenizers are refused."""
    if not sources:
        return Mixture.of(open_corpus(path, tokenizer, tuple(splits)))
    opened = []
    for name, settings in sources.items():
        if not settings.path:
            raise ConfigError(f"data.sources.{name}.path is empty; name the folder tools/prepare_data.py wrote")
        opened.append(Source(name, open_corpus(settings.path, tokenizer, tuple(splits)), settings.weight,
                             settings.max_epochs))
    first = opened[0]
    for other in opened[1:]:
        mine, theirs = first.corpus.manifest.tokenizer_sha256, other.corpus.manifest.tokenizer_sha256
        tokenizer_file = first.corpus.url(first.corpus.manifest.tokenizer_file)
        if mine != theirs:
            raise DataError(f"data.sources.{first.name} and data.sources.{other.name} were prepared with different "
                            f"tokenizers ({mine[:12]} and {theirs[:12]}); prepare every source with one tokenizer "
                            f"(tools/prepare_data.py --tokenizer {tokenizer_file})")
    mixture = Mixture(tuple(opened))
    mixture.blend(0)  # the weights, checked now (one line)
    return mixture
