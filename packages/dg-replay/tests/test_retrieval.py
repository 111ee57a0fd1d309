"""Retrieval through the whole buffer (storage lookup included) against exact search, with filters."""

from __future__ import annotations

import numpy as np
import pytest

from dg_core import ConfigError, Source
from dg_replay import HashingEncoder, IndexConfig, ReplayBuffer, ReplayFilter, RetrievalQuery, USearchIndex

from .conftest import clustered_unit_vectors, exact_top_k, make_steps, make_task

DIM = 32


class VectorsOnly(HashingEncoder):
    """Buffers below get their embeddings passed in; this names the space they live in."""


def filled_buffer(
    count_per_group: int = 300, *, exact_search_limit: int = 10_000
) -> tuple[ReplayBuffer, np.ndarray, dict[int, tuple[str, str, str, str]]]:
    buffer = ReplayBuffer(encoder=VectorsOnly(DIM), exact_search_limit=exact_search_limit)
    vectors = clustered_unit_vectors(8 * count_per_group + 100, DIM, seed=5)
    labels: dict[int, tuple[str, str, str, str]] = {}
    row = 0
    for env_id in ("alfworld", "webshop"):
        for split in ("train", "test"):
            for source in (Source.REAL, Source.SYNTHETIC):
                task = make_task(f"{env_id}-{split}", env_id=env_id, split=split)
                chunk = vectors[row : row + count_per_group]
                result = buffer.add(
                    make_steps(count_per_group, source=source, prefix=f"{env_id}{split}"),
                    source,
                    task=task,
                    embeddings=chunk,
                )
                for key in result.keys:
                    assert key is not None
                    labels[key] = (env_id, split, source.value, task.id)
                row += count_per_group
    return buffer, vectors, labels


def test_unfiltered_retrieval_matches_exact_search() -> None:
    buffer, vectors, labels = filled_buffer()
    keys = np.asarray(sorted(labels), dtype=np.int64)
    queries = vectors[-50:]
    results = buffer.retrieve(queries, k=10)
    truth = exact_top_k(queries, keys, vectors[keys - 1], 10)
    recall = np.mean(
        [len({hit.key for hit in hits} & set(want)) / 10 for hits, want in zip(results, truth, strict=True)]
    )
    assert recall >= 0.97
    for hits, query in zip(results, queries, strict=True):
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        for hit in hits:
            assert hit.score == pytest.approx(float(vectors[hit.key - 1] @ query), abs=2e-3)
            assert hit.step.action.text.startswith("open door")
            assert hit.transition.env_id == labels[hit.key][0]


@pytest.mark.parametrize("exact_search_limit", [10_000, 0], ids=["exact-path", "overfetch-path"])
@pytest.mark.parametrize(
    "filters",
    [
        {"source": "real"},
        {"env_id": "webshop", "split": "test"},
        {"task_id": ["alfworld-train", "webshop-test"], "source": "synthetic"},
        ReplayFilter(env_id="alfworld", source="real", split="test"),
    ],
    ids=["source", "env+split", "task-list+source", "model"],
)
def test_filtered_retrieval_returns_exactly_the_best_matching_rows(filters: object, exact_search_limit: int) -> None:
    buffer, vectors, labels = filled_buffer(exact_search_limit=exact_search_limit)
    spec = filters if isinstance(filters, ReplayFilter) else ReplayFilter.model_validate(filters)

    def passes(label: tuple[str, str, str, str]) -> bool:
        env_id, split, source, task_id = label
        wanted = {"env_id": env_id, "split": split, "source": source, "task_id": task_id}
        for field, value in wanted.items():
            allowed = getattr(spec, field)
            if allowed is not None and value not in ((allowed,) if isinstance(allowed, str) else allowed):
                return False
        return True

    allowed_keys = np.asarray([key for key, label in sorted(labels.items()) if passes(label)], dtype=np.int64)
    queries = vectors[-100:-80]
    results = buffer.retrieve(queries, k=10, filters=filters)  # type: ignore[arg-type]
    truth = exact_top_k(queries, allowed_keys, vectors[allowed_keys - 1], 10)
    for hits, want in zip(results, truth, strict=True):
        assert len(hits) == 10
        assert all(passes(labels[hit.key]) for hit in hits)
        assert len({hit.key for hit in hits} & set(want)) >= 9


