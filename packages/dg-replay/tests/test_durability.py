"""Snapshots, reopening, killed saves, corrupted and mismatched files, and readers beside a writer."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dg_core import ConfigError, Source
from dg_replay import (
    MANIFEST_NAME,
    STORAGE_NAME,
    HashingEncoder,
    ReplayBuffer,
    ReplayError,
    ReplayFileError,
    ReplayMismatchError,
    ReplayReadOnlyError,
)

from .conftest import make_steps, make_task

WORKERS = Path(__file__).parent / "_workers.py"
QUERY = "Task: find the key in t0\nState: room 3: a door and a chest\nAction: open door 3"


def saved_buffer(directory: Path, count: int = 50) -> ReplayBuffer:
    buffer = ReplayBuffer.create(directory, encoder=HashingEncoder(64))
    buffer.add(make_steps(count), "real", task=make_task())
    buffer.save()
    return buffer


def top_keys(buffer: ReplayBuffer, k: int = 5) -> list[int]:
    return [hit.key for hit in buffer.retrieve([QUERY], k=k)[0]]


def top_hits(buffer: ReplayBuffer, k: int = 5) -> list[tuple[float, int]]:
    """(score, key) best first, keys ordered within equal scores (the hashing encoder makes ties)."""
    return sorted((-round(hit.score, 3), hit.key) for hit in buffer.retrieve([QUERY], k=k)[0])


def test_reopen_writable_and_read_only_gives_the_same_answers(tmp_path: Path) -> None:
    buffer = saved_buffer(tmp_path / "b")
    expected = top_keys(buffer)
    buffer.close()
    with ReplayBuffer.open(tmp_path / "b") as writer:
        assert top_keys(writer) == expected
        assert not writer.index.read_only
    with ReplayBuffer.open(tmp_path / "b", read_only=True) as reader:
        assert reader.index.read_only  # memory-mapped view
        assert top_keys(reader) == expected
        with pytest.raises(ReplayReadOnlyError):
            reader.add(make_steps(1), "real", task=make_task())
        with pytest.raises(ReplayReadOnlyError):
            reader.save()


def test_rows_changed_after_the_snapshot_are_seen_by_readers_and_caught_up_by_writers(tmp_path: Path) -> None:
    writer = saved_buffer(tmp_path / "b")
    reader = ReplayBuffer.open(tmp_path / "b", read_only=True)
    writer.add(make_steps(5, prefix="attic"), "real", task=make_task("later"))
    writer.remove([4])  # room 3's step, in the snapshot
    hits = reader.retrieve(
        ["Task: find the key in later\nState: attic 2: a door and a chest\nAction: open door 2"], k=3
    )[0]
    assert hits[0].transition.task_id == "later"
    assert 4 not in top_keys(reader, k=50)
    assert len(reader) == 54
    writer.close()
    with ReplayBuffer.open(tmp_path / "b") as reopened:  # no save since: the index catches up from storage
        assert sorted(reopened.index.keys().tolist()) == reopened.storage.keys().tolist()
        assert 4 not in reopened.index
        assert len(reopened.index) == 54
    reader.close()


def test_a_buffer_never_saved_rebuilds_its_index_from_storage(tmp_path: Path) -> None:
    buffer = ReplayBuffer.create(tmp_path / "b", encoder=HashingEncoder(64))
    buffer.add(make_steps(20), "real", task=make_task())
    expected = top_hits(buffer, k=1)
    buffer.close()
    assert not (tmp_path / "b" / MANIFEST_NAME).exists()
    with ReplayBuffer.open(tmp_path / "b") as reopened:
        assert top_hits(reopened, k=1) == expected
        assert len(reopened.index) == 20
    with ReplayBuffer.open(tmp_path / "b", read_only=True) as reader:
        assert top_hits(reader, k=1) == expected


@pytest.mark.parametrize("delay_s", [0.0, 0.002, 0.01])
def test_a_save_killed_midway_leaves_the_previous_snapshot_loadable(tmp_path: Path, delay_s: float) -> None:
    directory = tmp_path / "b"
    child = subprocess.Popen(
        [sys.executable, str(WORKERS), "save-loop", str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    saved: list[int] = []
    in_progress = 0
    try:
        for line in child.stdout:
            word, count = line.split()
            if word == "saved":
                saved.append(int(count))
            elif len(saved) >= 2:
                in_progress = int(count)
                time.sleep(delay_s)
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with ReplayBuffer.open(directory, read_only=True) as reader:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
        assert manifest["count"] in (saved[-1], in_progress)
        assert len(reader) == in_progress  # every add committed before the save began
        assert len(reader.retrieve(["open chest 3"], k=10)[0]) == 10
    with ReplayBuffer.open(directory) as writer:
        assert len(writer.index) == in_progress
        writer.save()
    assert not list(directory.glob("*.partial"))
    assert len(list(directory.glob("index-*.usearch"))) == 1


def test_leftovers_of_a_killed_save_are_ignored_and_then_removed(tmp_path: Path) -> None:
    saved_buffer(tmp_path / "b").close()
    (tmp_path / "b" / "index-999.usearch.partial").write_bytes(b"\x00" * 100)
    (tmp_path / "b" / f"{MANIFEST_NAME}.partial").write_text("{ torn")
    with ReplayBuffer.open(tmp_path / "b") as buffer:
        assert len(top_keys(buffer)) == 5
        buffer.save()
    assert sorted(path.name for path in (tmp_path / "b").glob("*.partial")) == []


def test_corrupted_manifest_names_the_file(tmp_path: Path) -> None:
    saved_buffer(tmp_path / "b").close()
    (tmp_path / "b" / MANIFEST_NAME).write_text('{"format": "dg-replay-snapshot", "count": "many"')
    with pytest.raises(ReplayFileError, match=r"manifest\.json: corrupted manifest"):
        ReplayBuffer.open(tmp_path / "b", read_only=True)


def test_corrupted_index_is_caught_by_size_or_checksum(tmp_path: Path) -> None:
    saved_buffer(tmp_path / "b").close()
    index_file = next((tmp_path / "b").glob("index-*.usearch"))
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(ReplayFileError, match=rf"{index_file.name}: index file checksum does not match"):
        ReplayBuffer.open(tmp_path / "b", read_only=True)
    index_file.write_bytes(bytes(data[:-100]))
    with pytest.raises(ReplayFileError, match=rf"{index_file.name}: index file has \d+ bytes"):
        ReplayBuffer.open(tmp_path / "b")
    index_file.unlink()
    with pytest.raises(ReplayFileError, match=rf"{index_file.name}: index file named by manifest.json is missing"):
        ReplayBuffer.open(tmp_path / "b")


@pytest.mark.parametrize("name", ["../outside.usearch", "/tmp/outside.usearch", "sub/index.usearch", "..", "a\\b"])
def test_manifest_cannot_name_an_index_outside_its_folder(tmp_path: Path, name: str) -> None:
    saved_buffer(tmp_path / "b").close()
    index_file = next((tmp_path / "b").glob("index-*.usearch"))
    (tmp_path / "outside.usearch").write_bytes(index_file.read_bytes())  # a valid index, size and checksum match
    manifest = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())
    (tmp_path / "b" / MANIFEST_NAME).write_text(json.dumps({**manifest, "index_file": name}))
    with pytest.raises(ReplayFileError, match=r"field 'index_file'.*plain file name inside the snapshot folder"):
        ReplayBuffer.open(tmp_path / "b", read_only=True)


def test_index_file_linking_outside_its_folder_is_refused(tmp_path: Path) -> None:
    saved_buffer(tmp_path / "b").close()
    index_file = next((tmp_path / "b").glob("index-*.usearch"))
    outside = tmp_path / "elsewhere" / index_file.name
    outside.parent.mkdir()
    index_file.rename(outside)
    index_file.symlink_to(outside)  # same bytes, so size and checksum match
    for read_only in (True, False):
        with pytest.raises(ReplayFileError, match=rf"{index_file.name}: .* links to outside the snapshot folder"):
            ReplayBuffer.open(tmp_path / "b", read_only=read_only)
    index_file.unlink()
    outside.rename(index_file)
    inside_link = tmp_path / "b" / "index-1.usearch"
    inside_link.symlink_to(index_file.name)  # a link within the folder is fine
    manifest = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())
    (tmp_path / "b" / MANIFEST_NAME).write_text(json.dumps({**manifest, "index_file": inside_link.name}))
    with ReplayBuffer.open(tmp_path / "b", read_only=True) as reader:
        assert len(top_keys(reader)) == 5


def test_corrupted_or_foreign_storage_names_the_file(tmp_path: Path) -> None:
    saved_buffer(tmp_path / "b").close()
    storage = tmp_path / "b" / STORAGE_NAME
    with sqlite3.connect(storage) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    connection.close()
    with pytest.raises(ReplayMismatchError, match=r"transitions\.sqlite: storage schema_version '99'"):
        ReplayBuffer.open(tmp_path / "b", read_only=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{storage}{suffix}").unlink(missing_ok=True)
    storage.write_bytes(b"this is not sqlite" * 500)
    with pytest.raises(ReplayFileError, match=r"transitions\.sqlite: not a dg-replay SQLite database"):
        ReplayBuffer.open(tmp_path / "b", read_only=True)
    with pytest.raises(ReplayFileError, match=r"transitions\.sqlite: no buffer here"):
        ReplayBuffer.open(tmp_path / "elsewhere")


def test_a_different_encoder_is_refused(tmp_path: Path) -> None:
    saved_buffer(tmp_path / "b").close()
    with pytest.raises(ReplayMismatchError, match="hashing-64"):
        ReplayBuffer.open(tmp_path / "b", encoder=HashingEncoder(32))
    with pytest.raises(ReplayMismatchError, match=r"manifest\.json: snapshot made with encoder 'hashing-64'"):
        ReplayBuffer.open(tmp_path / "b", encoder=HashingEncoder(32), read_only=True)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with saved_buffer(tmp_path / "b"), pytest.raises(ReplayError, match="another process has this storage open"):
        ReplayBuffer.open(tmp_path / "b")
    with pytest.raises(ReplayError, match="a buffer already exists here"):
        ReplayBuffer.create(tmp_path / "b", encoder=HashingEncoder(64))


def test_readers_in_other_processes_are_safe_while_one_writer_appends(tmp_path: Path) -> None:
    directory = tmp_path / "b"
    first = ReplayBuffer.create(directory, encoder=HashingEncoder(64))
    first.add(make_steps(30, prefix="hall"), "real", task=make_task())
    first.add(make_steps(5, source=Source.SYNTHETIC, prefix="dream"), "synthetic", task=make_task())
    first.save()
    first.close()
    writer = subprocess.Popen(
        [sys.executable, str(WORKERS), "append", str(directory), "120"], stdout=subprocess.PIPE, text=True
    )
    readers = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "read", str(directory), "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    writer_out, _ = writer.communicate(timeout=90)  # communicate() closes the pipes
    assert writer.returncode == 0
    assert json.loads(writer_out) == {"total": 35 + 120 * 25}
    for reader in readers:
        out, err = reader.communicate(timeout=90)
        assert reader.returncode == 0, err
        report = json.loads(out)
        assert report["rounds"] > 10
        assert 35 <= report["last_total"] <= 35 + 120 * 25


def test_a_reader_whose_index_is_replaced_while_it_opens_retries_the_new_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race behind a reader's FileNotFoundError under load: between reading the manifest and checksumming the
    index it names, the writer saved again and deleted that index. The reader opens the new snapshot instead."""
    import dg_replay._snapshot as snapshot

    writer = saved_buffer(tmp_path / "b", count=20)
    digest = snapshot.file_digest
    calls: list[str] = []

    def save_in_between(path: Path) -> str:
        calls.append(path.name)
        if len(calls) == 1:  # the writer's next save lands now: new index and manifest, the old index deleted
            writer.add(make_steps(10, prefix="late"), "real", task=make_task())
            writer.save()
            assert not path.exists()
        return digest(path)

    monkeypatch.setattr(snapshot, "file_digest", save_in_between)
    reader = ReplayBuffer.open(tmp_path / "b", read_only=True)
    assert len(calls) >= 2 and calls[0] != calls[-1]  # retried on the index the new manifest names
    assert reader.index is not None and len(reader.index) == 30  # the new snapshot, all 30 vectors
    reader.close()
    writer.close()


