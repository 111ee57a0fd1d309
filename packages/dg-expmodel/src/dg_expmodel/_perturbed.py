"""Controlled-error simulators: the real environment's own transitions, with errors injected at known rates.

:class:`PerturbedEnv` is a synthetic environment whose every transition comes from a real one (any dg-core
:class:`~dg_core.Env`, stepped underneath) and is then corrupted, from a seeded random stream, in the ways the
fidelity audit finds learned experience models go wrong. It measures how much simulator error synthetic RL
tolerates: the model errors of the paper's Theorem 1 become knobs.

**Reward errors** (rate ``eps_r``). Eligible: every step backed by a real transition that ends the episode as
the agent sees it — the environment's own end (success or failure), its step limit, this simulator's step limit,
or an injected early done. Each such step is misreported with probability ``eps_r``: a success is scored 0
(``success_scored_0``: reward 0, not a success), a failure is scored ``success_reward`` (``failure_scored_1``:
reported a success). Steps that do not end the episode are never touched (dg's environments pay the outcome
only), nor are the steps after a missed done (no real transition stands under them).

**Transition errors** (rate ``eps_p``), the kinds of the audit's typology (``FAILURE_TYPES``) that can be made
on any dg-core :class:`~dg_core.State`:

- ``wrong_place``: the next state is another real state (text, actions, info) seen by this simulator, of the
  same task where one is known, else of any task;
- ``missing_object``: an object named by the next state's text and by its actions' arguments (``take X``) is
  removed from the text (with its article) and every action naming it is removed;
- ``invented_object``: an object not there (one seen elsewhere, else a stock name) is added to the text, with an
  action for it made from one of the state's own (``take coin`` -> ``take lamp``) where one names an object;
- ``wrong_actions``: the available-action set loses one real action, or gains one it does not have (an action
  seen in other states, else one made as above);
- ``premature_done``: the episode ends here although the real one goes on (reward as the real step's);
- ``missed_done``: the real episode ended here (by the environment, not a step limit) but the simulator says it
  goes on: the real reward is still paid, the state shown is the real final text with the previous state's
  actions, and every later action gets this state back unchanged with reward 0 (``info["limbo"]``) until the
  simulator's step limit ends the episode.

A step is eligible for a transition error when one of the enabled kinds applies to it; it gets one with
probability ``eps_p``, the kind drawn uniformly among the enabled kinds that apply. Only ``missed_done`` applies
to a step the environment ended; nothing applies to a step ended by a step limit; the other kinds apply to every
step after which the agent acts again (``wrong_place`` once another state is known, ``missing_object`` when the
text names an object of the actions, ``wrong_actions`` when the action space is a list).

**Semantics after an error.** The real environment stays the authority: every action the agent takes is sent
to it (``passes_invalid_actions``), from its true state. A wrong observation lasts one step — the next answer
comes from the real environment again, so an action offered by the error (an invented object or action, a
wrong place's exit) gets the real environment's answer to it (an invalid action usually: nothing happens), and an
action the error hid is still carried out if the agent names it. Errors therefore do not compound through the
simulator's own state as a learned model's do in open loop; they compound only through the agent's decisions.
``premature_done`` abandons the real episode (counted in ``abandoned``); ``missed_done`` leaves the agent in a
limbo until the step limit. With ``eps_r = eps_p = 0`` the environment equals the real one step for step
(states, rewards, dones, infos); only ``source`` (synthetic) and step timings differ.

The three random streams (transition gate, reward gate, the errors' own choices) are separate, and every
real-backed step draws exactly one number from each gate, eligible or not: the gates do not depend on the rates,
the enabled kinds or the errors' own choices. ``state_dict`` / ``load_state_dict`` carry the streams (and the
counts and the known states) through checkpoints.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dg_core import Action, BatchedEnv, ConfigError, Env, Source, State, StepResult, Task

TRANSITION_ERRORS = (
    "wrong_place",
    "missing_object",
    "invented_object",
    "wrong_actions",
    "premature_done",
    "missed_done",
)
"""Transition-error kinds, named as the audit's ``FAILURE_TYPES``."""

REWARD_ERRORS = ("success_scored_0", "failure_scored_1")
"""Reward-error kinds: a success reported as a failure, a failure reported as a success."""

LIMBO_FEEDBACK = "Nothing happens."
"""``info["feedback"]`` of the steps after a missed done."""

