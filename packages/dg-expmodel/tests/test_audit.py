from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dg_core import Action, ExperiencePrediction, ExperienceQuery, State, Step, Trajectory
from dg_core.testing import ScriptedExperienceModel, scripted_task
from dg_expmodel import (
    ABLATIONS,
    BinaryStats,
    LLMExperienceModel,
    PromptOptions,
    Sampling,
    TagStats,
    TransformersBackend,
    audit_experience_model,
    hallucinated_entities,
    mmd_permutation_test,
    set_f1,
    token_f1,
    transition_error,
)
from dg_replay import HashingEncoder
from tests.conftest import collect


class TaskExactRetriever:
    """Finds the real transition of the same task, state and action (exact grounding in a deterministic env)."""

    def __init__(self, trajectories: list) -> None:  # type: ignore[type-arg]
        self.table = {(t.task.id, s.state.text, s.action.text): s for t in trajectories for s in t.steps}

    def __call__(self, queries: Sequence[ExperienceQuery], k: int) -> list[list[Step]]:
        found = (self.table.get((q.task.id, q.state.text, q.action.text)) for q in queries)
        return [[step] if step is not None else [] for step in found]


def test_metrics_on_hand_computed_cases() -> None:
    assert token_f1("a b c", "a b d") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert set_f1(["go", "look"], ["go", "take"]) == pytest.approx(0.5)
    assert set_f1(None, None) == 1.0 and set_f1(None, []) == 0.0 and set_f1([], []) == 1.0
    stats = BinaryStats.of([True, True, False, False, True], [True, False, True, False, True])
    assert (stats.true_positive, stats.false_positive, stats.false_negative, stats.true_negative) == (2, 1, 1, 1)
    assert stats.accuracy == pytest.approx(0.6) and stats.precision == pytest.approx(2 / 3)
    assert stats.recall == pytest.approx(2 / 3) and stats.f1 == pytest.approx(2 / 3)


def test_mmd_separates_distributions() -> None:
    rng = np.random.default_rng(0)
    same_a, same_b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    shifted = rng.normal(loc=1.5, size=(40, 8))
    _, p_same = mmd_permutation_test(same_a, same_b, permutations=100)
    mmd_shift, p_shift = mmd_permutation_test(same_a, shifted, permutations=100)
    assert p_same > 0.05
    assert p_shift < 0.02 and mmd_shift > 0


def test_hallucinated_entities() -> None:
    query = ExperienceQuery(
        task=scripted_task("h"), state=State(text="Room 1 of 3. You see: a gold coin."), action=Action(text="go east")
    )
    prediction = ExperiencePrediction(next_state=State(text="Room 2 of 3. You see: a dragon and a gold coin."))
    assert hallucinated_entities(query, prediction) == {"dragon"}
    assert hallucinated_entities(query, prediction, real_next="A dragon sleeps here.") == set()