def test_an_index_deleted_under_a_reader_without_a_new_snapshot_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dg_replay._snapshot as snapshot

    saved_buffer(tmp_path / "b").close()
    digest = snapshot.file_digest

    def delete_first(path: Path) -> str:
        path.unlink()
        return digest(path)

    monkeypatch.setattr(snapshot, "file_digest", delete_first)
    with pytest.raises(ReplayFileError, match=r"index-\d+\.usearch: index file named by manifest\.json is missing"):
        ReplayBuffer.open(tmp_path / "b", read_only=True)


def test_open_can_override_the_saved_expansion_search(tmp_path: Path) -> None:
    buffer = saved_buffer(tmp_path / "b")
    assert buffer.index.expansion_search == 64  # the default the snapshot records
    expected = top_keys(buffer)
    buffer.close()
    with ReplayBuffer.open(tmp_path / "b", read_only=True, expansion_search=200) as reader:
        assert reader.index.expansion_search == 200
        assert top_keys(reader) == expected
    with ReplayBuffer.open(tmp_path / "b", expansion_search=128) as writer:
        assert writer.index.expansion_search == 128
        assert top_keys(writer) == expected
        writer.save()  # the manifest records the new width
    with ReplayBuffer.open(tmp_path / "b", read_only=True) as reader:
        assert reader.index.expansion_search == 128
        assert json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())["index_config"]["expansion_search"] == 128
    with pytest.raises(ConfigError, match="expansion_search must be an integer >= 1"):
        ReplayBuffer.open(tmp_path / "b", expansion_search=0)
    with ReplayBuffer.open(tmp_path / "b") as writer:  # the refused open took no lock
        assert writer.index.expansion_search == 128


def test_open_sets_expansion_search_on_an_index_rebuilt_from_storage(tmp_path: Path) -> None:
    buffer = ReplayBuffer.create(tmp_path / "b", encoder=HashingEncoder(64))
    buffer.add(make_steps(20), "real", task=make_task())
    buffer.close()  # never saved: open rebuilds the index
    with ReplayBuffer.open(tmp_path / "b", expansion_search=300) as reopened:
        assert reopened.index.expansion_search == 300
        assert len(reopened.index) == 20
