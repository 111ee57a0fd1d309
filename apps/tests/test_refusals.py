"""Issue 21: what used to end in a raw traceback, a silent NaN run or a file `read_trajectories` rejects.

Every case runs the real command in this process (``main``) and checks its exit status and its message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_apps.cli import main
from dg_apps.commands import set_aside_bad_lines
from dg_core import read_trajectories
from tests.conftest import SCRIPTED_ENV


def interrupted(run: Path) -> None:
    """Leave ``run`` as a killed process does: status ``running`` (its lock died with it)."""
    meta = json.loads((run / "run.json").read_text())
    meta["status"] = "running"
    (run / "run.json").write_text(json.dumps(meta))


# Item 5: a resumed collection repairs a file with torn lines and says so.


def test_resumed_collect_moves_torn_lines_aside_and_collects_their_episodes_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "collect"
    args = ["collect", *SCRIPTED_ENV, "--set", "policy=expert", "--output", str(run), "--no-progress"]
    assert main(args) == 0
    file = run / "trajectories.jsonl"
    lines = file.read_bytes().splitlines(keepends=True)
    total = len(lines)
    assert total >= 6
    # Three kinds of damage: a line cut short (its end of line kept), a line of JSON that is no trajectory, and
    # the last line cut mid-write by a kill (no end of line).
    cut, foreign, last = 3, 5, total
    damaged = list(lines)
    damaged[cut - 1] = lines[cut - 1][:150] + b"\n"
    damaged[foreign - 1] = b'{"not": "a trajectory"}\n'
    damaged[last - 1] = lines[last - 1][:80]
    file.write_bytes(b"".join(damaged))
    interrupted(run)
    capsys.readouterr()

    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{file}:{cut}: invalid JSON" in err
    assert f"{file}:{foreign}: not a trajectory (field 'schema_version')" in err
    assert f"{file}:{last}: torn: the last line stops after 80 bytes without an end of line" in err
    torn = file.with_name("trajectories.jsonl.torn")
    assert f"3 unreadable line(s) of {file} moved to {torn}" in err
    # Nothing lost: the bad lines are in the side file, byte for byte.
    assert torn.read_bytes().splitlines() == [damaged[cut - 1].strip(), damaged[foreign - 1].strip(), damaged[-1]]
    # The file reads cleanly again and holds every episode once: the three were collected again.
    episodes = list(read_trajectories(file))
    assert sorted(t.metadata["collection"]["episode"] for t in episodes) == list(range(total))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dropped_lines"] == 3 and metrics["new_episodes"] == 3
    assert [item["line"] for item in metrics["dropped"]] == [cut, foreign, last]
    assert metrics["torn_file"] == str(torn)
    assert "3 unreadable line(s) of the existing file" in (run / "summary.md").read_text()


def test_a_whole_last_line_without_its_end_of_line_is_kept(tmp_path: Path, expert_data: Path) -> None:
    file = tmp_path / "t.jsonl"
    lines = expert_data.read_bytes().splitlines()[:3]
    file.write_bytes(b"\n".join(lines))  # the last record is whole; only its newline is missing
    assert set_aside_bad_lines(file) == []
    assert file.read_bytes() == b"\n".join(lines) + b"\n"
    assert len(list(read_trajectories(file))) == 3
    assert not file.with_name("t.jsonl.torn").exists()
    assert set_aside_bad_lines(file) == []  # a clean file is left alone
