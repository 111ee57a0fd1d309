from __future__ import annotations

from pathlib import Path

import pytest

from dg_core import ConfigError, Task
from dg_core.testing import scripted_task
from dg_curriculum import Curriculum, PoolFileError, TaskPool, normalize_instruction
from dg_replay import HashingEncoder


def child(parent: Task, task_id: str, instruction: str) -> Task:
    fields = {**parent.model_dump(), "id": task_id, "instruction": instruction}
    return Task.model_validate({**fields, "parent_id": parent.id, "generation": parent.generation + 1})


def test_exact_duplicates_by_normalized_text() -> None:
    pool = TaskPool()
    seed = scripted_task("s0")
    assert pool.add(seed)
    assert not pool.add(seed)  # same id
    assert not pool.add(child(seed, "c1", "FIND the gold-coin, and take it!"))
    assert normalize_instruction("FIND the gold-coin, and take it!") == "find the gold coin and take it"
    assert pool.add(child(seed, "c2", "Find the red key and take it."))
    assert len(pool) == 2 and pool.size_by_generation() == {0: 1, 1: 1}
    other_game = scripted_task("s1", seed=5)  # the same instruction in another world is another task
    assert pool.add(other_game)


def test_near_duplicates_by_embedding() -> None:
    pool = TaskPool(encoder=HashingEncoder(dim=512), near_duplicate_threshold=0.8)
    seed = Task(id="s", env_id="scripted", instruction="take the gold coin from the third room of the corridor")
    pool.add(seed)
    near = child(seed, "near", "take the gold coin from the third room of the long corridor")
    far = child(seed, "far", "open the wooden box")
    assert pool.duplicate_of(near) == "s"
    assert not pool.add(near)
    assert pool.add(far)


def test_lineage_and_missing_parent() -> None:
    pool = TaskPool()
    seed = scripted_task("s0")
    first = child(seed, "g1", "Find the red key and take it.")
    second = child(first, "g2", "Find the blue gem and take it.")
    pool.add_many([seed, first, second])
    assert pool.lineage("g2") == ["s0", "g1", "g2"]
    assert pool.seed_ids == ["s0"] and pool.generated_ids == ["g1", "g2"]
    orphan = child(scripted_task("nope"), "orphan", "Find the old map and take it.")
    with pytest.raises(ConfigError, match="names parent 'nope', which is not in the pool"):
        pool.add(orphan)
    with pytest.raises(KeyError, match="no task 'ghost'"):
        pool.get("ghost")


def test_persistence_and_resume(tmp_path: Path) -> None:
    pool = TaskPool()
    seed = scripted_task("s0", split="train")
    pool.add_many([seed, child(seed, "g1", "Find the red key and take it.")])
    curriculum = Curriculum(pool)
    curriculum.report("s0", [1, 0, 0, 1])
    path = tmp_path / "pool.json"
    curriculum.save(path)
    (tmp_path / "pool.json.saving").write_text("{half a file")  # a save killed midway leaves this behind
    loaded = TaskPool.load(path, encoder=HashingEncoder(dim=64))
    assert list(loaded.records) == ["s0", "g1"]
    assert loaded.get("s0").variance == 0.25 and loaded.get("s0").last_rewards == [1.0, 0.0, 0.0, 1.0]
    assert loaded.get("g1").variance is None and loaded.get("g1").task.parent_id == "s0"
    assert not loaded.add(child(seed, "dup", "find the RED key and take it"))
    resumed = Curriculum(loaded)
    assert resumed.score("s0") == 0.25 and resumed.score("g1") == resumed.config.unplayed_score


def test_bad_pool_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text("{not json")
    with pytest.raises(PoolFileError, match=r"pool\.json: not a task pool file"):
        TaskPool.load(path)
    path.write_text('{"format": 9, "tasks": []}')
    with pytest.raises(PoolFileError, match="unsupported pool format 9"):
        TaskPool.load(path)
    path.write_text('{"format": 1, "tasks": [{"task": {"id": "x"}}]}')
    with pytest.raises(PoolFileError, match="task entry 1 is malformed"):
        TaskPool.load(path)


def test_state_dict_resumes_the_same_draws() -> None:
    """A curriculum restored from its state draws exactly what the original draws next (pool, statistics, rng)."""
    import json

    seeds = [scripted_task(f"s{i}", seed=i) for i in range(6)]
    original = Curriculum(TaskPool(), seed=3)
    original.pool.add_many(seeds)
    for _ in range(3):
        for task in original.next_batch(2):
            original.report(task.id, [1, 0, 0, 0])
    state = json.loads(json.dumps(original.state_dict()))  # JSON-able: it travels in a checkpoint
    restored = Curriculum(TaskPool(), seed=99)  # another seed: the state must override it
    restored.load_state_dict(state)
    assert restored.pool.to_dict() == original.pool.to_dict()
    assert restored.stats() == original.stats()
    for _ in range(4):
        ahead, again = original.next_batch(3), restored.next_batch(3)
        assert [t.id for t in ahead] == [t.id for t in again]
        for task in ahead:
            original.report(task.id, [0, 1])
            restored.report(task.id, [0, 1])
    fresh = Curriculum(TaskPool(), seed=3)
    fresh.pool.add_many(seeds)
    with pytest.raises(ConfigError, match="checkpoint x: not a curriculum state"):
        fresh.load_state_dict({"pool": state["pool"]}, origin="checkpoint x")
    with pytest.raises(PoolFileError, match="checkpoint y: unsupported pool format"):
        fresh.load_state_dict({**state, "pool": {"format": 7}}, origin="checkpoint y")
