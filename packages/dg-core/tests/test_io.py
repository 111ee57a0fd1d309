from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from dg_core import (
    ConfigError,
    MissingExtraError,
    TornTailError,
    TrajectoryFormatError,
    TrajectoryWriter,
    UnsupportedSchemaVersionError,
    read_trajectories,
    repair_jsonl,
    require,
    write_trajectories,
)
from tests.conftest import make_trajectory


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_of_10k_steps(tmp_path: Path, suffix: str) -> None:
    trajectories = [make_trajectory(i, num_steps=10, success=i % 3 == 0) for i in range(1000)]
    path = tmp_path / f"data{suffix}"
    assert write_trajectories(path, trajectories) == 1000
    back = list(read_trajectories(path))
    assert back == trajectories
    assert sum(t.num_steps for t in back) == 10_000
    assert not (tmp_path / f"data{suffix}.partial").exists()


def test_parquet_has_filterable_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    write_trajectories(path, [make_trajectory(i, success=i == 1) for i in range(3)])
    table = pq.read_table(path, columns=["trajectory_id", "success", "num_steps", "env_id"])
    assert table.column("trajectory_id").to_pylist() == ["traj-0", "traj-1", "traj-2"]
    assert table.column("success").to_pylist() == [False, True, False]
    assert table.column("env_id").to_pylist() == ["scripted"] * 3


def test_empty_files_round_trip(tmp_path: Path) -> None:
    for name in ("e.jsonl", "e.parquet"):
        write_trajectories(tmp_path / name, [])
        assert list(read_trajectories(tmp_path / name)) == []


def test_reading_streams(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_trajectories(path, [make_trajectory(i) for i in range(3)])
    with path.open("a") as handle:
        handle.write("not json\n")
    stream = read_trajectories(path)
    assert next(stream).id == "traj-0"  # records before the bad line are delivered
    assert next(stream).id == "traj-1"
    assert next(stream).id == "traj-2"
    with pytest.raises(TrajectoryFormatError, match=r"d\.jsonl:4: invalid JSON"):
        next(stream)


def _write_lines(path: Path, records: list[object]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_malformed_field_names_file_line_and_field(tmp_path: Path) -> None:
    good = make_trajectory(0).model_dump(mode="json", by_alias=True)
    bad = json.loads(json.dumps(good))
    bad["steps"][1]["reward"] = "lots"
    path = tmp_path / "bad.jsonl"
    _write_lines(path, [good, good, bad])
    with pytest.raises(TrajectoryFormatError) as caught:
        list(read_trajectories(path))
    error = caught.value
    assert error.path == path and error.line == 3 and error.field == "steps.1.reward"
    assert str(error).startswith(f"{path}:3 (field 'steps.1.reward'): ")


def test_missing_field_and_non_object(tmp_path: Path) -> None:
    good = make_trajectory(0).model_dump(mode="json", by_alias=True)
    del good["success"]
    path = tmp_path / "bad.jsonl"
    _write_lines(path, [good])
    with pytest.raises(TrajectoryFormatError, match=r"bad\.jsonl:1 \(field 'success'\): Field required"):
        list(read_trajectories(path))
    _write_lines(path, [[1, 2]])
    with pytest.raises(TrajectoryFormatError, match="expected a JSON object, got list"):
        list(read_trajectories(path))
    _write_lines(path, [{"id": "x"}])
    with pytest.raises(TrajectoryFormatError, match=r"\(field 'schema_version'\): missing"):
        list(read_trajectories(path))


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    record = make_trajectory(0).model_dump(mode="json", by_alias=True)
    record["schema_version"] = 99
    path = tmp_path / "future.jsonl"
    _write_lines(path, [record])
    with pytest.raises(
        UnsupportedSchemaVersionError, match=r"future\.jsonl:1 .*schema_version 99; this dg-core reads \[1\]"
    ):
        list(read_trajectories(path))


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path: Path) -> None:
    good = make_trajectory(0).model_dump(mode="json", by_alias=True)
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(good) + "\n\n   \n" + "{oops\n")
    with pytest.raises(TrajectoryFormatError) as caught:
        list(read_trajectories(path))
    assert caught.value.line == 4


