"""MiniWoBEnv on real Chromium: conformance, the scripted expert, abstract states, crash recovery."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from dg_core import ConfigError, Task, play_episode
from dg_core.testing import EnvConformance
from dg_envs.web import EXPERT_TASKS, MiniWoBEnv, MiniWoBExpert, browser_processes, miniwob_task

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def env() -> Iterator[MiniWoBEnv]:
    """One browser for the module's non-conformance tests (MiniWoB switches tasks in place)."""
    miniwob_env = MiniWoBEnv(max_steps=6)
    yield miniwob_env
    miniwob_env.close()


class TestMiniWoBConformance(EnvConformance):
    @pytest.fixture
    def make_env(self) -> Callable[[], MiniWoBEnv]:
        return lambda: MiniWoBEnv(max_steps=6)

    @pytest.fixture
    def tasks(self) -> list[Task]:
        return [miniwob_task("enter-text"), miniwob_task("click-button")]


@pytest.mark.parametrize("task_name", EXPERT_TASKS)
def test_expert_solves_its_tasks(env: MiniWoBEnv, task_name: str) -> None:
    expert = MiniWoBExpert()
    for seed in (0, 1):
        trajectory = play_episode(env, expert, miniwob_task(task_name), seed=seed)
        assert trajectory.success, [step.action.text for step in trajectory.steps]
        assert trajectory.return_ == 1.0
        assert trajectory.steps[-1].info["miniwob_reward"] > 0


def test_state_lists_utterance_elements_and_typed_fields(env: MiniWoBEnv) -> None:
    state = env.reset(miniwob_task("login-user"), seed=0)
    lines = state.text.splitlines()
    assert lines[0] == 'Task: Enter the username "karrie" and the password "AU" into the text fields and press login.'
    assert "[7] input_text value='' #username" in lines
    assert "[10] input_password value='' #password" in lines
    assert any(line.startswith("[11] button 'Login' #subbtn") for line in lines)
    assert state.info["fields"] == {"username": "karrie", "password": "AU"}
    assert state.available_actions is not None
    assert {'fill("7", "karrie")', 'fill("10", "AU")', 'click("11")'} <= set(state.available_actions)
    assert state.irreversible_actions == ()
    submit_state = env.reset(miniwob_task("enter-text"), seed=0)
    assert submit_state.irreversible_actions == ('click("6")',)
    typed = env.step('fill("5", "Agustina")').state
    assert "[5] input_text value='Agustina' #tt focused" in typed.text


def test_wrong_answer_is_a_failure(env: MiniWoBEnv) -> None:
    state = env.reset(miniwob_task("click-button"), seed=0)
    target = state.info["fields"]["target"]
    wrong = next(line for line in state.text.splitlines() if " button " in line and f"'{target}'" not in line)
    result = env.step(f'click("{wrong.split("]")[0][1:]}")')
    assert result.done and result.success is False and result.reward == 0.0
    assert result.info["miniwob_reward"] < 0
    assert result.state.text.endswith("The task failed.")


def test_unknown_task_and_bad_config(env: MiniWoBEnv) -> None:
    with pytest.raises(ConfigError, match="unknown MiniWoB\\+\\+ task 'no-such-task'"):
        env.reset(miniwob_task("no-such-task"))
    with pytest.raises(ConfigError, match="config needs 'task_name'"):
        env.reset(Task(id="x", env_id="miniwob", instruction="?"))
    with pytest.raises(ConfigError, match="knows"):
        MiniWoBExpert.next_action("tic-tac-toe", env.reset(miniwob_task("click-test"), seed=0))


def test_browser_killed_mid_episode_fails_the_episode_and_recovers(no_leftover_browsers: None) -> None:
    env = MiniWoBEnv(max_steps=6)
    expert = MiniWoBExpert()
    try:
        task = miniwob_task("enter-text")
        state = env.reset(task, seed=0)
        pids = env.browser_pids
        assert len(pids) == 1  # chromedriver, which started Chromium
        for pid in [*pids, *browser_processes(pids[0])]:
            os.kill(pid, signal.SIGKILL)
        result = env.step(expert.next_action("enter-text", state))
        assert result.done and result.success is False and result.reward == 0.0
        assert "browser_crashed" in result.info
        assert env.browser_restarts == 1
        assert play_episode(env, expert, task, seed=1).success  # a fresh browser
    finally:
        env.close()
    assert env.browser_pids == []


def test_hung_browser_is_killed_after_the_step_timeout(no_leftover_browsers: None) -> None:
    env = MiniWoBEnv(max_steps=6, step_timeout_s=3.0)
    try:
        state = env.reset(miniwob_task("click-test"), seed=0)
        for pid in browser_processes(env.browser_pids[0]):
            os.kill(pid, signal.SIGSTOP)
        result = env.step(MiniWoBExpert.next_action("click-test", state))
        assert result.done and result.success is False
        assert "no answer from the browser within 3 s" in str(result.info["browser_crashed"])
        assert play_episode(env, MiniWoBExpert(), miniwob_task("click-test"), seed=0).success
    finally:
        env.close()