def test_filter_matching_fewer_than_k_rows_returns_them_all() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(DIM))
    buffer.add(make_steps(30), "real", task=make_task("big"))
    buffer.add(make_steps(3, prefix="cellar"), "real", task=make_task("small", split="validation"))
    hits = buffer.retrieve(["anything at all"], k=10, filters={"split": "validation"})[0]
    assert sorted(hit.transition.task_id for hit in hits) == ["small"] * 3
    assert buffer.retrieve(["x"], k=5, filters={"env_id": "nowhere"}) == [[]]


def test_filtered_retrieval_sees_rows_added_and_removed_since_the_last_query() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(DIM), exact_search_limit=0)  # the index path, with counts
    buffer.add(make_steps(40), "real", task=make_task("big"))
    buffer.add(make_steps(3, prefix="cellar"), "real", task=make_task("small", split="validation"))
    assert len(buffer.retrieve(["cellar"], k=10, filters={"split": "validation"})[0]) == 3
    added = buffer.add(make_steps(2, prefix="attic"), "real", task=make_task("later", split="validation"))
    assert len(buffer.retrieve(["cellar"], k=10, filters={"split": "validation"})[0]) == 5
    buffer.remove([key for key in added.keys if key is not None])
    hits = buffer.retrieve(["cellar"], k=10, filters={"split": "validation"})[0]
    assert sorted(hit.transition.task_id for hit in hits) == ["small"] * 3


@pytest.mark.parametrize("build", range(10))
def test_queries_by_task_state_action_find_the_stored_step(build: int) -> None:
    # A small buffer is searched exhaustively: the graph alone missed a stored step's own key in 10% of
    # such buffers (its shape depends on thread timing), so every step of several fresh buffers is asked.
    buffer = ReplayBuffer(encoder=HashingEncoder(256))
    task = make_task()
    steps = make_steps(40, start=build)
    buffer.add(steps, "real", task=task)
    hits = buffer.retrieve([RetrievalQuery(task, step.state, step.action) for step in steps], k=1)
    assert [query_hits[0].step for query_hits in hits] == steps
    assert [query_hits[0].score for query_hits in hits] == pytest.approx([1.0] * len(steps), abs=1e-3)


def test_exhaustive_search_of_a_small_buffer_skips_removed_rows() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(64))
    task = make_task()
    steps = make_steps(30)
    keys = [key for key in buffer.add(steps, "real", task=task).keys if key is not None]
    buffer.remove(keys[:10])
    hits = buffer.retrieve([RetrievalQuery(task, steps[3].state, steps[3].action)], k=10)[0]
    assert len(hits) == 10
    assert not {hit.key for hit in hits} & set(keys[:10])
    assert hits[0].score < 0.999  # the query's own step was removed


def test_bad_queries_and_filters_are_refused_clearly() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(DIM))
    with pytest.raises(ConfigError, match="'colour'"):
        buffer.retrieve(["x"], k=1, filters={"colour": "red"})
    with pytest.raises(ConfigError, match="unknown source 'imagined'"):
        buffer.retrieve(["x"], k=1, filters={"source": "imagined"})
    with pytest.raises(ConfigError, match="k must be >= 1"):
        buffer.retrieve(["x"], k=0)
    with pytest.raises(ConfigError, match=r"shape \(n, 32\)"):
        buffer.retrieve(np.ones((2, 5), dtype=np.float32), k=1)


def test_index_dimension_must_match_the_encoder() -> None:
    with pytest.raises(ValueError, match="index dim 16 != encoder dim 32"):
        ReplayBuffer(encoder=HashingEncoder(DIM), index=USearchIndex(IndexConfig(dim=16)))
