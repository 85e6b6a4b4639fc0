"""Choosing few-shot demonstrations (megallm.evaluation.demos)."""

from __future__ import annotations

import numpy as np
import pytest

from megallm.errors import DataError
from megallm.evaluation.demos import METHODS, choose_demonstrations
from megallm.evaluation.tasks import Example


def examples(*texts: str) -> list[Example]:
    return [Example(t, target=f"answer {i}", id=str(i)) for i, t in enumerate(texts)]


POOL = examples("the cat sat on the mat", "stock markets fell sharply today", "a recipe for apple pie",
                "python list comprehension syntax", "the dog chased the cat", "rain is expected tomorrow",
                "apple pie with cinnamon and sugar", "markets rallied after the report")


def embed_by_hash(texts: list[str]) -> np.ndarray:
    """A stand-in for a model's embeddings: 8 numbers per text, fixed by its words."""
    return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_leave_one_out_never_picks_the_query(method, k):
    chosen = choose_demonstrations(POOL, POOL, k, method, seed=1, embed=embed_by_hash, same_pool=True)
    assert len(chosen) == len(POOL)
    for i, demos in enumerate(chosen):
        assert i not in demos and len(demos) == len(set(demos)) == k
        assert all(0 <= d < len(POOL) for d in demos)


def test_random_is_reproducible_by_seed_and_differs_across_seeds():
    queries = examples("q0", "q1", "q2", "q3")
    first = choose_demonstrations(POOL, queries, 3, "random", seed=7)
    assert first == choose_demonstrations(POOL, queries, 3, "random", seed=7)
    assert first != choose_demonstrations(POOL, queries, 3, "random", seed=8)
    assert first[:2] == choose_demonstrations(POOL, queries[:2], 3, "random", seed=7)  # per query, not per batch
    assert len({tuple(d) for d in first}) > 1  # queries get different demonstrations


def test_bm25_picks_the_lexical_neighbour_most_similar_last():
    query = examples("baking an apple pie with cinnamon and sugar")
    assert choose_demonstrations(POOL, query, 1, "bm25", seed=0) == [[6]]
    assert choose_demonstrations(POOL, query, 2, "bm25", seed=0) == [[2, 6]]  # next best first, best last
    markets = choose_demonstrations(POOL, examples("why did the markets fall?"), 2, "bm25", seed=0)
    assert sorted(markets[0]) == [1, 7]
    # leave-one-out: the second apple pie is item 2's nearest neighbour, not item 2 itself
    assert choose_demonstrations(POOL, POOL, 1, "bm25", seed=0, same_pool=True)[2] == [6]


def test_bm25_ties_go_to_the_lower_index():
    # no word of the query is in the pool: every score is 0, so the lowest indices, best (0) last
    assert choose_demonstrations(POOL, examples("zebra xylophone"), 3, "bm25", seed=0) == [[2, 1, 0]]


def test_embedding_picks_the_nearest_vector_by_cosine():
    vectors = {"a": [10.0, 0.0], "b": [0.9, 0.5], "c": [0.0, 1.0], "q": [1.0, 0.1], "r": [0.1, 1.0]}
    pool = examples("a", "b", "c")

    def embed(texts):
        return np.array([vectors[t] for t in texts])

    # "a" is far in distance but nearest in angle to "q"
    assert choose_demonstrations(pool, examples("q", "r"), 2, "embedding", seed=0, embed=embed) == [[1, 0], [1, 2]]
    assert choose_demonstrations(pool, pool, 1, "embedding", seed=0, embed=embed, same_pool=True) == [[1], [0], [1]]


def test_k_zero_gives_no_demonstrations():
    assert choose_demonstrations(POOL, POOL[:2], 0, "bm25", seed=0) == [[], []]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(k=2, method="nearest"), ValueError, "unknown demonstration method 'nearest'; choose from random, bm25, "
                                              "embedding"),
    (dict(k=2, method="embedding"), ValueError, "the embedding method needs embed"),
    (dict(k=-1, method="random"), ValueError, "k must be >= 0, not -1"),
    (dict(k=9, method="random"), DataError, "9 demonstrations asked for, but the pool has 8 examples"),
    (dict(k=8, method="bm25", same_pool=True), DataError,
     "8 demonstrations asked for, but the pool has 7 examples once each query is left out"),
])
def test_argument_mistakes_are_one_line(kwargs, error, message):
    queries = POOL if kwargs.get("same_pool") else examples("q")
    with pytest.raises(error) as caught:
        choose_demonstrations(POOL, queries, seed=0, **kwargs)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_same_pool_needs_the_pool_itself():
    copies = examples(*(e.input for e in POOL))  # equal text, other objects
    with pytest.raises(ValueError, match="same objects"):
        choose_demonstrations(POOL, copies, 1, "random", seed=0, same_pool=True)
