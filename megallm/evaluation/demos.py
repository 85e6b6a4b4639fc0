"""Choosing the demonstrations of few-shot prompts: k examples of a pool for each query.

Three methods (METHODS):
- random: k distinct pool items drawn by numpy's Generator seeded with (seed, query index),
  so a query's demonstrations depend on the seed and its position only, not on the other queries;
- bm25: the k pool items whose `input` scores highest against the query's `input` under
  BM25 (the `bm25s` library: its tokenizer, lower case, English stop words removed;
  k1 = 1.5, b = 0.75);
- embedding: the k pool items whose vectors are nearest the query's by cosine similarity;
  the vectors are `embed(texts)`, which the caller supplies (for instance the model's
  mean-pooled hidden states).

Order: bm25 and embedding put the MOST similar demonstration LAST, next to the query; ties
go to the lower pool index (which then comes later too). Random keeps the order drawn.
`same_pool=True` says the queries are the pool itself (same order, same objects): each
query is then left out of its own demonstrations (leave-one-out).

Mistakes in the arguments (an unknown method, embedding without `embed`, k < 0) raise
ValueError; a pool too small for k raises megallm.errors.DataError. Both are one line.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from megallm.errors import DataError
from megallm.evaluation.tasks import Example

METHODS = ("random", "bm25", "embedding")
BM25_STOPWORDS = "en"


def choose_demonstrations(pool: Sequence[Example], queries: Sequence[Example], k: int, method: str, seed: int,
                          embed: Optional[Callable[[list[str]], np.ndarray]] = None,
                          same_pool: bool = False) -> list[list[int]]:
    """For each query, k indices into `pool` (order: see the module docstring)."""
    _check(pool, queries, k, method, embed, same_pool)
    if k == 0:
        return [[] for _ in queries]
    if method == "random":
        return [_random(len(pool), k, seed, i, same_pool) for i in range(len(queries))]
    scores = _bm25_scores(pool, queries) if method == "bm25" else _cosine_scores(pool, queries, embed, same_pool)
    return [_top_k_last(row, k, i if same_pool else None) for i, row in enumerate(scores)]


def _check(pool, queries, k, method, embed, same_pool) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown demonstration method {method!r}; choose from {', '.join(METHODS)}")
    if method == "embedding" and embed is None:
        raise ValueError("the embedding method needs embed, a function from a list of texts to an (n, d) array")
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    if same_pool and (len(queries) != len(pool) or any(q is not p for q, p in zip(queries, pool))):
        raise ValueError("same_pool=True needs the queries to be the pool itself (same objects, same order)")
    available = len(pool) - 1 if same_pool else len(pool)
    if k > available:
        left_out = " once each query is left out" if same_pool else ""
        raise DataError(f"{k} demonstrations asked for, but the pool has {available} examples{left_out}")


def _random(size: int, k: int, seed: int, index: int, same_pool: bool) -> list[int]:
    rng = np.random.default_rng((seed, index))
    candidates = np.delete(np.arange(size), index) if same_pool else np.arange(size)
    return [int(i) for i in rng.choice(candidates, size=k, replace=False)]


def _bm25_scores(pool: Sequence[Example], queries: Sequence[Example]) -> list[np.ndarray]:
    # deferred: bm25s (and its scipy import) is needed by this method only
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([e.input for e in pool], stopwords=BM25_STOPWORDS, show_progress=False),
                    show_progress=False)
    tokens = bm25s.tokenize([q.input for q in queries], stopwords=BM25_STOPWORDS, return_ids=False,
                            show_progress=False)
    return [retriever.get_scores(query_tokens).astype(np.float64) for query_tokens in tokens]


def _cosine_scores(pool, queries, embed, same_pool: bool) -> np.ndarray:
    pool_vectors = _unit_rows(embed([e.input for e in pool]), len(pool))
    query_vectors = pool_vectors if same_pool else _unit_rows(embed([q.input for q in queries]), len(queries))
    return query_vectors @ pool_vectors.T  # (queries, pool)


def _unit_rows(vectors, rows: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != rows:
        raise ValueError(f"embed returned an array of shape {vectors.shape} for {rows} texts; expected ({rows}, d)")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _top_k_last(scores: np.ndarray, k: int, leave_out: Optional[int]) -> list[int]:
    """The k best indices by score (ties: lower index first), returned best last."""
    scores = np.array(scores, dtype=np.float64)
    if leave_out is not None:
        scores[leave_out] = -np.inf
    best_first = np.lexsort((np.arange(len(scores)), -scores))[:k]  # last key sorts first
    return [int(i) for i in best_first[::-1]]
