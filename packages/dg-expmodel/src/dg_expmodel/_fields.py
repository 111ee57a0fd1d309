"""Per-field next-state fidelity, split into determined and revealing transitions (rule-based, no judge).

A next state is read as four fields, each a set of normalised items (lower case, spaces collapsed, a leading
article and a trailing full stop removed; actions keep their exact text):

- ``room``: the ``Room:`` line (TextWorld) or the ``Location:`` line (ALFWorld), one item;
- ``visible``: the ``Visible:`` line, split on commas (TextWorld); in ALFWorld, which has no such line, every
  list that follows "you see" in the observation, up to its full stop, split on commas and "and" (empty when the
  observation lists nothing);
- ``inventory``: the ``Inventory:`` line (TextWorld, split on commas and "and") or ``Holding:`` (ALFWorld);
- ``actions``: the state's available actions.

Other environments have the ``actions`` field only. A field the real next state does not carry (no such line,
free-text actions) is not scored at that step; a field the real state carries and the prediction does not counts
as a miss, and so does every field of a prediction that did not parse.

A transition is **determined** when every item of the real next state's fields is found in what the model was
shown (the query's context: the task, the current state, the action, and each history and retrieved step's state,
action and next state), and **revealing** otherwise:

- a room, visible object or carried item is found when its name occurs as a whole phrase (case ignored) in the
  task instruction, a context state's text or available actions, or a context action;
- an available action is found when a context state lists it or a context step took it, or when every one of its
  words occurs in that same context text (``drop pillow`` once ``pillow`` is in view and ``drop`` appears in some
  action shown: a command of the game's grammar about known things).

Determined transitions are split once more: **changed** where some field of the real next state differs from the
same field of the current state (a move, a take, a drop, an opened container), **unchanged** otherwise (look,
examine, an action that fails). A model that repeats the current state is exact on every unchanged step and wrong
on every changed one, so the changed steps are where a model shows that it simulates rather than copies.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dg_core import ExperiencePrediction, ExperienceQuery, State, Step
from dg_expmodel._audit_metrics import mean_of, set_f1, words

NEXT_STATE_FIELDS = ("room", "visible", "inventory", "actions")
"""The fields of a next state scored by :class:`FieldFidelity`, in report order."""

TRANSITION_CLASSES = ("determined", "revealing")
"""Whether the real next state holds only what the query showed the model (determined) or something new."""

DETERMINED_SPLITS = ("changed", "unchanged")
"""Determined transitions whose real next state changes some field of the current state, and those changing none."""

FIELD_TARGETS = {"field_f1": 0.95, "exact_match": 0.8}
"""Issue 17's targets for determined transitions: mean field F1 and all-fields exact match."""

_LINES = {
    "textworld": {"room": "Room:", "visible": "Visible:", "inventory": "Inventory:"},
    "alfworld": {"room": "Location:", "inventory": "Holding:"},
}
_ARTICLE = re.compile(r"^(?:a|an|the|some)\s+")
_LIST_SEPARATOR = re.compile(r",\s*(?:and\s+)?|\s+and\s+")
_YOU_SEE = re.compile(r"you see ([^.]*)", re.IGNORECASE)

Fields = dict[str, frozenset[str] | None]
"""Field name -> its items, ``None`` where the state does not carry the field."""


def _item(text: str) -> str:
    item = " ".join(text.lower().split()).rstrip(".").strip()
    return _ARTICLE.sub("", item)


def _items(listing: str, separator: re.Pattern[str]) -> frozenset[str]:
    items = {_item(piece) for piece in separator.split(listing)}
    return frozenset(item for item in items if item and item != "nothing")


def _labelled(lines: list[str], label: str) -> str | None:
    """The value of the last line that starts with ``label``."""
    values = [line.strip()[len(label) :] for line in lines if line.strip().startswith(label)]
    return values[-1] if values else None


def state_fields(state: State, env_id: str) -> Fields:
    """The fields of ``state`` (see the module docstring) under the rules of environment ``env_id``."""
    fields: Fields = dict.fromkeys(NEXT_STATE_FIELDS)
    lines = state.text.splitlines()
    labels = _LINES.get(env_id, {})
    for name, label in labels.items():
        value = _labelled(lines, label)
        if value is not None:
            # TextWorld's Visible line joins whole names with ", "; other lists are prose ("a key and a coin").
            separator = re.compile(r",\s*") if name == "visible" else _LIST_SEPARATOR
            fields[name] = frozenset({_item(value)} - {""}) if name == "room" else _items(value, separator)
    if env_id == "alfworld":
        prose = " ".join(line for line in lines if not line.strip().startswith(tuple(labels.values())))
        fields["visible"] = frozenset().union(*(_items(m, _LIST_SEPARATOR) for m in _YOU_SEE.findall(prose)))
    if state.available_actions is not None:
        fields["actions"] = frozenset(" ".join(action.split()) for action in state.available_actions)
    return fields


