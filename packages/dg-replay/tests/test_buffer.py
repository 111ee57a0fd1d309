"""Adding, deduplicating, seeding from trajectory files, sampling and stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dg_core import ConfigError, Source, Step, Trajectory, write_trajectories
from dg_replay import HashingEncoder, ReplayBuffer, content_hash

from .conftest import make_steps, make_task


def test_exact_duplicates_are_stored_once() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(32))
    task = make_task()
    steps = make_steps(10)
    first = buffer.add(steps, "real", task=task)
    assert first.duplicates == 0
    assert first.keys == list(range(1, 11))
    again = buffer.add([*steps[:3], *steps[:3]], "real", task=task)
    assert again.duplicates == 6
    assert again.keys == [None] * 6
    assert len(buffer) == 10
    assert len(buffer.index) == 10


def test_what_counts_as_a_duplicate() -> None:
    task = make_task()
    step = make_steps(1)[0]
    slower = step.model_copy(update={"duration_s": 3.5})
    assert content_hash(task, step) == content_hash(task, slower)  # timing is noise
    assert content_hash(task, step) != content_hash(make_task("other"), step)
    synthetic = Step.model_validate({**step.model_dump(), "source": "synthetic"})
    assert content_hash(task, step) != content_hash(task, synthetic)
    rewarded = Step.model_validate({**step.model_dump(), "reward": 1.0})
    assert content_hash(task, step) != content_hash(task, rewarded)
    buffer = ReplayBuffer(encoder=HashingEncoder(32))
    buffer.add([step], "real", task=task)
    assert buffer.add([slower], "real", task=task).duplicates == 1
    assert buffer.add([synthetic], "synthetic", task=task).duplicates == 0


def test_a_step_from_another_source_is_refused() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(32))
    with pytest.raises(ConfigError, match=r"steps\[0\]\.source is 'real' but add\(\) was given 'synthetic'"):
        buffer.add(make_steps(2), "synthetic", task=make_task())
    assert len(buffer) == 0


def test_precomputed_embeddings_must_fit() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(32))
    with pytest.raises(ConfigError, match="2 embeddings for 3 steps"):
        buffer.add(make_steps(3), "real", task=make_task(), embeddings=np.ones((2, 32)))
    assert len(buffer) == 0


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_seeding_from_trajectory_files(tmp_path: Path, suffix: str) -> None:
    trajectories = [
        Trajectory(
            id=f"episode-{index}",
            task=make_task(f"t{index}"),
            steps=tuple(make_steps(5, prefix=f"r{index}")),
            success=False,
            **{"return": 2.0},
        )
        for index in range(4)
    ]
    path = tmp_path / f"expert{suffix}"
    write_trajectories(path, trajectories)
    buffer = ReplayBuffer(encoder=HashingEncoder(32))
    result = buffer.add_trajectories([path], batch_size=7)
    assert sum(key is not None for key in result.keys) == 20
    assert buffer.add_trajectories([path]).duplicates == 20
    stored = buffer.get([1, 20])
    assert stored[0].trajectory_id == "episode-0"
    assert stored[1].trajectory_id == "episode-3"
    assert stored[1].step == trajectories[3].steps[4]
    assert buffer.storage.task("scripted", "t2") == trajectories[2].task


def test_sampling_respects_filters_and_the_seed() -> None:
    def build() -> ReplayBuffer:
        buffer = ReplayBuffer(encoder=HashingEncoder(32), seed=11)
        buffer.add(make_steps(50), "real", task=make_task("a"))
        buffer.add(make_steps(50, source=Source.SYNTHETIC), "synthetic", task=make_task("b", split="test"))
        return buffer

    first, second = build(), build()
    drawn = first.sample(20, filters={"source": "synthetic"})
    assert len({item.key for item in drawn}) == 20
    assert all(item.source == Source.SYNTHETIC and item.split == "test" for item in drawn)
    assert [item.key for item in drawn] == [item.key for item in second.sample(20, filters={"source": "synthetic"})]
    assert len(first.sample(500)) == 100


def test_stats_count_by_source_env_and_split() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(32))
    buffer.add(make_steps(4), "real", task=make_task("a", env_id="alfworld"))
    buffer.add(make_steps(3, source=Source.SYNTHETIC), "synthetic", task=make_task("b", split=None))
    stats = buffer.stats()
    assert stats.total == 7
    assert stats.indexed == 7
    assert stats.by_source == {"real": 4, "synthetic": 3}
    assert stats.by_env == {"alfworld": 4, "scripted": 3}
    assert stats.by_split == {"train": 4, "None": 3}
    assert (stats.encoder, stats.dim) == ("hashing-32", 32)


def test_remove_keeps_storage_and_index_consistent() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(32))
    buffer.add(make_steps(10), "real", task=make_task())
    assert buffer.remove([2, 3, 99]) == 2
    assert sorted(buffer.index.keys().tolist()) == buffer.storage.keys().tolist() == [1, 4, 5, 6, 7, 8, 9, 10]
    assert all(hit.key not in (2, 3) for hit in buffer.retrieve(["room 2: a door"], k=8)[0])


def test_remove_after_cuts_back_to_a_recorded_key(tmp_path: Path) -> None:
    """What a resumed training run does: drop the synthetic rows stored after its checkpoint's key."""
    buffer = ReplayBuffer.create(tmp_path / "replay", encoder=HashingEncoder(32))
    buffer.add(make_steps(5), "real", task=make_task())
    buffer.add(make_steps(3, source=Source.SYNTHETIC, prefix="syn"), "synthetic", task=make_task())
    cut = buffer.last_key
    assert cut == 8
    buffer.save()
    buffer.add(make_steps(4, source=Source.SYNTHETIC, prefix="late"), "synthetic", task=make_task())
    buffer.add(make_steps(2, prefix="late real"), "real", task=make_task("t1"))
    buffer.close()
    reopened = ReplayBuffer.open(tmp_path / "replay", encoder=HashingEncoder(32))
    assert reopened.remove_after(cut, {"source": "synthetic"}) == 4
    assert reopened.stats().by_source == {"real": 7, "synthetic": 3}
    assert sorted(reopened.index.keys().tolist()) == reopened.storage.keys().tolist()
    assert reopened.remove_after(cut) == 2 and len(reopened) == 8
    assert reopened.remove_after(reopened.last_key) == 0
    reopened.close()


def test_transitions_are_read_back_in_order_with_their_tasks(tmp_path: Path) -> None:
    buffer = ReplayBuffer.create(tmp_path / "replay", encoder=HashingEncoder(32))
    buffer.add(make_steps(5), "real", task=make_task("a"))
    buffer.add(make_steps(3, source=Source.SYNTHETIC, prefix="syn"), "synthetic", task=make_task("b", split="test"))
    buffer.add(make_steps(2, prefix="late"), "real", task=make_task("c", env_id="alfworld"))
    buffer.remove([2])
    every = list(buffer.transitions(batch_size=2))  # batches smaller than the buffer
    assert [t.key for t in every] == [1, 3, 4, 5, 6, 7, 8, 9, 10]
    assert [t.step.state.text for t in every[:2]] == [make_steps(5)[0].state.text, make_steps(5)[2].state.text]
    real = list(buffer.transitions({"source": "real"}))
    assert [(t.env_id, t.task_id) for t in real] == [("scripted", "a")] * 4 + [("alfworld", "c")] * 2
    task = buffer.task("alfworld", "c")
    assert task is not None and task == make_task("c", env_id="alfworld")
    assert buffer.task("scripted", "c") is None and buffer.task("scripted", "nowhere") is None
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(buffer.transitions(batch_size=0))
    buffer.close()
