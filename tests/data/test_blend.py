"""The blend of a data mixture (megallm.data.blend): which source each global sample comes from.

Every property is exact integer arithmetic, so the assertions are exact: no tolerance is involved.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from megallm.data.blend import Blend, StagedBlend
from megallm.errors import ConfigError

MIXTURES = [[0.3, 0.7], [0.5, 0.3, 0.2], [1, 1, 1], [0.05, 0.15, 0.6, 0.2], [2.0, 0.0, 1.0], [0.4, 0.25, 0.2, 0.1, 0.05]]


def sequence(blend: Blend, n: int) -> list[tuple[int, int]]:
    return [blend.locate(g) for g in range(n)]


def test_weights_in_tenths_give_exactly_their_share_of_every_ten():
    blend = Blend([0.3, 0.7])
    sources = [source for source, _ in sequence(blend, 10_000)]
    assert all(sources[s:s + 10].count(0) == 3 for s in range(0, 10_000, 10))
    assert blend.counts(10_000) == [3_000, 7_000]


@pytest.mark.parametrize("weights", MIXTURES)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_each_source_follows_its_share_over_any_window(weights, seed):
    """Over any window of n consecutive samples, a source's count is within the tree's depth of n x share
    (one sample per level: a node's left child gets floor or ceil of its share of any window)."""
    blend = Blend(weights, seed=seed)
    sources = [source for source, _ in sequence(blend, 4_000)]
    bound = max(1, blend.depth)
    rng = random.Random(seed)
    for _ in range(300):
        start, n = rng.randrange(3_000), rng.randrange(1, 1_000)
        window = sources[start:start + n]
        for source, share in enumerate(blend.shares):
            assert abs(window.count(source) - n * share) < bound, (start, n, source)


@pytest.mark.parametrize("weights", MIXTURES)
def test_each_source_reads_its_own_samples_in_order_once(weights):
    """Source j's samples come 0, 1, 2, ... in global order: none skipped, none twice. A source of weight 0
    gets none."""
    blend = Blend(weights, seed=3)
    seen: dict[int, list[int]] = {}
    for source, index in sequence(blend, 5_000):
        seen.setdefault(source, []).append(index)
    assert all(indices == list(range(len(indices))) for indices in seen.values())
    assert [len(seen.get(s, [])) for s in range(len(weights))] == blend.counts(5_000)
    assert all(s in seen for s, w in enumerate(weights) if w > 0) and all(s not in seen for s, w in
                                                                            enumerate(weights) if w == 0)


def test_a_sample_is_a_pure_function_of_its_index():
    """Looked up in any order, by a new Blend with the same weights and seed (a resumed run, another
    data-parallel rank), far into a run: the same answer, consistent with the counts before it."""
    first = Blend([0.5, 0.3, 0.2], seed=11)
    expected = sequence(first, 2_000)
    order = list(range(2_000))
    random.Random(0).shuffle(order)
    again = Blend([0.5, 0.3, 0.2], seed=11)
    assert [again.locate(g) for g in order] == [expected[g] for g in order]
    far = 10**15 + 12_345  # beyond int64 products: Python integers
    source, index = again.locate(far)
    assert again.counts(far)[source] == index and again.counts(far + 1)[source] == index + 1
    assert sum(again.counts(far)) == far


def test_seeds_interleave_differently_with_the_same_shares():
    a, b = Blend([0.5, 0.3, 0.2], seed=0), Blend([0.5, 0.3, 0.2], seed=1)
    assert sequence(a, 200) != sequence(b, 200)
    assert all(abs(x - y) < 2 * a.depth for x, y in zip(a.counts(10_000), b.counts(10_000)))


def test_weights_are_exact_fractions():
    assert Blend([1, 2]).shares == (Fraction(1, 3), Fraction(2, 3))
    assert Blend([0.1, 0.2, 0.7]).shares == (Fraction(1, 10), Fraction(2, 10), Fraction(7, 10))
    assert Blend([3, 3, 3, 3]).counts(4_000) == [1_000] * 4


@pytest.mark.parametrize("weights, phrase", [
    ([], "lists no source"),
    ([0.5, -0.1], "the weight of source 1 must be a finite number >= 0, got -0.1"),
    ([float("nan"), 1.0], "the weight of source 0 must be a finite number >= 0, got nan"),
    ([0, 0.0], "every weight is 0"),
    (["0.3", 0.7], "the weight of source 0 must be a finite number >= 0, got '0.3'"),
])
def test_bad_weights_are_one_line(weights, phrase):
    with pytest.raises(ConfigError, match=phrase.replace("(", r"\(")) as error:
        Blend(weights)
    assert "\n" not in str(error.value) and str(error.value).startswith("data.sources")


def test_stages_go_on_reading_each_source_in_its_own_order():
    """Three stages (even, then mostly source 0, then source 2 alone): each source's samples stay 0, 1, 2, ...
    across the stage boundaries, each stage's window of samples follows its own shares, and the counts at
    any point equal the samples located so far."""
    staged = StagedBlend([(0, Blend([1, 1, 1])), (300, Blend([0.8, 0.2, 0.0], seed=1)), (700, Blend([0, 0, 1]))])
    located = [staged.locate(g) for g in range(1_000)]
    for source in range(3):
        assert [own for s, own in located if s == source] == list(range(sum(s == source for s, _ in located)))
    stage_two = [s for s, _ in located[300:700]]
    assert (stage_two.count(0), stage_two.count(1), stage_two.count(2)) == (320, 80, 0)
    assert all(s == 2 for s, _ in located[700:])
    for n in (0, 1, 299, 300, 301, 699, 700, 1_000):
        assert staged.counts(n) == [sum(s == source for s, _ in located[:n]) for source in range(3)]
    with pytest.raises(ValueError, match="begin at 0 and increase"):
        StagedBlend([(5, Blend([1]))])
