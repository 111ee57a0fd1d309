"""Per-field next-state fidelity: fields read from states, determined vs revealing transitions, the scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_core import Action, ExperiencePrediction, ExperienceQuery, State, Step, Task, Trajectory
from dg_expmodel import (
    FIELD_TARGETS,
    NEXT_STATE_FIELDS,
    FieldFidelity,
    NearestExperienceModel,
    PromptOptions,
    audit_experience_model,
    failure_prediction,
    revealed_fields,
    state_fields,
    transition_class,
)
from dg_expmodel._audit import teacher_forced
from tests.test_audit import TaskExactRetriever

TASK = Task(id="tw-hand", env_id="textworld", instruction="Find the key and take it.")
BEDROOM_ACTIONS = ("open chest", "examine lamp", "go north", "look")
BEDROOM = State(
    text="You are in a bedroom.\nRoom: Bedroom\nVisible: chest, lamp\nInventory: nothing",
    available_actions=BEDROOM_ACTIONS,
)
KITCHEN = State(
    text="You enter a kitchen.\nRoom: Kitchen\nVisible: stove, TextWorld style key\nInventory: nothing",
    available_actions=("examine stove", "take TextWorld style key", "go south"),
)


def step(state: State, action: str, next_state: State, index: int = 0) -> Step:
    return Step(
        state=state, action=Action(text=action), next_state=next_state, reward=0.0, done=False, step_index=index
    )


def query(action: str, *, history: tuple[Step, ...] = (), retrieved: tuple[Step, ...] = ()) -> ExperienceQuery:
    return ExperienceQuery(task=TASK, state=BEDROOM, action=Action(text=action), history=history, retrieved=retrieved)


def test_fields_are_read_from_textworld_alfworld_and_other_states() -> None:
    fields = state_fields(
        State(
            text="You pick up the key.\nRoom: Bar\nVisible: TextWorld style chest, loaf of bread\n"
            "Inventory: a Quote of the Day Calendar, some milk and a key",
            available_actions=("drop key", "look"),
        ),
        "textworld",
    )
    assert fields == {
        "room": {"bar"},
        "visible": {"textworld style chest", "loaf of bread"},
        "inventory": {"quote of the day calendar", "milk", "key"},
        "actions": {"drop key", "look"},
    }
    alfworld = State(
        text="You arrive at countertop 1. On the countertop 1, you see a apple 1, a knife 2, and a bread 1.\n"
        "Location: countertop 1\nHolding: mug 3",
        available_actions=("take apple 1 from countertop 1", "go to cabinet 1"),
    )
    assert state_fields(alfworld, "alfworld") == {
        "room": {"countertop 1"},
        "visible": {"apple 1", "knife 2", "bread 1"},
        "inventory": {"mug 3"},
        "actions": {"take apple 1 from countertop 1", "go to cabinet 1"},
    }
    empty = State(text="You open the drawer 1. The drawer 1 is open. In it, you see nothing.\nLocation: drawer 1")
    assert state_fields(empty, "alfworld") == {
        "room": {"drawer 1"},
        "visible": set(),
        "inventory": None,
        "actions": None,
    }
    # Without a Room / Visible / Inventory line TextWorld's fields are absent; other envs carry actions only.
    assert state_fields(State(text="garbled", available_actions=("look",)), "textworld") == {
        "room": None,
        "visible": None,
        "inventory": None,
        "actions": {"look"},
    }
    assert state_fields(BEDROOM, "webshop") == {
        "room": None,
        "visible": None,
        "inventory": None,
        "actions": set(BEDROOM_ACTIONS),
    }


def test_a_determined_and_a_revealing_step_score_as_constructed() -> None:
    examine = query("examine lamp")
    examine_real = step(
        BEDROOM, "examine lamp", BEDROOM.model_copy(update={"text": "The lamp is dim.\n" + BEDROOM.text})
    )
    # Room and inventory right, one of two visible objects, three of four actions.
    examine_predicted = ExperiencePrediction(
        next_state=State(
            text="The lamp is dim.\nRoom: Bedroom\nVisible: chest\nInventory: nothing",
            available_actions=("open chest", "examine lamp", "go north"),
        )
    )
    north = query("go north")
    north_real = step(BEDROOM, "go north", KITCHEN)
    north_predicted = ExperiencePrediction(next_state=KITCHEN)  # every field right

    assert transition_class(examine, examine_real.next_state) == "determined"
    # The kitchen, the stove, the TextWorld style key and "south" appear nowhere in the query.
    assert revealed_fields(north, KITCHEN) == ("room", "visible", "actions")

    fidelity = FieldFidelity.of([examine, north], [examine_predicted, north_predicted], [examine_real, north_real])
    determined, revealing = fidelity.determined, fidelity.revealing
    assert (determined.steps, revealing.steps, fidelity.all.steps) == (1, 1, 2)
    assert fidelity.revealed_by == {"room": 1, "visible": 1, "actions": 1}
    expected = {"room": (1.0, 1.0), "visible": (0.0, 2 / 3), "inventory": (1.0, 1.0), "actions": (0.0, 6 / 7)}
    for name, (exact, f1) in expected.items():
        assert determined.per_field[name] == {"steps": 1, "exact_match": exact, "f1": pytest.approx(f1)}
        assert revealing.per_field[name] == {"steps": 1, "exact_match": 1.0, "f1": 1.0}
    step_f1 = (1 + 2 / 3 + 1 + 6 / 7) / 4
    assert determined.exact_match == 0.0 and determined.field_f1 == pytest.approx(step_f1)
    assert revealing.exact_match == 1.0 and revealing.field_f1 == 1.0
    assert fidelity.all.exact_match == 0.5 and fidelity.all.field_f1 == pytest.approx((step_f1 + 1) / 2)
    assert fidelity.targets_met is False
    # Examining the lamp changes no field: the determined step is an unchanged one.
    assert (fidelity.determined_unchanged.steps, fidelity.determined_changed.steps) == (1, 0)
    assert fidelity.determined_unchanged.field_f1 == pytest.approx(step_f1)
    assert fidelity.determined_changed.exact_match is None and fidelity.determined_changed.field_f1 is None
    saved = fidelity.as_dict()
    assert saved["determined"]["steps"] == 1 and saved["targets_on_determined"] == FIELD_TARGETS
    assert saved["determined_unchanged"]["steps"] == 1 and saved["determined_changed"]["steps"] == 0
    json.dumps(saved)  # the report's JSON takes it as it is


def test_history_retrieval_and_known_words_make_a_transition_determined() -> None:
    visit = step(KITCHEN, "go south", BEDROOM, index=0)
    # The kitchen was described in the history, or a retrieved example (of another task) shows it.
    assert transition_class(query("go north", history=(visit,)), KITCHEN) == "determined"
    assert transition_class(query("go north", retrieved=(step(BEDROOM, "go north", KITCHEN),)), KITCHEN) == "determined"
    # Going back north is determined and changes the room: repeating the bedroom is wrong there, the kitchen exact.
    north = query("go north", history=(visit,))
    for guess, exact in ((BEDROOM, 0.0), (KITCHEN, 1.0)):
        fidelity = FieldFidelity.of(
            [north], [ExperiencePrediction(next_state=guess)], [step(BEDROOM, "go north", KITCHEN)]
        )
        assert (fidelity.determined_changed.steps, fidelity.determined_unchanged.steps) == (1, 0)
        assert fidelity.determined_changed.exact_match == exact
    # Taking the lamp: the lamp moves to the inventory and "drop lamp" appears. Every word of "drop lamp" has to
    # be in the context: "lamp" is, "drop" only once some context step shows it.
    carrying = State(
        text="You take the lamp.\nRoom: Bedroom\nVisible: chest\nInventory: a lamp",
        available_actions=("open chest", "drop lamp", "go north", "look"),
    )
    assert revealed_fields(query("take lamp"), carrying) == ("actions",)
    dropped_elsewhere = step(KITCHEN, "drop stove", KITCHEN.model_copy(update={"available_actions": ("drop stove",)}))
    assert transition_class(query("take lamp", retrieved=(dropped_elsewhere,)), carrying) == "determined"
    # An object named in the task instruction is known (the instruction names the key; the kitchen is not).
    key_here = BEDROOM.model_copy(update={"text": BEDROOM.text.replace("chest, lamp", "chest, lamp, key")})
    assert transition_class(query("look"), key_here) == "determined"


def test_unparsed_or_fieldless_predictions_are_misses_not_crashes() -> None:
    look = query("look")
    real = step(BEDROOM, "look", BEDROOM)
    # The failure state repeats the state, which here equals the real next state: still a miss in every field.
    unparsed = failure_prediction(look, "no <next_state> field", raw="<reasoning>unfinished")
    garbled = ExperiencePrediction(next_state=State(text="@@@ ### !!!", available_actions=BEDROOM_ACTIONS))
    free_text = ExperiencePrediction(next_state=State(text=BEDROOM.text))  # actions None against a finite set
    fidelity = FieldFidelity.of([look] * 3, [unparsed, garbled, free_text], [real] * 3)
    scores = fidelity.determined
    assert scores.steps == 3 and fidelity.revealing.steps == 0 and fidelity.revealing.exact_match is None
    assert scores.per_field["room"] == {"steps": 3, "exact_match": pytest.approx(1 / 3), "f1": pytest.approx(1 / 3)}
    assert scores.per_field["actions"] == {"steps": 3, "exact_match": pytest.approx(1 / 3), "f1": pytest.approx(1 / 3)}
    assert scores.exact_match == 0.0
    # Step F1: unparsed 0; garbled: only actions right (1/4); free text: all but actions (3/4).
    assert scores.field_f1 == pytest.approx((0 + 1 / 4 + 3 / 4) / 3)
    with pytest.raises(ValueError, match="2 queries, 1 predictions and 2 real steps"):
        FieldFidelity.of([look, look], [unparsed], [real, real])
    assert FieldFidelity.of([], [], []).targets_met is None


textworld = pytest.importorskip("dg_envs.textworld")


@pytest.fixture(scope="module")
def textworld_episodes(tmp_path_factory: pytest.TempPathFactory) -> list[Trajectory]:
    from tests.test_textworld_audit import play

    settings = {"world_size": 2, "nb_objects": 3, "quest_length": 1}
    games = tmp_path_factory.mktemp("games")
    return play(textworld.textworld_tasks("custom", count=3, seed=3, settings=settings, cache_dir=games), 0)


def test_real_textworld_steps_with_exact_or_no_grounding(textworld_episodes: list[Trajectory]) -> None:
    real = [s for t in textworld_episodes for s in t.steps]
    # Retrieval of the very transition: every step is determined, and the nearest model copies it.
    grounded = teacher_forced(
        NearestExperienceModel(PromptOptions(history_window=0, max_retrieved=1)),
        textworld_episodes,
        history_window=0,
        retriever=TaskExactRetriever(textworld_episodes),
        top_k=1,
    ).fields
    assert grounded.revealing.steps == 0 and grounded.determined.steps == len(real) > 0
    assert grounded.determined.exact_match == 1.0 and grounded.determined.field_f1 == 1.0
    assert all(grounded.all.per_field[name]["steps"] == len(real) for name in NEXT_STATE_FIELDS)
    assert grounded.targets_met is True

    # Nothing shown but the state: the nearest model repeats it, right exactly where no field changes.
    alone = teacher_forced(
        NearestExperienceModel(PromptOptions(history_window=0, max_retrieved=0)),
        textworld_episodes,
        history_window=0,
        retriever=None,
        top_k=0,
    ).fields
    unchanged = [state_fields(s.next_state, "textworld") == state_fields(s.state, "textworld") for s in real]
    assert alone.all.exact_match == pytest.approx(sum(unchanged) / len(real))
    assert alone.determined.steps + alone.revealing.steps == len(real)
    assert alone.revealing.steps > 0 and alone.determined.steps > 0
    # Repeating the state is exact on every unchanged determined step and on no changed one.
    changed, unchanged = alone.determined_changed, alone.determined_unchanged
    assert changed.steps + unchanged.steps == alone.determined.steps
    assert changed.steps > 0 and unchanged.steps > 0
    assert unchanged.exact_match == 1.0 and unchanged.field_f1 == 1.0
    assert changed.exact_match == 0.0 and changed.field_f1 is not None and changed.field_f1 < 1.0
    for s in real:  # the real engine's answers to look / examine change no field: always determined
        if s.action.text == "look" or s.action.text.startswith("examine "):
            context = ExperienceQuery(task=textworld_episodes[0].task, state=s.state, action=s.action)
            assert transition_class(context, s.next_state) == "determined"
    # A move into a room the state and the task do not name reveals it.
    for trajectory in textworld_episodes:
        for s in trajectory.steps:
            room = state_fields(s.next_state, "textworld")["room"]
            new_room = room is not None and not any(
                r in (trajectory.task.instruction + s.state.text).lower() for r in room
            )
            if new_room:
                context = ExperienceQuery(task=trajectory.task, state=s.state, action=s.action)
                assert "room" in revealed_fields(context, s.next_state)


def test_the_audit_report_carries_the_fields(textworld_episodes: list[Trajectory], tmp_path: Path) -> None:
    report = audit_experience_model(
        NearestExperienceModel(PromptOptions(history_window=1, max_retrieved=1)),
        textworld_episodes,
        retriever=TaskExactRetriever(textworld_episodes[::2]),  # the expert episodes are grounded
        options=PromptOptions(history_window=1, max_retrieved=1),
        open_loop_episodes=0,
        output_dir=tmp_path,
        progress=False,
    )
    steps = sum(t.num_steps for t in textworld_episodes)
    saved = json.loads((tmp_path / "audit.json").read_text())
    for row in report.rows:
        fields = saved[row.ablation.name]["teacher_forced"]["next_state_fields"]
        assert fields["all"]["steps"] == steps == fields["determined"]["steps"] + fields["revealing"]["steps"]
        assert fields == row.teacher_forced.fields.as_dict()
    markdown = (tmp_path / "audit.md").read_text().splitlines()
    start = markdown.index("| ablation | transitions | room | visible | inventory | actions | all fields |")
    table = [line for line in markdown[start + 2 :] if line.startswith("|")]
    assert len(table) == 4 * len(report.rows)
    assert [line.split(" | ")[1].split(" (")[0] for line in table[:4]] == [
        "determined",
        "determined, changed",
        "determined, unchanged",
        "revealing",
    ]
    full = report.row("full").teacher_forced.fields
    assert full.determined.field_f1 is not None and full.determined.exact_match is not None
    assert markdown[-1] == (
        f"Targets on determined transitions (full): field F1 {full.determined.field_f1:.3f} (target >= 0.95), "
        f"exact match {full.determined.exact_match:.3f} (target >= 0.8): {'met' if full.targets_met else 'not met'}."
    )
