from __future__ import annotations

import pytest

from dg_core import (
    INVALID_ACTION_FEEDBACK,
    Action,
    BatchedEnv,
    ConfigError,
    Env,
    EnvPool,
    RandomPolicy,
    ResetNeededError,
    State,
    StepResult,
    Task,
    play_episode,
)
from dg_core.testing import EnvConformance, ScriptedEnv, ScriptedPolicy, scripted_task


class TestScriptedEnvConformance(EnvConformance):
    @pytest.fixture
    def make_env(self):  # type: ignore[no-untyped-def]
        return lambda: ScriptedEnv(max_steps=15)

    @pytest.fixture
    def tasks(self) -> list[Task]:
        return [scripted_task("a", rooms=3, seed=1), scripted_task("b", rooms=5, goal_item="red key", seed=2)]


class EchoEnv(Env):
    """Free-text env that counts hook calls; ends on 'stop'."""

    env_id = "echo"

    def __init__(self, *, max_steps: int | None = None, passes: bool = False) -> None:
        super().__init__(max_steps=max_steps)
        self.step_calls = 0
        self.closed_count = 0
        self.passes_invalid_actions = passes  # type: ignore[misc]

    def _reset(self, task: Task, seed: int | None) -> State:
        return State(text=f"start {seed}", available_actions=("say", "stop"))

    def _step(self, action: Action) -> StepResult:
        self.step_calls += 1
        if action.text == "stop":
            return StepResult(state=State(text="stopped", available_actions=()), reward=1.0, done=True)
        return StepResult(state=State(text=f"heard {action.text}", available_actions=("say", "stop")), reward=0.25)

    def _close(self) -> None:
        self.closed_count += 1


def echo_task() -> Task:
    return Task(id="e", env_id="echo", instruction="talk")


def test_invalid_action_default_does_not_reach_the_adapter() -> None:
    env = EchoEnv()
    env.reset(echo_task())
    result = env.step("dance")
    assert env.step_calls == 0
    assert result.reward == 0.0 and not result.done
    assert result.state.text == "start None"
    assert result.info == {"invalid_action": True, "feedback": INVALID_ACTION_FEEDBACK, "attempted": "dance"}
    env.step("stop")
    trajectory = env.trajectory()
    assert trajectory.metadata["invalid_actions"] == 1
    assert trajectory.success and trajectory.return_ == 1.0


def test_invalid_action_passed_through_is_flagged() -> None:
    env = EchoEnv(passes=True)
    env.reset(echo_task())
    result = env.step("dance")
    assert env.step_calls == 1
    assert result.state.text == "heard dance"
    assert result.info["invalid_action"] is True


def test_pass_through_adapter_may_accept_unlisted_actions() -> None:
    class Grammar(EchoEnv):
        def _step(self, action: Action) -> StepResult:
            result = super()._step(action)
            accepted = action.text.startswith("say ")  # the listed actions are suggestions of a larger grammar
            return result.model_copy(update={"info": {"invalid_action": not accepted}})

    env = Grammar(passes=True)
    env.reset(echo_task())
    assert env.step("say hello").info["invalid_action"] is False
    assert env.step("dance").info["invalid_action"] is True


def test_step_limit_truncates_as_failure() -> None:
    env = EchoEnv(max_steps=3)
    env.reset(echo_task(), seed=5)
    results = [env.step("say") for _ in range(3)]
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].truncated and results[-1].info["truncated"] is True
    assert results[-1].success is False
    trajectory = env.trajectory()
    assert trajectory.finished and not trajectory.success
    assert trajectory.return_ == pytest.approx(0.75)
    assert trajectory.metadata["seed"] == 5 and trajectory.metadata["max_steps"] == 3
    with pytest.raises(ResetNeededError, match="call reset"):
        env.step("say")


def test_reasoning_is_recorded_on_the_step() -> None:
    class Explaining(EchoEnv):
        def _step(self, action: Action) -> StepResult:
            return super()._step(action).model_copy(update={"reasoning": f"because {action.text}"})

    env = Explaining()
    env.reset(echo_task())
    assert env.step("say").reasoning == "because say"
    assert env.trajectory().steps[0].reasoning == "because say"


def test_success_defaults_to_positive_final_reward() -> None:
    env = EchoEnv()
    env.reset(echo_task())
    result = env.step("stop")
    assert result.success is True
    assert env.trajectory().success


def test_bad_max_steps_and_hook_return_types() -> None:
    with pytest.raises(ConfigError, match="max_steps must be a positive integer"):
        EchoEnv(max_steps=0)

    class Broken(EchoEnv):
        def _step(self, action: Action) -> StepResult:
            return "oops"  # type: ignore[return-value]

    env = Broken()
    env.reset(echo_task())
    with pytest.raises(TypeError, match="_step returned str, expected StepResult"):
        env.step("say")


def test_context_manager_closes_once() -> None:
    with EchoEnv() as env:
        env.reset(echo_task())
    assert env.closed and env.closed_count == 1
    env.close()
    assert env.closed_count == 1


def test_expert_wins_every_scripted_task() -> None:
    env = ScriptedEnv(max_steps=30)
    for index in range(30):
        task = scripted_task(f"t{index}", rooms=2 + index % 8, goal_item="blue gem", seed=index)
        trajectory = play_episode(env, ScriptedPolicy(lambda _request: env.expert_action(), policy_id="expert"), task)
        assert trajectory.success and trajectory.return_ == 1.0
        assert trajectory.policy_id == "expert"
        assert trajectory.steps[-1].next_state.info == {"won": True}