def test_non_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(TrajectoryFormatError, match=r"binary\.jsonl:1"):
        list(read_trajectories(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no trajectory file"):
        read_trajectories(tmp_path / "nope.jsonl")


def _write_then_crash(path: Path) -> None:
    with TrajectoryWriter(path) as writer:
        writer.write(make_trajectory(0))
        writer.write(make_trajectory(1))
        raise RuntimeError("collector crashed")


def test_failed_write_keeps_partial_and_leaves_target(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    write_trajectories(path, [make_trajectory(100)])
    with pytest.raises(RuntimeError, match="collector crashed"):
        _write_then_crash(path)
    assert [t.id for t in read_trajectories(path)] == ["traj-100"]  # previous file intact
    partial = tmp_path / "run.jsonl.partial"
    assert [t.id for t in read_trajectories(partial)] == ["traj-0", "traj-1"]  # nothing lost


def test_append_mode_adds_lines(tmp_path: Path) -> None:
    path = tmp_path / "grow.jsonl"
    write_trajectories(path, [make_trajectory(0)])
    write_trajectories(path, [make_trajectory(1), make_trajectory(2)], append=True)
    assert [t.id for t in read_trajectories(path)] == ["traj-0", "traj-1", "traj-2"]
    with pytest.raises(ConfigError, match="only supported for JSONL"):
        TrajectoryWriter(tmp_path / "x.parquet", append=True)


def test_torn_tail_is_reported_skipped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    write_trajectories(path, [make_trajectory(0), make_trajectory(1)])
    full = path.read_bytes()
    line = make_trajectory(2).model_dump_json(by_alias=True).encode()
    path.write_bytes(full + line[:50])  # the writer was killed mid-line
    with pytest.raises(TornTailError, match=r"torn\.jsonl:3: the last line has no newline") as caught:
        list(read_trajectories(path))
    assert caught.value.offset == len(full)
    assert [t.id for t in read_trajectories(path, torn_tail="skip")] == ["traj-0", "traj-1"]
    with pytest.raises(TornTailError):
        TrajectoryWriter(path, append=True)
    assert repair_jsonl(path) == 50
    assert path.read_bytes() == full
    assert (tmp_path / "torn.jsonl.torn").read_bytes() == line[:50] + b"\n"
    assert repair_jsonl(path) == 0
    write_trajectories(path, [make_trajectory(3)], append=True)
    assert [t.id for t in read_trajectories(path)] == ["traj-0", "traj-1", "traj-3"]


def _append_many(path: str, start: int) -> None:
    with TrajectoryWriter(path, append=True) as writer:
        for i in range(start, start + 200):
            writer.write(make_trajectory(i, num_steps=2))


def test_concurrent_appenders_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    path.touch()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), k * 1000)) for k in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    ids = sorted(int(t.id.removeprefix("traj-")) for t in read_trajectories(path))
    assert ids == sorted(k * 1000 + i for k in range(3) for i in range(200))


def test_corrupt_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(TrajectoryFormatError, match=r"broken\.parquet:0: not a readable Parquet file"):
        list(read_trajectories(path))


def test_parquet_bad_record_names_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = make_trajectory(0).model_dump_json(by_alias=True)
    bad = json.loads(good)
    bad["steps"][0]["done"] = "maybe"
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"record": [good, json.dumps(bad)]}), path)
    with pytest.raises(TrajectoryFormatError, match=r"rows\.parquet:2 \(field 'steps\.0\.done'\)"):
        list(read_trajectories(path))
    pq.write_table(pa.table({"other": [1]}), path)
    with pytest.raises(TrajectoryFormatError, match="no 'record' column"):
        list(read_trajectories(path))


def test_writer_refuses_non_trajectories_and_closed_use(tmp_path: Path) -> None:
    writer = TrajectoryWriter(tmp_path / "w.jsonl")
    with pytest.raises(TypeError, match="expected a Trajectory, got dict"):
        writer.write({"id": "x"})  # type: ignore[arg-type]
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="writer is closed"):
        writer.write(make_trajectory(0))


def test_missing_extra_names_the_install_command() -> None:
    with pytest.raises(MissingExtraError) as caught:
        require("dg_no_such_module", distribution="dg-core", extra="parquet", purpose="Parquet trajectory files")
    assert 'pip install "dg-core[parquet]"' in str(caught.value)
    assert isinstance(caught.value, ImportError)