STOCK_OBJECTS = ("brass lantern", "torn note", "glass bottle", "wooden crate", "silver whistle")
"""Names an invented object takes when no other object is known."""

_MOVES = frozenset({"go", "move", "walk", "run", "climb", "enter", "exit"})
_PREPOSITION = re.compile(r"\s+(?:on|in|into|from|with|to|at)\s+")


@dataclass
class PerturbationStats:
    """What a :class:`PerturbedEnv` did: real-backed steps, eligible steps and injected errors by kind."""

    steps: int = 0
    """Steps answered from a real transition."""
    limbo_steps: int = 0
    """Steps answered after a missed done (no real transition under them)."""
    transition_eligible: int = 0
    """Steps to which at least one enabled transition-error kind applied."""
    transition_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRANSITION_ERRORS, 0))
    """Injected transition errors by kind."""
    reward_eligible: int = 0
    """Real-backed steps that ended the episode as the agent saw it."""
    reward_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REWARD_ERRORS, 0))
    """Injected reward errors by kind."""
    abandoned: int = 0
    """Real episodes left running by an injected early done."""

    @property
    def transition_rate(self) -> float:
        """Measured eps_P: injected transition errors per eligible step (NaN before one)."""
        return sum(self.transition_errors.values()) / self.transition_eligible if self.transition_eligible else math.nan

    @property
    def reward_rate(self) -> float:
        """Measured eps_R: injected reward errors per eligible step (NaN before one)."""
        return sum(self.reward_errors.values()) / self.reward_eligible if self.reward_eligible else math.nan

    def as_dict(self) -> dict[str, Any]:
        """Every count and the two measured rates (``None`` before an eligible step), JSON-ready."""
        out: dict[str, Any] = asdict(self)
        out["transition_rate"] = None if math.isnan(self.transition_rate) else self.transition_rate
        out["reward_rate"] = None if math.isnan(self.reward_rate) else self.reward_rate
        return out


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def action_objects(actions: Sequence[str]) -> list[str]:
    """The objects actions name: what follows the verb, up to a preposition (``put key in box`` -> ``key``).

    Movement verbs (``go north``) name no object.
    """
    found: dict[str, None] = {}
    for action in actions:
        verb, _, argument = action.strip().partition(" ")
        if not argument or verb.lower() in _MOVES:
            continue
        name = _PREPOSITION.split(argument, maxsplit=1)[0].strip()
        for article in ("a ", "an ", "the "):
            name = name.removeprefix(article)
        if name:
            found[name] = None
    return list(found)


