"""``synthetic.irreversible`` (issue 20 item 3): dg train's synthetic env penalises or ends episodes on irreversible
actions. The data are scripted-corridor episodes whose states tag ``take ...`` (the wrong item loses) and ``go
east`` (a one-way door, for the test) as irreversible; the nearest experience model copies them, tags included."""

from __future__ import annotations

from pathlib import Path

import pytest

from dg_apps.cli import main
from dg_core import State, read_trajectories, write_trajectories
from dg_replay import ReplayBuffer
from tests.conftest import SCRIPTED_ENV, dg
from tests.test_commands import train_args


def _tagged(state: State) -> State:
    actions = state.available_actions or ()
    irreversible = tuple(a for a in actions if a.startswith("take ") or a == "go east")
    return state.model_copy(update={"irreversible_actions": irreversible})


@pytest.fixture(scope="module")
def tagged_data(workspace: Path, expert_data: Path, random_data: Path) -> Path:
    out = workspace / "tagged.jsonl"
    episodes = []
    for trajectory in [*read_trajectories(expert_data), *read_trajectories(random_data)]:
        steps = tuple(
            s.model_copy(update={"state": _tagged(s.state), "next_state": _tagged(s.next_state)})
            for s in trajectory.steps
        )
        episodes.append(trajectory.model_copy(update={"steps": steps}))
    write_trajectories(out, episodes)
    return out


@pytest.fixture(scope="module")
def tagged_nearest(workspace: Path, tagged_data: Path) -> Path:
    out = workspace / "expmodel-nearest-tagged"
    dg(
        "expmodel", "fit", "--set", "expmodel.model=nearest", "--set", "expmodel.top_k=4",
        "--set", f"data=[{tagged_data}]", "--output", str(out),
    )  # fmt: skip
    return out


def _synthetic_rows(run: Path) -> list[tuple[float, bool, object]]:
    with ReplayBuffer.open(run / "replay", read_only=True) as buffer:
        stored = buffer.sample(len(buffer), {"source": "synthetic"})
    return [(row.step.reward, row.step.done, row.step.info.get("irreversible")) for row in stored]


def _train(workspace: Path, nearest: Path, data: Path, name: str, *settings: str) -> tuple[dict[str, object], Path]:
    out = workspace / name
    extra = ["--set", "algorithm.steps=3", "--set", "curriculum.enabled=false", *settings]
    return dg(*train_args(nearest, data, *extra), "--output", str(out)), out


def test_penalize_charges_the_irreversible_steps_that_fail(
    workspace: Path, tagged_nearest: Path, tagged_data: Path
) -> None:
    allow, _ = _train(workspace, tagged_nearest, tagged_data, "irr-allow")
    assert allow["irreversible"]["mode"] == "allow" and allow["irreversible"]["steps"] > 0  # type: ignore[index]
    assert allow["irreversible"]["penalized"] == allow["irreversible"]["ended"] == 0  # type: ignore[index]

    metrics, out = _train(
        workspace, tagged_nearest, tagged_data, "irr-penalize",
        "--set", "synthetic.irreversible=penalize", "--set", "synthetic.irreversible_penalty=0.5",
    )  # fmt: skip
    stats = metrics["irreversible"]
    assert isinstance(stats, dict) and stats["mode"] == "penalize" and stats["steps"] > 0
    assert stats["penalized"] == stats["steps"] - stats["succeeded"] > 0 and stats["ended"] == 0
    rows = [row for row in _synthetic_rows(out) if row[2] == "penalize"]
    # A wrong take (reward 0) or a one-way door (reward 0) costs 0.5; a winning take keeps its 1.
    assert rows and {reward for reward, _, _ in rows} <= {-0.5, 1.0} and -0.5 in {r for r, _, _ in rows}
    assert "penalised" in (out / "summary.md").read_text()


def test_end_stops_episodes_at_the_first_irreversible_step(
    workspace: Path, tagged_nearest: Path, tagged_data: Path
) -> None:
    metrics, out = _train(workspace, tagged_nearest, tagged_data, "irr-end", "--set", "synthetic.irreversible=end")
    stats = metrics["irreversible"]
    assert isinstance(stats, dict) and stats["mode"] == "end" and stats["ended"] > 0 and stats["penalized"] == 0
    rows = _synthetic_rows(out)
    ended = [row for row in rows if row[2] == "end"]
    assert ended and all(done for _, done, _ in ended)  # every irreversible step ends its episode
    assert all(reward in (0.0, 1.0) for reward, _, _ in rows)


def test_bad_irreversible_settings_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["train", *SCRIPTED_ENV, "--output", str(tmp_path / "run"), "--no-progress"]
    assert main([*base, "--set", "synthetic.irreversible=forbid"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("dg: error:") and "synthetic.irreversible" in err and "penalize" in err
    assert main([*base, "--set", "synthetic.irreversible_penalty=-1"]) != 0
    assert "synthetic.irreversible_penalty" in capsys.readouterr().err
    perturbed = ["--set", "synthetic.simulator=perturbed", "--set", "synthetic.irreversible=end"]
    assert main([*base, *perturbed]) != 0
    assert "the perturbed simulator does not apply it" in capsys.readouterr().err
