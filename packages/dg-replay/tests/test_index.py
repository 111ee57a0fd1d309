from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dg_core import ConfigError
from dg_replay import IndexConfig, ReplayFileError, ReplayMismatchError, ReplayReadOnlyError, USearchIndex

from .conftest import clustered_unit_vectors, exact_top_k


def test_recall_at_10_against_exact_search() -> None:
    # Queries come from the same distribution as the data, as retrieval keys do.
    everything = clustered_unit_vectors(5100, 64, seed=1)
    vectors, queries = everything[:5000], everything[5000:]
    keys = np.arange(1000, 6000, dtype=np.int64)
    index = USearchIndex(IndexConfig(dim=64))
    index.add(keys, vectors)
    found = index.search(queries, 10)
    truth = exact_top_k(queries, keys, vectors, 10)
    recall = np.mean([len(set(row.tolist()) & set(want)) / 10 for row, want in zip(found.keys, truth, strict=True)])
    assert recall >= 0.97
    exact_scores = np.einsum("qd,qkd->qk", queries, vectors[found.keys - 1000])
    np.testing.assert_allclose(found.scores, exact_scores, atol=2e-3)  # vectors are stored as f16


def test_adding_a_present_key_replaces_its_vector() -> None:
    vectors = clustered_unit_vectors(50, 16, seed=3)
    index = USearchIndex(IndexConfig(dim=16, dtype="f32"))
    index.add(np.arange(50), vectors)
    index.add([7], vectors[20])
    assert len(index) == 50
    np.testing.assert_allclose(index.get([7])[0], vectors[20], atol=1e-6)
    assert set(index.search(vectors[20], 2).keys[0].tolist()) == {7, 20}


def test_remove_ignores_absent_keys_and_get_names_missing_ones() -> None:
    index = USearchIndex(IndexConfig(dim=8))
    index.add(np.arange(10), clustered_unit_vectors(10, 8))
    assert index.remove([3, 4, 99]) == 2
    assert len(index) == 8
    assert 3 not in index
    assert 5 in index
    with pytest.raises(ConfigError, match=r"\[3\]"):
        index.get([3])
    found = index.search(clustered_unit_vectors(1, 8, seed=9), 20)
    assert (found.keys[0] == -1).sum() == 12
    assert sorted(found.keys[0][:8].tolist()) == [0, 1, 2, 5, 6, 7, 8, 9]


def test_bad_input_is_refused_with_the_reason() -> None:
    index = USearchIndex(IndexConfig(dim=8))
    with pytest.raises(ConfigError, match=r"shape \(n, 8\)"):
        index.add([1], np.ones((1, 9)))
    with pytest.raises(ConfigError, match="NaN"):
        index.add([1], np.full((1, 8), np.nan))
    with pytest.raises(ConfigError, match="non-negative"):
        index.add([-1], np.ones((1, 8)))
    with pytest.raises(ConfigError, match="duplicate keys"):
        index.add([1, 1], np.ones((2, 8)))


def test_view_is_memory_mapped_and_read_only(tmp_path: Path) -> None:
    config = IndexConfig(dim=8, connectivity=8, expansion_search=32)
    index = USearchIndex(config)
    vectors = clustered_unit_vectors(100, 8)
    index.add(np.arange(100), vectors)
    index.save(tmp_path / "i.usearch")
    view = USearchIndex.view(tmp_path / "i.usearch", config)
    assert len(view) == 100
    assert view.search(vectors[5], 1).keys[0, 0] == 5
    with pytest.raises(ReplayReadOnlyError):
        view.add([200], vectors[0])
    with pytest.raises(ReplayMismatchError, match="dimension 8, expected 16"):
        USearchIndex.load(tmp_path / "i.usearch", IndexConfig(dim=16))
    (tmp_path / "bad.usearch").write_bytes(b"not an index at all" * 10)
    with pytest.raises(ReplayFileError, match=r"bad\.usearch"):
        USearchIndex.load(tmp_path / "bad.usearch", config)


def test_expansion_search_changes_on_a_built_index_without_rebuilding(tmp_path: Path) -> None:
    # A deliberately sparse graph, so the search width visibly moves recall.
    everything = clustered_unit_vectors(5200, 64, seed=4)
    vectors, queries = everything[:5000], everything[5000:]
    keys = np.arange(5000, dtype=np.int64)
    index = USearchIndex(IndexConfig(dim=64, connectivity=4, expansion_add=8, expansion_search=10))
    index.add(keys, vectors)
    truth = exact_top_k(queries, keys, vectors, 10)

    def recall() -> float:
        found = index.search(queries, 10).keys
        return float(np.mean([len(set(row.tolist()) & set(want)) / 10 for row, want in zip(found, truth, strict=True)]))

    narrow = recall()
    index.expansion_search = 256
    assert index.expansion_search == 256
    assert index.config.expansion_search == 256  # what the next snapshot records
    assert index.config.connectivity == 4
    wide = recall()
    assert wide > narrow + 0.1
    index.expansion_search = 10
    assert recall() == pytest.approx(narrow)
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(ConfigError, match="expansion_search must be an integer >= 1"):
            index.expansion_search = bad  # type: ignore[assignment]
    assert index.expansion_search == 10

    index.save(tmp_path / "i.usearch")
    view = USearchIndex.view(tmp_path / "i.usearch", index.config)
    view.expansion_search = 256  # search-time only: allowed on a read-only memory-mapped view
    index.expansion_search = 256
    np.testing.assert_array_equal(view.search(queries, 10).keys, index.search(queries, 10).keys)
