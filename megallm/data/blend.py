"""Which source each global sample of a data mixture comes from: a pure function of the weights,
the seed and the sample index, so it is the same in every layout, after a resume and a requeue.

The sources form a binary tree (each node splits its sources in two, in the given order, halving
their count). At a node whose left sources hold the share p = a / b of its weight (an exact
fraction), sample n of the node goes left when

    floor(((n + 1) a + phase) / b) > floor((n a + phase) / b)

(a Sturmian, "mechanical" sequence, the even spread that Bresenham's line draws), and it is then
sample floor((n a + phase) / b) of the left child, else sample n - floor((n a + phase) / b) of the
right one. Every child's samples are therefore numbered 0, 1, 2, ... without a gap or a repeat,
and among any n consecutive samples of a node the left child gets floor(n p) or ceil(n p): over
any window of samples each source's count is its share up to one sample per level of the tree
(one for two sources, two for three or four), as Megatron's blended dataset keeps it up to one,
and no history is needed to find sample g (a checkpoint stores the sample count only). The phase
(0 <= phase < b) is drawn from (seed, node), so seeds interleave differently.

`StagedBlend` chains blends for data stages (the mixture changing at given steps).

Integers throughout (Python's, unbounded): a weight is taken as the nearest fraction with a
denominator up to 10^9 (0.3 is 3/10 exactly), and no sample index is too large.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

from megallm.errors import ConfigError

MAX_DENOMINATOR = 10**9


@dataclass(frozen=True)
class _Node:
    sources: tuple[int, ...]  # the source indices below this node, in order
    a: int = 0  # the left child's share of the node's weight is a / b
    b: int = 1
    phase: int = 0
    left: Optional[_Node] = None
    right: Optional[_Node] = None


class Blend:
    """Global samples of a mixture of `len(weights)` sources, each sample from one source.

    `weights`: non-negative, not all zero, in any scale (normalised here). A source of weight 0
    gets no sample. `where` names the setting in error messages.
    """

    def __init__(self, weights: Sequence[float], seed: int = 0, where: str = "data.sources"):
        shares = _shares(weights, where)
        self.shares = tuple(shares)
        self.seed = seed
        self._root = self._build(tuple(range(len(shares))), shares, path=1)

    def _build(self, sources: tuple[int, ...], shares: list[Fraction], path: int) -> _Node:
        if len(sources) == 1:
            return _Node(sources)
        half = len(sources) // 2
        left_sources, right_sources = sources[:half], sources[half:]
        left, total = sum(shares[s] for s in left_sources), sum(shares[s] for s in sources)
        p = left / total if total else Fraction(0)
        phase = random.Random(f"megallm blend {self.seed} {path}").randrange(p.denominator)  # sha512 of the text
        return _Node(sources, p.numerator, p.denominator, phase,
                     self._build(left_sources, shares, 2 * path), self._build(right_sources, shares, 2 * path + 1))

    def locate(self, sample: int) -> tuple[int, int]:
        """(source, the source's own sample index) of global sample `sample` (>= 0)."""
        if sample < 0:
            raise ValueError(f"sample index {sample} < 0")
        node, n = self._root, sample
        while node.left is not None and node.right is not None:
            before = (n * node.a + node.phase) // node.b - node.phase // node.b  # left samples before n
            goes_left = ((n + 1) * node.a + node.phase) // node.b - node.phase // node.b > before
            node, n = (node.left, before) if goes_left else (node.right, n - before)
        return node.sources[0], n

    def counts(self, samples: int) -> list[int]:
        """How many of the first `samples` global samples each source gives (its samples 0 .. count-1)."""
        found = [0] * len(self.shares)
        self._count(self._root, samples, found)
        return found

    def _count(self, node: _Node, n: int, found: list[int]) -> None:
        if node.left is None or node.right is None:
            found[node.sources[0]] += n
            return
        left = (n * node.a + node.phase) // node.b - node.phase // node.b
        self._count(node.left, left, found)
        self._count(node.right, n - left, found)

    @property
    def depth(self) -> int:
        """Levels of the tree: each source's count over any window is within this of its share."""
        return math.ceil(math.log2(len(self.shares))) if len(self.shares) > 1 else 0


def _shares(weights: Sequence[float], where: str) -> list[Fraction]:
    if not len(weights):
        raise ConfigError(f"{where} lists no source; give each a weight")
    for i, w in enumerate(weights):
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ConfigError(f"{where}: the weight of source {i} must be a finite number >= 0, got {w!r}")
    fractions = [Fraction(w).limit_denominator(MAX_DENOMINATOR) for w in weights]
    total = sum(fractions)
    if total <= 0:
        raise ConfigError(f"{where}: every weight is 0; give at least one source a positive weight")
    return [f / total for f in fractions]


class StagedBlend:
    """Blends that follow one another (data stages): stage s covers global samples [start_s, start_s+1),
    the first starting at 0. Sample g of stage s is sample g - start_s of the stage's Blend, and a
    source's own sample index goes on from what the earlier stages took of it, so every source is
    still read in its own order, once, whatever the stages. A pure function of g, as Blend is: a
    resume inside any stage reads what the uninterrupted run read."""

    def __init__(self, stages: Sequence[tuple[int, Blend]]):
        starts = [start for start, _ in stages]
        if not stages or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"stage starts must begin at 0 and increase, got {starts}")
        widths = {len(blend.shares) for _, blend in stages}
        if len(widths) != 1:
            raise ValueError("every stage must blend the same sources")
        self.starts, self.blends = starts, [blend for _, blend in stages]
        self.taken = [[0] * len(self.blends[0].shares)]  # each stage: samples of each source taken before it
        for (start, blend), end in zip(stages, starts[1:]):
            self.taken.append([a + b for a, b in zip(self.taken[-1], blend.counts(end - start))])

    @property
    def shares(self) -> tuple[Fraction, ...]:
        return self.blends[0].shares

    @property
    def depth(self) -> int:
        return max(blend.depth for blend in self.blends)

    def _stage(self, sample: int) -> int:
        return bisect.bisect_right(self.starts, sample) - 1

    def locate(self, sample: int) -> tuple[int, int]:
        if sample < 0:
            raise ValueError(f"sample index {sample} < 0")
        stage = self._stage(sample)
        source, own = self.blends[stage].locate(sample - self.starts[stage])
        return source, self.taken[stage][source] + own

    def counts(self, samples: int) -> list[int]:
        if samples <= 0:
            return [0] * len(self.shares)
        stage = self._stage(samples - 1)
        within = self.blends[stage].counts(samples - self.starts[stage])
        return [a + b for a, b in zip(self.taken[stage], within)]