def state_objects(state: State) -> list[str]:
    """Objects named both by ``state``'s actions and by its text."""
    return [name for name in action_objects(state.available_actions or ()) if _mentions(state.text, name)]


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]*,(?:[ \t]*,)+", ",", text)  # "a, , b" -> "a, b"
    text = re.sub(r"([:(])[ \t]*(?:,|and\b)[ \t]*", r"\1 ", text)  # ": , b" / ": and b" -> ": b"
    text = re.sub(r"[ \t]*(?:,|\band\b)[ \t]*(?=[.;)\n]|$)", "", text)  # "a, ." / "a and ." -> "a."
    text = re.sub(r",[ \t]*and\b", " and", text)
    text = re.sub(r":[ \t]*(?=[.\n]|$)", ": nothing", text)  # a list left empty
    text = re.sub(r"[ \t]+([.,;])", r"\1", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return "\n".join(line.strip() for line in text.splitlines())


def drop_object(state: State, name: str) -> State:
    """``state`` without ``name``: out of the text (with its article) and out of every action naming it."""
    phrase = rf"(?:\b(?:a|an|the|some)\s+)?(?<!\w){re.escape(name)}(?!\w)"
    text = re.sub(rf"(?:[ \t]*,|[ \t]+and)[ \t]+{phrase}", "", state.text)  # "x, NAME" / "x and NAME"
    text = re.sub(rf"{phrase}(?:[ \t]*,|[ \t]+and\b)[ \t]*", "", text)  # "NAME, y" / "NAME and y"
    text = _tidy(re.sub(phrase, "", text))
    actions = None
    if state.available_actions is not None:
        actions = tuple(a for a in state.available_actions if not _mentions(a, name))
    irreversible = tuple(a for a in state.irreversible_actions if actions is not None and a in actions)
    return State(text=text, available_actions=actions, irreversible_actions=irreversible, info=state.info)


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


class PerturbedEnv(BatchedEnv):
    """Real transitions with reward and transition errors injected at rates ``eps_r`` and ``eps_p``.

    See the module documentation for which steps are eligible and what each error does. Transitions count as
    synthetic (``source``); each step's ``info["injected"]`` lists the errors injected into it (absent when none),
    ``info["injected_detail"]`` says what changed, ``info["real_reward"]`` / ``info["real_done"]`` keep the real
    values; :attr:`stats` counts eligible steps and errors by kind.

    Args:
        factory: Makes one real single-episode environment (as for :class:`~dg_core.EnvPool`); one per episode of
            the largest batch, reused across resets.
        eps_r: Probability of a reward error on an eligible step.
        eps_p: Probability of a transition error on an eligible step.
        kinds: The enabled transition-error kinds (default: all of :data:`TRANSITION_ERRORS`).
        seed: Seeds the three random streams.
        max_steps: The simulator's step limit (give it the real environment's, so that the two agree at zero
            error); needed when ``missed_done`` can happen, since only it ends a limbo.
        success_reward: The reward a failure scored as a success gets.
        pool_size: Real states kept per task (and overall) for ``wrong_place``.
    """

    source = Source.SYNTHETIC
    passes_invalid_actions = True  # the real environment answers every action, from its true state

    def __init__(
        self,
        factory: Callable[[], Env],
        *,
        eps_r: float = 0.0,
        eps_p: float = 0.0,
        kinds: Sequence[str] = TRANSITION_ERRORS,
        seed: int = 0,
        max_steps: int | None = 30,
        success_reward: float = 1.0,
        pool_size: int = 64,
    ) -> None:
        super().__init__(max_steps=max_steps)
        for name, value in (("eps_r", eps_r), ("eps_p", eps_p)):
            if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
        unknown = sorted(set(kinds) - set(TRANSITION_ERRORS))
        if unknown:
            raise ConfigError(f"unknown transition-error kinds {unknown}; known: {list(TRANSITION_ERRORS)}")
        if eps_p > 0 and "missed_done" in kinds and max_steps is None:
            raise ConfigError("missed_done needs a step limit (max_steps): only the limit ends an episode after it")
        if pool_size < 1:
            raise ConfigError(f"pool_size must be >= 1, got {pool_size}")
        self.eps_r = float(eps_r)
        self.eps_p = float(eps_p)
        self.kinds = tuple(kind for kind in TRANSITION_ERRORS if kind in kinds)
        self.seed = seed
        self.success_reward = float(success_reward)
        self.pool_size = pool_size
        self._factory = factory
        probe = factory()
        self._envs: list[Env] = [probe]
        self.env_id = probe.env_id  # type: ignore[misc]
        self._gate_p = random.Random(f"{seed}:transition-gate")
        self._gate_r = random.Random(f"{seed}:reward-gate")
        self._rng = random.Random(f"{seed}:errors")
        self.stats = PerturbationStats()
        self._limbo: list[bool] = []
        self._places: dict[str, dict[str, State]] = {}  # task id -> text -> a real state the agent acted in
        self._anywhere: dict[str, State] = {}
        self._objects: dict[str, None] = {}
        self._actions: dict[str, None] = {}

    @property
    def real_envs(self) -> list[Env]:
        """The real environments underneath (one per episode of the largest batch so far)."""
        return list(self._envs)

    # -- episodes -----------------------------------------------------------------------------------------------
    def _reset_batch(self, tasks: list[Task], seeds: list[int | None]) -> list[State]:
        while len(self._envs) < len(tasks):
            self._envs.append(self._factory())
        states = [self._envs[i].reset(task, seeds[i]) for i, task in enumerate(tasks)]
        self._limbo = [False] * len(tasks)
        for task, state in zip(tasks, states, strict=True):
            self._remember(task.id, state)
        return states

    def _step_batch(self, indices: list[int], actions: list[Action]) -> list[StepResult]:
        results = []
        for index, action in zip(indices, actions, strict=True):
            if self._limbo[index]:
                self.stats.limbo_steps += 1
                info: dict[str, Any] = {"limbo": True, "feedback": LIMBO_FEEDBACK}
                results.append(StepResult(state=self.states[index], reward=0.0, done=False, info=info))
                continue
            real = self._envs[index].step(action)
            results.append(self._perturb(index, action, real))
        return results

    def _close(self) -> None:
        errors: list[BaseException] = []
        for env in self._envs:
            try:
                env.close()
            except Exception as error:  # close every env even if one fails
                errors.append(error)
        if errors:
            raise errors[0]

    # -- errors -------------------------------------------------------------------------------------------------
    def _perturb(self, index: int, action: Action, real: StepResult) -> StepResult:
        self.stats.steps += 1
        draw_p, draw_r = self._gate_p.random(), self._gate_r.random()  # one draw each per step, used or not
        task = self.task_of(index)
        shown_before = self.states[index]
        at_limit = self.max_steps is not None and len(self.history(index)) + 1 >= self.max_steps
        continues = not real.done and not at_limit
        if continues:
            self._remember(task.id, real.state)
        result = real
        injected: list[str] = []
        detail: dict[str, Any] = {}
        applicable = [kind for kind in self.kinds if self._applies(kind, task.id, real, continues, at_limit)]
        if applicable:
            self.stats.transition_eligible += 1
            if draw_p < self.eps_p:
                kind = self._rng.choice(applicable)
                result, note = self._inject(kind, task.id, real, shown_before)
                self.stats.transition_errors[kind] += 1
                injected.append(kind)
                if note:
                    detail[kind] = note
                if kind == "premature_done":
                    self.stats.abandoned += 1
                elif kind == "missed_done":
                    self._limbo[index] = True
        if result.done or at_limit:
            self.stats.reward_eligible += 1
            if draw_r < self.eps_r:
                result, flip = self._flip_reward(result, truncated=result.truncated or not result.done)
                self.stats.reward_errors[flip] += 1
                injected.append(flip)
        listed = shown_before.available_actions is None or action.text in shown_before.available_actions
        hidden = not listed and "invalid_action" not in result.info  # named an action the simulator hid
        if not injected and not hidden:
            return result
        info = dict(result.info)
        if injected:
            info.update(injected=list(injected), real_reward=real.reward, real_done=real.done)
            if detail:
                info["injected_detail"] = detail
        if hidden:  # the real environment, which is the authority, carried it out
            info.update(invalid_action=False, unlisted_action=True)
        return result.model_copy(update={"info": info})

    def _applies(self, kind: str, task_id: str, real: StepResult, continues: bool, at_limit: bool) -> bool:
        if kind == "missed_done":
            return real.done and not real.truncated and not at_limit
        if not continues:
            return False
        if kind == "wrong_place":
            return self._other_place(task_id, real.state.text) is not None
        if kind == "missing_object":
            return bool(self._droppable(real.state))
        if kind == "wrong_actions":
            return real.state.available_actions is not None
        return True  # invented_object, premature_done

    def _inject(self, kind: str, task_id: str, real: StepResult, before: State) -> tuple[StepResult, str]:
        state = real.state
        if kind == "wrong_place":
            places = self._other_place(task_id, state.text)
            assert places is not None
            other = self._rng.choice(places)
            return real.model_copy(update={"state": other}), "another real state"
        if kind == "missing_object":
            name = self._rng.choice(self._droppable(state))
            return real.model_copy(update={"state": drop_object(state, name)}), name
        if kind == "invented_object":
            return self._invent_object(real)
        if kind == "wrong_actions":
            return self._wrong_actions(real)
        if kind == "premature_done":
            return real.model_copy(update={"done": True}), ""
        # missed_done: the real final text, the actions the agent had, the real reward; the episode goes on.
        shown = State(
            text=state.text,
            available_actions=before.available_actions,
            irreversible_actions=before.irreversible_actions,
            info=state.info,
        )
        return StepResult(state=shown, reward=real.reward, done=False, reasoning=real.reasoning, info=real.info), ""

    def _flip_reward(self, result: StepResult, *, truncated: bool) -> tuple[StepResult, str]:
        succeeded = result.success if result.success is not None else (result.reward > 0 and not truncated)
        if succeeded:
            return result.model_copy(update={"reward": 0.0, "success": False}), "success_scored_0"
        return result.model_copy(update={"reward": self.success_reward, "success": True}), "failure_scored_1"

    def _invent_object(self, real: StepResult) -> tuple[StepResult, str]:
        state = real.state
        name = self._new_object(state)
        joiner = "\n" if "\n" in state.text else " "
        text = f"{state.text}{joiner}There is also {_article(name)} {name} here."
        actions = state.available_actions
        if actions is not None:
            made = self._made_action(state, name)
            if made is not None:
                position = self._rng.randrange(len(actions) + 1)
                actions = (*actions[:position], made, *actions[position:])
        shown = State(
            text=text, available_actions=actions, irreversible_actions=state.irreversible_actions, info=state.info
        )
        return real.model_copy(update={"state": shown}), name

    def _wrong_actions(self, real: StepResult) -> tuple[StepResult, str]:
        state = real.state
        actions = tuple(state.available_actions or ())
        if len(actions) >= 2 and self._rng.random() < 0.5:
            removed = self._rng.choice(actions)
            kept = tuple(a for a in actions if a != removed)
            irreversible = tuple(a for a in state.irreversible_actions if a != removed)
            shown = State(text=state.text, available_actions=kept, irreversible_actions=irreversible, info=state.info)
            return real.model_copy(update={"state": shown}), f"removed: {removed}"
        elsewhere = [a for a in self._actions if a not in actions]
        invented = self._rng.choice(elsewhere) if elsewhere else None
        if invented is None:
            invented = self._made_action(state, self._new_object(state))
        if invented is None:
            invented = f"examine {self._new_object(state)}"
        position = self._rng.randrange(len(actions) + 1)
        shown = State(
            text=state.text,
            available_actions=(*actions[:position], invented, *actions[position:]),
            irreversible_actions=state.irreversible_actions,
            info=state.info,
        )
        return real.model_copy(update={"state": shown}), f"invented: {invented}"

    # -- what the simulator has seen ----------------------------------------------------------------------------
    def _remember(self, task_id: str, state: State) -> None:
        """Keep a real state the agent will act in (for ``wrong_place``), its objects and actions."""
        for pool in (self._places.setdefault(task_id, {}), self._anywhere):
            if state.text not in pool:
                pool[state.text] = state
                if len(pool) > self.pool_size:
                    del pool[next(iter(pool))]
        for name in action_objects(state.available_actions or ()):
            self._objects[name] = None
        for action in state.available_actions or ():
            self._actions[action] = None

    def _other_place(self, task_id: str, text: str) -> list[State] | None:
        for pool in (self._places.get(task_id, {}), self._anywhere):
            others = [state for key, state in pool.items() if key != text]
            if others:
                return others
        return None

    @staticmethod
    def _droppable(state: State) -> list[str]:
        """Objects of ``state`` whose removal leaves at least one action."""
        actions = state.available_actions
        return [
            name
            for name in state_objects(state)
            if actions is None or any(not _mentions(action, name) for action in actions)
        ]

    def _new_object(self, state: State) -> str:
        known = [name for name in self._objects if not _mentions(state.text, name)]
        if known:
            return self._rng.choice(known)
        stock = [name for name in STOCK_OBJECTS if not _mentions(state.text, name)]
        return self._rng.choice(stock or list(STOCK_OBJECTS))

    def _made_action(self, state: State, name: str) -> str | None:
        """One of the state's actions on an object it names, made about ``name`` instead (None if none)."""
        actions = state.available_actions or ()
        for action in actions:
            for present in action_objects([action]):
                if present != name and _mentions(state.text, present):
                    made = re.sub(rf"(?<!\w){re.escape(present)}(?!\w)", name, action, count=1)
                    if made not in actions:
                        return made
        return None

    # -- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The random streams, the counts and the states known so far (plain data, for checkpoints)."""
        return {
            "rngs": [list(_flat(rng.getstate())) for rng in (self._gate_p, self._gate_r, self._rng)],
            "stats": asdict(self.stats),
            "places": {task: [s.model_dump(mode="json") for s in pool.values()] for task, pool in self._places.items()},
            "anywhere": [s.model_dump(mode="json") for s in self._anywhere.values()],
            "objects": list(self._objects),
            "actions": list(self._actions),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        for rng, flat in zip((self._gate_p, self._gate_r, self._rng), state["rngs"], strict=True):
            rng.setstate(_unflat(flat))
        self.stats = PerturbationStats(**state["stats"])
        self._places = {
            task: {s.text: s for s in (State.model_validate(raw) for raw in pool)}
            for task, pool in state["places"].items()
        }
        self._anywhere = {s.text: s for s in (State.model_validate(raw) for raw in state["anywhere"])}
        self._objects = dict.fromkeys(state["objects"])
        self._actions = dict.fromkeys(state["actions"])


def _flat(rng_state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = rng_state
    return [version, *internal, gauss]


def _unflat(flat: Sequence[Any]) -> tuple[Any, ...]:
    return (int(flat[0]), tuple(int(v) for v in flat[1:-1]), flat[-1])