def test_random_policy_is_seeded_and_sometimes_fails() -> None:
    env = ScriptedEnv(max_steps=20)
    task = scripted_task("r", rooms=4, seed=3)
    first = [play_episode(env, RandomPolicy(seed=s), task).success for s in range(40)]
    second = [play_episode(env, RandomPolicy(seed=s), task).success for s in range(40)]
    assert first == second
    assert 0 < sum(first) < 40


def test_history_and_named_random_policy() -> None:
    env = ScriptedEnv()
    trajectory = play_episode(env, RandomPolicy(seed=3, policy_id="random"), scripted_task("h", seed=1))
    assert env.history == trajectory.steps
    assert trajectory.policy_id == "random" and RandomPolicy(seed=3).policy_id == "random-3"


def test_play_episode_step_cap() -> None:
    env = EchoEnv()
    trajectory = play_episode(env, ScriptedPolicy(["say"]), echo_task(), max_steps=4)
    assert trajectory.num_steps == 4 and not trajectory.finished
    with pytest.raises(ConfigError):
        play_episode(env, ScriptedPolicy(["say"]), echo_task(), max_steps=0)


def test_scripted_env_rejects_bad_task_config() -> None:
    env = ScriptedEnv()
    with pytest.raises(ConfigError, match=r"config\['rooms'\] must be an integer in 2..20, got 1"):
        env.reset(scripted_task("x", rooms=1))
    bad_goal = Task(id="x", env_id="scripted", instruction="?", config={"goal_item": "unicorn"})
    with pytest.raises(ConfigError, match="goal_item"):
        env.reset(bad_goal)


class CountingBatch(BatchedEnv):
    """Natively batched env: each episode counts up; 'stop' ends it."""

    env_id = "echo"

    def __init__(self) -> None:
        super().__init__(max_steps=4)
        self.batch_sizes: list[int] = []

    def _reset_batch(self, tasks: list[Task], seeds: list[int | None]) -> list[State]:
        self.counts = [0] * len(tasks)
        return [State(text="0", available_actions=("up", "stop")) for _ in tasks]

    def _step_batch(self, indices: list[int], actions: list[Action]) -> list[StepResult]:
        self.batch_sizes.append(len(indices))
        out = []
        for index, action in zip(indices, actions, strict=True):
            if action.text == "stop":
                out.append(StepResult(state=State(text="end", available_actions=()), reward=1.0, done=True))
            else:
                self.counts[index] += 1
                out.append(StepResult(state=State(text=str(self.counts[index]), available_actions=("up", "stop"))))
        return out


def test_batched_env_validates_and_records() -> None:
    env = CountingBatch()
    with pytest.raises(ResetNeededError):
        env.step(["up"])
    with pytest.raises(ConfigError, match="at least one task"):
        env.reset([])
    with pytest.raises(ConfigError, match="2 tasks but 1 seeds"):
        env.reset([echo_task(), echo_task()], seeds=[1])
    env.reset([echo_task(), echo_task(), echo_task()])
    with pytest.raises(ConfigError, match="got 2 actions for 3 episodes"):
        env.step(["up", "up"])
    with pytest.raises(ConfigError, match="episode 1 is still running"):
        env.step(["up", None, "up"])
    results = env.step(["stop", "jump", "up"])
    assert env.batch_sizes == [2]  # the invalid action never reached the hook
    assert results[0] is not None and results[0].done and results[0].success
    assert results[1] is not None and results[1].info["invalid_action"] is True
    assert env.dones == [True, False, False]
    with pytest.raises(ResetNeededError):
        env.step(["up", "up", "up"])
    for _ in range(3):
        env.step([None, "up", "up"])
    assert env.all_done  # max_steps=4 truncates the two others
    trajectories = env.trajectories(policy_id="p")
    assert env.history(0) == trajectories[0].steps and env.task_of(2) == echo_task()
    assert [t.num_steps for t in trajectories] == [1, 4, 4]
    assert [t.success for t in trajectories] == [True, False, False]
    assert trajectories[2].steps[-1].truncated
    assert trajectories[2].steps[-1].next_state.text == "4"
    env.close()
    env.close()


def test_threaded_pool_matches_serial_pool() -> None:
    tasks = [scripted_task(f"p{i}", rooms=3 + i % 3, seed=i) for i in range(6)]
    outcomes = []
    for workers in (1, 3):
        pool = EnvPool(lambda: ScriptedEnv(max_steps=10), workers=workers)
        pool.reset(tasks, seeds=list(range(6)))
        policy = RandomPolicy(seed=11)
        from dg_core import PolicyRequest

        while not pool.all_done:
            requests = [PolicyRequest(task=t, state=s) for t, s in zip(tasks, pool.states, strict=True)]
            chosen = policy.act(requests)
            pool.step([None if done else a for a, done in zip(chosen, pool.dones, strict=True)])
        outcomes.append([(t.success, [s.action.text for s in t.steps]) for t in pool.trajectories()])
        pool.close()
    assert outcomes[0] == outcomes[1]


def test_pool_rejects_bad_worker_count() -> None:
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        EnvPool(ScriptedEnv, workers=0)
