"""Processes the durability tests start, kill and watch: ``python _workers.py MODE DIRECTORY [ARG]``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dg_core import Action, Source, State, Step, Task
from dg_replay import HashingEncoder, ReplayBuffer

ENCODER_DIM = 64


def batch(start: int, count: int, source: Source = Source.REAL) -> list[Step]:
    return [
        Step(
            state=State(text=f"room {index} with {index % 7} chests"),
            action=Action(text=f"open chest {index % 5}"),
            next_state=State(text=f"room {index} opened"),
            reward=0.0,
            done=False,
            source=source,
            step_index=position,
        )
        for position, index in enumerate(range(start, start + count))
    ]


def task(index: int) -> Task:
    return Task(id=f"task-{index}", env_id="scripted", instruction="open every chest", split="train")


def open_writer(directory: Path) -> ReplayBuffer:
    if (directory / "transitions.sqlite").exists():
        return ReplayBuffer.open(directory, encoder=HashingEncoder(ENCODER_DIM))
    return ReplayBuffer.create(directory, encoder=HashingEncoder(ENCODER_DIM))


def save_loop(directory: Path) -> None:
    """Add and save forever, announcing each save before and after; the test kills it mid-save."""
    buffer = open_writer(directory)
    round_ = 0
    while True:
        buffer.add(batch(round_ * 2000, 2000), "real", task=task(round_))
        print(f"saving {len(buffer)}", flush=True)
        buffer.save()
        print(f"saved {len(buffer)}", flush=True)
        round_ += 1


def append(directory: Path, batches: int) -> None:
    """Append ``batches`` commits of 20 real and 5 synthetic steps, saving a snapshot every 10."""
    buffer = open_writer(directory)
    for number in range(batches):
        buffer.add(batch(10_000 + number * 20, 20), "real", task=task(number))
        buffer.add(batch(500_000 + number * 5, 5, Source.SYNTHETIC), "synthetic", task=task(number))
        if number % 10 == 9:
            buffer.save()
    print(json.dumps({"total": len(buffer)}), flush=True)


def read(directory: Path, seconds: float) -> None:
    """Query a read-only view until ``seconds`` pass, reopening every few rounds; check what it sees."""
    deadline = time.monotonic() + seconds
    rounds = 0
    last_total = 0
    buffer = ReplayBuffer.open(directory, read_only=True)
    while time.monotonic() < deadline:
        if rounds % 5 == 4:
            buffer.close()
            buffer = ReplayBuffer.open(directory, read_only=True)
        total = len(buffer)
        assert total >= last_total, (total, last_total)
        last_total = total
        hits = buffer.retrieve(
            ["Task: open every chest\nState: room 10042 with 4 chests\nAction: open chest 2"],
            k=5,
            filters={"source": "real"},
        )[0]
        assert len(hits) == 5, len(hits)
        assert all(hit.transition.source == Source.REAL for hit in hits)
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        synthetic = buffer.retrieve(["open chest"], k=3, filters={"source": "synthetic"})[0]
        assert all(hit.transition.source == Source.SYNTHETIC for hit in synthetic)
        rounds += 1
    print(json.dumps({"rounds": rounds, "last_total": last_total}), flush=True)


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "save-loop":
        save_loop(folder)
    elif mode == "append":
        append(folder, int(sys.argv[3]))
    elif mode == "read":
        read(folder, float(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