def test_audit_table_shows_what_retrieval_buys(tmp_path: Path) -> None:
    held_out = collect(10, offset=300)
    # The copy model is exact when retrieval finds the real transition, blind without it.
    retriever = TaskExactRetriever(collect(40) + held_out)
    report = audit_experience_model(
        ScriptedExperienceModel(),
        held_out,
        retriever=retriever,
        encoder=HashingEncoder(dim=128),
        options=PromptOptions(history_window=2, max_retrieved=2),
        output_dir=tmp_path,
        permutations=50,
        progress=False,
    )
    full, blind = report.row("full"), report.row("no_retrieval")
    steps = sum(t.num_steps for t in held_out)
    assert full.teacher_forced.steps == steps
    assert full.teacher_forced.eps_r == 0.0 and full.teacher_forced.eps_p == 0.0
    assert full.teacher_forced.exact_match == 1.0 and full.teacher_forced.success.f1 == 1.0
    assert full.teacher_forced.hallucination_rate == 0.0 and full.teacher_forced.embedding_similarity == pytest.approx(
        1.0
    )
    assert full.open_loop is not None and full.open_loop.faithful_episodes == 10
    assert blind.teacher_forced.exact_match < 0.2 and blind.teacher_forced.eps_p > 0.2
    assert blind.teacher_forced.success.recall == 0.0  # never predicts the wins it cannot see
    assert blind.teacher_forced.mmd_p_value is not None and blind.teacher_forced.mmd_p_value < 0.05
    assert blind.open_loop is not None and blind.open_loop.faithful_episodes == 0
    assert sum(blind.open_loop.first_failure.values()) == 10
    assert not report.row("no_reasoning").applied  # a scripted model has no reasoning switch
    assert [row.ablation.name for row in report.rows] == [a.name for a in ABLATIONS]
    assert "per_group" in report.as_dict()["full"]["teacher_forced"]
    for name in ("audit.json", "audit.md", "audit_open_loop.png", "audit_failures.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "audit.md").read_text().startswith("| ablation | eps_R | eps_P |")
    with pytest.raises(KeyError, match="no ablation 'nope'"):
        report.row("nope")


class TableModel:
    """Answers each (state, action) with a hand-written (reward, done), next state copied from the real one."""

    def __init__(self, answers: dict[tuple[str, str], tuple[float, bool, str]]) -> None:
        self.answers = answers

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        out = []
        for query in queries:
            reward, done, next_text = self.answers[(query.state.text, query.action.text)]
            out.append(ExperiencePrediction(next_state=State(text=next_text), reward=reward, done=done))
        return out


def _episode(name: str, outcomes: list[tuple[float, bool]]) -> Trajectory:
    steps = [
        Step(
            state=State(text=f"{name} room {i}"),
            action=Action(text="go east"),
            next_state=State(text=f"{name} room {i + 1}"),
            reward=reward,
            done=done,
            step_index=i,
        )
        for i, (reward, done) in enumerate(outcomes)
    ]
    total = sum(reward for reward, _ in outcomes)
    record = {"id": name, "task": scripted_task(name), "steps": steps, "success": total > 0, "return": total}
    return Trajectory.model_validate(record)


def test_success_and_done_precision_recall_on_a_hand_made_case(tmp_path: Path) -> None:
    # Real: a win in 3 steps, a loss at the step limit in 2, a win in 2 (2 successes, 3 episode ends).
    held_out = [
        _episode("a", [(0.0, False), (0.0, False), (1.0, True)]),
        _episode("b", [(0.0, False), (0.0, True)]),
        _episode("c", [(0.0, False), (1.0, True)]),
    ]
    predicted = {  # (reward, done): a premature win at a1, the b loss ended right, the c win not ended
        "a": [(0.0, False), (1.0, True), (1.0, True)],
        "b": [(0.0, False), (0.0, True)],
        "c": [(0.0, False), (1.0, False)],
    }
    answers = {
        (step.state.text, step.action.text): (*predicted[episode.id][step.step_index], step.next_state.text)
        for episode in held_out
        for step in episode.steps
    }
    report = audit_experience_model(
        TableModel(answers),
        held_out,
        ablations=ABLATIONS[:1],
        open_loop_episodes=0,
        output_dir=tmp_path,
        progress=False,
    )
    forced = report.row("full").teacher_forced
    # success: TP a2, FP a1, FN c1, TN the other 4; done: TP a2 b1, FP a1, FN c1, TN 3.
    assert (forced.success.true_positive, forced.success.false_positive) == (1, 1)
    assert (forced.success.false_negative, forced.success.true_negative) == (1, 4)
    assert forced.success.positives == 2
    assert forced.success.precision == 0.5 and forced.success.recall == 0.5
    assert forced.done.positives == 3
    assert forced.done.precision == pytest.approx(2 / 3) and forced.done.recall == pytest.approx(2 / 3)
    assert forced.eps_r == pytest.approx(1 / 7)  # only a1's reward is wrong
    saved = json.loads((tmp_path / "audit.json").read_text())["full"]["teacher_forced"]
    assert saved["success"]["precision"] == 0.5 and saved["success"]["recall"] == 0.5
    assert saved["success"]["positives"] == 2 and saved["done"]["positives"] == 3
    assert saved["done"]["recall"] == pytest.approx(2 / 3)
    table = (tmp_path / "audit.md").read_text().splitlines()
    assert "success P / R (positives) | done P / R (positives)" in table[0]
    assert table[2].startswith("| full | 0.143 | 0.000 | 0.500 / 0.500 (2) | 0.667 / 0.667 (3) | 1.000 |")
    # On the controlled-error simulator's scale: the model ends a1 (a premature win: a reward error), a2 and b1;
    # a1 is a premature done and c1 a missed done, the other five steps carry no transition error.
    scale = forced.simulator
    assert (scale.reward_eligible, scale.reward_errors, scale.eps_r) == (3, 1, pytest.approx(1 / 3))
    assert scale.transition_errors == {"premature_done": 1, "missed_done": 1}
    assert scale.eps_p == pytest.approx(2 / 7)
    assert saved["simulator_scale"]["eps_R"] == pytest.approx(1 / 3)
    assert saved["simulator_scale"]["transition_errors"] == {"premature_done": 1, "missed_done": 1}
    assert any(
        line.startswith("On the controlled-error simulator's scale")
        and "eps_R 0.333 (1 of 3" in line
        and "eps_P 0.286" in line
        for line in table
    )


def test_audit_of_an_untrained_llm_counts_parse_failures(tiny_model: Any, tokenizer: Any) -> None:
    held_out = collect(3, offset=700)
    model = LLMExperienceModel(
        TransformersBackend(tiny_model, tokenizer),
        options=PromptOptions(history_window=1, max_retrieved=0),
        sampling=Sampling(max_new_tokens=6),
        retries=0,
    )
    report = audit_experience_model(model, held_out, options=model.options, ablations=ABLATIONS[:3:2], progress=False)
    for row in report.rows:
        assert row.applied
        assert row.teacher_forced.parse_failure_rate == 1.0
        assert row.open_loop is not None and row.open_loop.first_failure == {"parse_failure": 3}


def test_ablations_only_take_ingredients_away(tiny_model: Any, tokenizer: Any) -> None:
    from dg_expmodel._audit import model_for

    backend = TransformersBackend(tiny_model, tokenizer)
    without = LLMExperienceModel(backend, options=PromptOptions(reasoning=False, max_retrieved=0))
    with_reasoning = LLMExperienceModel(backend, options=PromptOptions(reasoning=True, max_retrieved=0))
    full, no_reasoning = ABLATIONS[0], ABLATIONS[2]
    assert no_reasoning.name == "no_reasoning"
    # A model trained without reasoning is audited without it, in the "full" row too.
    variant, applied = model_for(without, full, without.options)
    assert applied and variant.options.reasoning is False  # type: ignore[attr-defined]
    variant, _ = model_for(with_reasoning, full, with_reasoning.options)
    assert variant.options.reasoning is True  # type: ignore[attr-defined]
    variant, _ = model_for(with_reasoning, no_reasoning, with_reasoning.options)
    assert variant.options.reasoning is False  # type: ignore[attr-defined]


class TagModel:
    """Copies the real next state's text and actions, with hand-written irreversible tags per (state, action)."""

    def __init__(self, real: list[Trajectory], tags: dict[str, tuple[str, ...]]) -> None:
        self.next_states = {(s.state.text, s.action.text): s.next_state for t in real for s in t.steps}
        self.tags = tags

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        out = []
        for query in queries:
            real = self.next_states[(query.state.text, query.action.text)]
            state = real.model_copy(update={"irreversible_actions": self.tags[query.state.text]})
            out.append(ExperiencePrediction(next_state=state, reward=0.0, done=False))
        return out


def test_irreversible_tag_precision_and_recall_on_a_hand_made_case(tmp_path: Path) -> None:
    """Issue 20 item 3: tags scored over the transitions whose real next state lists some; false alarms apart."""
    actions = ("buy", "delete", "submit", "back", "pay")
    real_tags = [("buy", "delete"), ("submit",), (), ()]
    predicted = {"s0": ("buy",), "s1": ("submit",), "s2": ("pay",), "s3": ()}
    steps = [
        Step(
            state=State(text=f"s{i}", available_actions=actions),
            action=Action(text="back"),
            next_state=State(text=f"s{i + 1}", available_actions=actions, irreversible_actions=tags),
            reward=0.0,
            done=False,
            step_index=i,
        )
        for i, tags in enumerate(real_tags)
    ]
    held_out = [Trajectory(id="shop", task=scripted_task("shop"), steps=tuple(steps), success=False, return_=0.0)]
    report = audit_experience_model(
        TagModel(held_out, predicted),
        held_out,
        ablations=ABLATIONS[:1],
        open_loop_episodes=1,
        output_dir=tmp_path,
        progress=False,
    )
    tags = report.row("full").teacher_forced.irreversible
    # Tagged transitions s0, s1: predicted {buy} + {submit}, real {buy, delete} + {submit}.
    assert (tags.transitions, tags.real_tags, tags.predicted_tags, tags.correct_tags) == (2, 3, 2, 2)
    assert tags.precision == 1.0 and tags.recall == pytest.approx(2 / 3) and tags.exact == 1
    assert (tags.false_alarms, tags.untagged, tags.false_alarm_rate) == (1, 2, 0.5)  # "pay" at s2
    saved = json.loads((tmp_path / "audit.json").read_text())["full"]["teacher_forced"]["irreversible_tags"]
    assert saved["precision"] == 1.0 and saved["recall"] == pytest.approx(2 / 3) and saved["exact_set_match"] == 0.5
    table = (tmp_path / "audit.md").read_text().splitlines()
    assert table[0].endswith("| irreversible tags P / R (transitions) |")
    assert table[2].endswith("| 1.000 / 0.667 (2) |")
    # The replayed episode diverges at its first step: the real next state tags "delete" too.
    assert report.row("full").open_loop is not None
    assert report.row("full").open_loop.first_failure == {"wrong_actions": 1}  # type: ignore[union-attr]
    untagged = TagStats.of([(), ("x",)], [(), ()])
    assert untagged.precision is None and untagged.recall is None and untagged.false_alarm_rate == 0.5


def test_transition_errors_follow_the_typology_step_by_step() -> None:
    real = Step(
        state=State(text="Kitchen\nThere is a coin and a lamp here.", available_actions=("take coin", "go east")),
        action=Action(text="go east"),
        next_state=State(
            text="Pantry\nYou see a red box here.", available_actions=("open box", "go west"), irreversible_actions=()
        ),
        reward=0.0,
        done=False,
        step_index=0,
    )
    query = ExperienceQuery(task=scripted_task("t"), history=(), state=real.state, action=real.action)

    def kind(text: str, actions: tuple[str, ...] = ("open box", "go west"), **fields: Any) -> str | None:
        options: dict[str, Any] = {"parse_ok": True, "done": False, **fields}
        state = State(text=text, available_actions=actions)
        return transition_error(options["parse_ok"], options["done"], state, real, query)

    exact = "Pantry\nYou see a red box here."
    assert kind(exact) is None
    assert kind(exact, ("open box",)) == "wrong_actions"
    assert kind(exact, parse_ok=False) == "parse_failure"
    assert kind(exact, done=True) == "premature_done"
    assert kind("Cellar\nIt is dark and damp in here, full of cobwebs.") == "wrong_place"
    assert kind("Pantry\nYou see a red box and a golden trophy and a sword here.") == "invented_object"
    assert kind("Pantry\nYou see nothing here.") == "missing_object"
    # A word of the state the agent came from is not invented: the kitchen's lamp here only leaves "red" missing.
    assert kind("Pantry\nYou see a lamp here, no box.") == "missing_object"
    # Text within token F1 0.9 of the real one (one word short of seven) with the right actions is no error.
    assert kind("Pantry\nYou see a box here.") is None
    ended = real.model_copy(update={"done": True, "reward": 1.0})
    assert transition_error(True, False, real.next_state, ended, query) == "missed_done"
