"""Top-k search over the index plus the rows the index has not seen, with metadata filters.

The index answers unfiltered queries directly. A filter that matches few rows is answered by exact
search over just those rows; otherwise the index is asked for more candidates than ``k`` (in
proportion to how selective the filter is), the candidates are screened against the storage, and the
request grows until every query has ``k`` hits or the whole index was asked, with exact search as the
last resort. Rows added after an index snapshot (a read-only buffer's "tail") are searched exactly
and merged, and keys deleted after the snapshot fall out at the storage screen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from dg_replay._filters import ReplayFilter
from dg_replay._index import USearchIndex
from dg_replay._storage import SQLiteStorage

__all__ = ["Hits", "Tail", "search_keys"]

Hits = list[tuple[int, float]]
"""(key, cosine similarity) pairs, best first."""


@dataclass
class Tail:
    """Rows the index does not hold, searched exactly: keys and their unit vectors."""

    keys: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    vectors: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.keys)


def exact_top_k(
    queries: NDArray[np.float32], keys: NDArray[np.int64], vectors: NDArray[np.float32], k: int
) -> list[Hits]:
    """Exact top-``k`` by dot product of unit vectors."""
    if len(keys) == 0 or k <= 0:
        return [[] for _ in range(len(queries))]
    scores = queries @ vectors.T
    take = min(k, len(keys))
    out: list[Hits] = []
    for row in scores:
        top = np.argpartition(-row, take - 1)[:take] if take < len(row) else np.arange(len(row))
        top = top[np.argsort(-row[top], kind="stable")]
        out.append([(int(keys[i]), float(row[i])) for i in top])
    return out


def search_keys(
    queries: NDArray[np.float32],
    k: int,
    *,
    index: USearchIndex,
    storage: SQLiteStorage,
    tail: Tail,
    filters: ReplayFilter | None,
    matching: int | None,
    trust_index: bool,
    exact_limit: int,
) -> list[Hits]:
    """Top-``k`` (key, score) per query among stored rows passing ``filters``.

    Args:
        queries: Unit query vectors.
        k: Hits per query.
        index: The vector index.
        storage: The storage, which has the final word on what exists and what passes ``filters``.
        tail: Rows the index does not hold.
        filters: Metadata filter, or ``None``.
        matching: How many stored rows pass ``filters`` (``None`` without filters).
        trust_index: Whether every index key is known to be in storage (a writer's own buffer), which
            skips the storage screen for unfiltered queries.
        exact_limit: Filters matching at most this many rows are answered by exact search over the
            embeddings kept in storage; an index of at most this many rows is searched exhaustively (the
            graph search can miss even an identical vector in a small graph).
    """
    total = len(index) + len(tail)
    if total == 0 or k <= 0 or len(queries) == 0:
        return [[] for _ in range(len(queries))]
    fetch = k
    if filters is not None and matching is not None:
        if matching == 0:
            return [[] for _ in range(len(queries))]
        if matching <= exact_limit:
            return exact_top_k(queries, *storage.embeddings(filters), k)
        fetch = math.ceil(k * 1.5 * total / matching)
    screen = filters is not None or not trust_index
    exhaustive = len(index) <= exact_limit
    results: list[Hits] = [[] for _ in range(len(queries))]
    pending = np.arange(len(queries))
    while len(pending):
        fetch = min(max(fetch, k), total)
        candidates = _candidates(queries[pending], fetch, index, tail, exact=exhaustive)
        valid: set[int] | None = None
        if screen:
            valid = storage.matching(sorted({key for hits in candidates for key, _ in hits}), filters)
        still_pending: list[int] = []
        for row, hits in zip(pending, candidates, strict=True):
            kept = [hit for hit in hits if valid is None or hit[0] in valid][:k]
            results[row] = kept
            if len(kept) < k and fetch < total:
                still_pending.append(int(row))
        pending = np.asarray(still_pending, dtype=np.int64)
        fetch *= 4
    short = [row for row, hits in enumerate(results) if len(hits) < k]
    if short and filters is not None:
        # The graph search may miss rows when asked for everything; exact search cannot.
        exact = exact_top_k(queries[short], *storage.embeddings(filters), k)
        for short_row, hits in zip(short, exact, strict=True):
            results[short_row] = hits
    return results


def _candidates(
    queries: NDArray[np.float32], fetch: int, index: USearchIndex, tail: Tail, *, exact: bool
) -> list[Hits]:
    found = index.search(queries, min(fetch, len(index)), exact=exact) if len(index) else None
    tail_hits = exact_top_k(queries, tail.keys, tail.vectors, fetch) if len(tail) else None
    out: list[Hits] = []
    for row in range(len(queries)):
        hits: Hits = []
        if found is not None:
            keys, scores = found.keys[row], found.scores[row]
            hits = [(int(key), float(score)) for key, score in zip(keys, scores, strict=True) if key >= 0]
        if tail_hits is not None:
            tail_keys = {key for key, _ in tail_hits[row]}
            # A tail row replaces any stale copy of the same key in the index.
            hits = sorted([hit for hit in hits if hit[0] not in tail_keys] + tail_hits[row], key=lambda hit: -hit[1])
        out.append(hits)
    return out