def _context_states(query: ExperienceQuery) -> list[State]:
    states = [query.state]
    for step in (*query.history, *query.retrieved):
        states += [step.state, step.next_state]
    return states


def _context(query: ExperienceQuery) -> tuple[str, set[str], set[str]]:
    """The context's text (lower case, one item per line), its actions, and its words."""
    actions = {query.action.text, *(step.action.text for step in (*query.history, *query.retrieved))}
    texts = [query.task.instruction, *actions]
    for state in _context_states(query):
        texts.append(state.text)
        actions.update(state.available_actions or ())
        texts.extend(state.available_actions or ())
    text = "\n".join(" ".join(t.lower().split()) for t in texts)
    return text, {" ".join(a.split()) for a in actions}, set(words(text))


def _named_in(name: str, text: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", text) is not None


def revealed_fields(query: ExperienceQuery, real_next: State) -> tuple[str, ...]:
    """The fields of ``real_next`` holding an item not found in ``query``'s context (the module docstring's rule);
    empty for a determined transition."""
    fields = state_fields(real_next, query.task.env_id)
    text, actions, known_words = _context(query)
    revealed = []
    for name in NEXT_STATE_FIELDS:
        items = fields[name] or frozenset()
        if name == "actions":
            new = [a for a in items if a not in actions and not set(words(a)) <= known_words]
        else:
            new = [item for item in items if not _named_in(item, text)]
        if new:
            revealed.append(name)
    return tuple(revealed)


def transition_class(query: ExperienceQuery, real_next: State) -> str:
    """``"determined"`` or ``"revealing"`` (:data:`TRANSITION_CLASSES`) for the real transition of ``query``."""
    return "revealing" if revealed_fields(query, real_next) else "determined"


@dataclass(frozen=True)
class StepFields:
    """One step's field comparison: F1 and exact match of each field the real next state carries."""

    transition: str
    """``"determined"`` or ``"revealing"``."""
    revealed: tuple[str, ...]
    """The fields that make the transition revealing (empty when determined)."""
    changed: bool
    """Whether some field the real next state carries differs from that field of the current state."""
    f1: dict[str, float]
    """Field -> set F1 of predicted vs real items (0 for a missing field or a parse failure)."""
    exact: dict[str, bool]
    """Field -> whether the predicted items equal the real ones."""

    @classmethod
    def of(cls, query: ExperienceQuery, prediction: ExperiencePrediction, real: Step) -> StepFields:
        """Compare ``prediction`` with the ``real`` step of ``query`` field by field."""
        env_id = query.task.env_id
        actual = state_fields(real.next_state, env_id)
        predicted = state_fields(prediction.next_state, env_id) if prediction.parse_ok else dict.fromkeys(actual)
        f1, exact = {}, {}
        for name in NEXT_STATE_FIELDS:
            reference, guess = actual[name], predicted[name]
            if reference is None:
                continue
            f1[name] = set_f1(guess, reference) if guess is not None else 0.0
            exact[name] = guess == reference
        current = state_fields(query.state, env_id)
        changed = any(current[name] != actual[name] for name in f1)
        revealed = revealed_fields(query, real.next_state)
        return cls(
            transition="revealing" if revealed else "determined", revealed=revealed, changed=changed, f1=f1, exact=exact
        )


def _mean(values: Iterable[float]) -> float | None:
    data = list(values)
    return mean_of(data) if data else None


@dataclass(frozen=True)
class FieldScores:
    """Field fidelity over a set of steps (all, determined or revealing)."""

    steps: int
    """Steps in the set."""
    scored_steps: int
    """Steps with at least one field to score (the denominators of ``exact_match`` and ``field_f1``)."""
    exact_match: float | None
    """Share of the scored steps whose every field matches exactly (None without any)."""
    field_f1: float | None
    """Mean over the scored steps of the mean F1 of their fields (None without any)."""
    per_field: dict[str, dict[str, Any]]
    """Field -> ``steps`` carrying it, ``exact_match`` and mean ``f1`` over them (None where no step carries it)."""

    @classmethod
    def of(cls, steps: Sequence[StepFields]) -> FieldScores:
        """Aggregate per-step comparisons."""
        scored = [s for s in steps if s.f1]
        per_field = {}
        for name in NEXT_STATE_FIELDS:
            carrying = [s for s in steps if name in s.f1]
            per_field[name] = {
                "steps": len(carrying),
                "exact_match": _mean(s.exact[name] for s in carrying),
                "f1": _mean(s.f1[name] for s in carrying),
            }
        return cls(
            steps=len(steps),
            scored_steps=len(scored),
            exact_match=_mean(all(s.exact.values()) for s in scored),
            field_f1=_mean(sum(s.f1.values()) / len(s.f1) for s in scored),
            per_field=per_field,
        )

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        return {
            "steps": self.steps,
            "scored_steps": self.scored_steps,
            "exact_match": self.exact_match,
            "field_f1": self.field_f1,
            "per_field": self.per_field,
        }


@dataclass(frozen=True)
class FieldFidelity:
    """Per-field next-state fidelity of teacher-forced predictions: all steps, determined and revealing apart."""

    all: FieldScores
    determined: FieldScores
    revealing: FieldScores
    determined_changed: FieldScores
    """The determined steps that change some field of the current state (:data:`DETERMINED_SPLITS`)."""
    determined_unchanged: FieldScores
    """The determined steps that change none (repeating the current state is exact on them)."""
    revealed_by: dict[str, int]
    """Revealing steps by field that reveals something (a step counts under each such field)."""

    @classmethod
    def of(
        cls,
        queries: Sequence[ExperienceQuery],
        predictions: Sequence[ExperiencePrediction],
        real: Sequence[Step],
    ) -> FieldFidelity:
        """Score every teacher-forced prediction against its real step (one of each per step)."""
        if not len(queries) == len(predictions) == len(real):
            raise ValueError(
                f"FieldFidelity.of needs one prediction and one real step per query; got {len(queries)} queries, "
                f"{len(predictions)} predictions and {len(real)} real steps"
            )
        steps = [StepFields.of(q, p, r) for q, p, r in zip(queries, predictions, real, strict=True)]
        by_field = Counter(name for s in steps for name in s.revealed)
        determined = [s for s in steps if s.transition == "determined"]
        return cls(
            all=FieldScores.of(steps),
            determined=FieldScores.of(determined),
            revealing=FieldScores.of([s for s in steps if s.transition == "revealing"]),
            determined_changed=FieldScores.of([s for s in determined if s.changed]),
            determined_unchanged=FieldScores.of([s for s in determined if not s.changed]),
            revealed_by={name: by_field[name] for name in NEXT_STATE_FIELDS if by_field[name]},
        )

    @property
    def targets_met(self) -> bool | None:
        """Whether the determined transitions reach :data:`FIELD_TARGETS` (None without any scored)."""
        scores = self.determined
        if scores.field_f1 is None or scores.exact_match is None:
            return None
        return scores.field_f1 >= FIELD_TARGETS["field_f1"] and scores.exact_match >= FIELD_TARGETS["exact_match"]

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        return {
            "all": self.all.as_dict(),
            "determined": self.determined.as_dict(),
            "revealing": self.revealing.as_dict(),
            "determined_changed": self.determined_changed.as_dict(),
            "determined_unchanged": self.determined_unchanged.as_dict(),
            "revealed_by": self.revealed_by,
            "targets_on_determined": dict(FIELD_TARGETS),
            "targets_met": self.targets_met,
        }


def _cell(exact: float | None, f1: float | None) -> str:
    return "-" if exact is None or f1 is None else f"{exact:.3f} / {f1:.3f}"


def fields_markdown(rows: Sequence[tuple[str, FieldFidelity]]) -> str:
    """The report's per-field section: one line per ablation and transition class, then the targets."""
    if not rows:
        return ""
    lines = [
        "Next-state fields, exact match / F1 (determined: every room, object, carried item and action of the real "
        "next state is named in the model's context; revealing: something new; a determined step is changed where "
        "some field differs from the current state's, unchanged where repeating the state is exact):",
        "",
        "| ablation | transitions | " + " | ".join(NEXT_STATE_FIELDS) + " | all fields |",
        "| --- " * (len(NEXT_STATE_FIELDS) + 3) + "|",
    ]
    kinds = [(kind, kind) for kind in TRANSITION_CLASSES]
    kinds[1:1] = [(f"determined_{split}", f"determined, {split}") for split in DETERMINED_SPLITS]
    for name, fidelity in rows:
        for attribute, label in kinds:
            scores: FieldScores = getattr(fidelity, attribute)
            cells = [_cell(scores.per_field[f]["exact_match"], scores.per_field[f]["f1"]) for f in NEXT_STATE_FIELDS]
            whole = _cell(scores.exact_match, scores.field_f1)
            lines.append(f"| {name} | {label} ({scores.steps}) | " + " | ".join(cells) + f" | {whole} |")
    name, first = rows[0]
    scores = first.determined
    reached = {None: "no determined step to judge", True: "met", False: "not met"}[first.targets_met]
    f1 = "-" if scores.field_f1 is None else f"{scores.field_f1:.3f}"
    exact = "-" if scores.exact_match is None else f"{scores.exact_match:.3f}"
    lines += [
        "",
        f"Targets on determined transitions ({name}): field F1 {f1} (target >= {FIELD_TARGETS['field_f1']}), "
        f"exact match {exact} (target >= {FIELD_TARGETS['exact_match']}): {reached}.",
    ]
    return "\n".join(lines)
