"""The versioned prompt / response format of the experience model (format version 2).

The prompt holds, in this order, the task instruction, the top-k retrieved real transitions, the last
H steps of the episode, the current abstract state and the agent's action. Where a shown state has
irreversible actions (purchase, delete, submit), an ``Irreversible actions:`` line follows its available
actions. The response is tagged fields in this order, each at most once::

    <reasoning>why the environment answers as it does</reasoning>
    <next_state>the next abstract state text</next_state>
    <available_actions>
    one action per line (empty for none; the single line *free text* for an open action space)
    </available_actions>
    <irreversible_actions>
    the next state's irreversible actions, one per line (each one of its available actions)
    </irreversible_actions>
    <reward>0</reward>
    <done>false</done>

Every field is required except ``irreversible_actions`` (:data:`OPTIONAL_TAGS`): it is written only when the
next state has irreversible actions, and a response without it means none. Version 2 added it (and the
prompt's ``Irreversible actions:`` lines); a version-1 response is a valid version-2 response without it, and
for states without irreversible actions only the prompt's version line differs.

Tags rather than JSON: small models learn them quickly, and a broken field is located exactly.
Instruct models receive the same content through their chat template (:func:`build_messages`);
plain models through :func:`render_prompt`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from dg_core import ExperiencePrediction, ExperienceQuery, State, Step

FORMAT_VERSION = 2
"""Version of the prompt / response format."""

FREE_TEXT = "*free text*"
"""The available-actions line that stands for an open action space (``available_actions is None``)."""

RESPONSE_TAGS = ("reasoning", "next_state", "available_actions", "irreversible_actions", "reward", "done")
"""The response fields, in the order they must appear."""

OPTIONAL_TAGS = frozenset({"irreversible_actions"})
"""Response fields that may be left out (an absent ``irreversible_actions`` means none)."""

EMPTY_REASONING = "<reasoning></reasoning>\n"
"""What the no-reasoning ablation puts where the reasoning would be."""

SYSTEM_PROMPT = (
    "You simulate a text environment for an agent. Given the task, similar real transitions, the recent "
    "history, the current state and the agent's action, reason step by step about what the environment does, "
    "then give the next state, its available actions, the reward and whether the episode is done, in the "
    "tagged format."
)
"""System message for instruct models."""


class PromptOptions(BaseModel):
    """What goes into a prompt (the ablation switches of the audits live here too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history_window: int = Field(default=4, ge=0)
    """How many of the most recent steps to show (H)."""
    max_retrieved: int = Field(default=3, ge=0)
    """How many retrieved real transitions to show (k)."""
    include_available_actions: bool = True
    """Whether to list the available actions of shown states."""
    reasoning: bool = True
    """Whether the model reasons first; False pre-fills an empty ``<reasoning></reasoning>`` (an ablation)."""


def _actions_line(state: State) -> str:
    if state.available_actions is None:
        return FREE_TEXT
    return " | ".join(state.available_actions) if state.available_actions else "(none)"


def _action_lines(state: State) -> list[str]:
    lines = [f"Available actions: {_actions_line(state)}"]
    if state.irreversible_actions:
        lines.append(f"Irreversible actions: {' | '.join(state.irreversible_actions)}")
    return lines


def _state_block(label: str, state: State, options: PromptOptions) -> list[str]:
    lines = [f"{label}: {state.text}"]
    if options.include_available_actions:
        lines.extend(_action_lines(state))
    return lines


def _transition_lines(step: Step, options: PromptOptions) -> list[str]:
    return [
        *_state_block("State", step.state, options),
        f"Action: {step.action.text}",
        *_state_block("Next state", step.next_state, options),
        f"Reward: {format_reward(step.reward)} Done: {'true' if step.done else 'false'}",
    ]


def format_reward(reward: float) -> str:
    """Rewards as the model reads and writes them: integers without a decimal point."""
    return str(int(reward)) if float(reward).is_integer() else f"{reward:g}"


def render_prompt_body(query: ExperienceQuery, options: PromptOptions | None = None) -> str:
    """The content of the prompt (shared by the plain and the chat template)."""
    options = options or PromptOptions()
    lines = [f"# Task\n{query.task.instruction}"]
    retrieved = query.retrieved[: options.max_retrieved]
    if retrieved:
        lines.append("# Similar real transitions")
        for number, step in enumerate(retrieved, start=1):
            lines.append(f"## Example {number}")
            lines.extend(_transition_lines(step, options))
    history: Sequence[Step] = query.history[-options.history_window :] if options.history_window else ()
    if history:
        lines.append("# Recent history")
        for step in history:
            lines.append(f"## Step {step.step_index}")
            lines.append(f"State: {step.state.text}")
            lines.append(f"Action: {step.action.text}")
    lines.append("# Current state")
    lines.append(query.state.text)
    if options.include_available_actions:
        lines.extend(_action_lines(query.state))
    lines.append("# Action")
    lines.append(query.action.text)
    return "\n".join(lines)


def render_prompt(query: ExperienceQuery, options: PromptOptions | None = None) -> str:
    """The full prompt for a plain (non-instruct) causal LM; the response follows it directly."""
    options = options or PromptOptions()
    prefill = EMPTY_REASONING if not options.reasoning else ""
    return f"[dg-expmodel v{FORMAT_VERSION}]\n{render_prompt_body(query, options)}\n# Prediction\n{prefill}"


def build_messages(query: ExperienceQuery, options: PromptOptions | None = None) -> list[dict[str, str]]:
    """Chat messages for an instruct model (system + user); the response is the assistant turn."""
    options = options or PromptOptions()
    body = render_prompt_body(query, options)
    if not options.reasoning:
        body += f"\n# Answer without reasoning: write {EMPTY_REASONING.strip()} first."
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": body}]


def render_response(prediction: ExperiencePrediction) -> str:
    """The target text for a prediction (what the model should write); the irreversible-actions field only
    when the next state has irreversible actions."""
    state = prediction.next_state
    actions = FREE_TEXT if state.available_actions is None else "\n".join(state.available_actions)
    irreversible = ""
    if state.irreversible_actions:
        irreversible = (
            "<irreversible_actions>\n" + "\n".join(state.irreversible_actions) + "\n</irreversible_actions>\n"
        )
    return (
        f"<reasoning>{prediction.reasoning}</reasoning>\n"
        f"<next_state>{state.text}</next_state>\n"
        f"<available_actions>\n{actions}\n</available_actions>\n"
        f"{irreversible}"
        f"<reward>{format_reward(prediction.reward)}</reward>\n"
        f"<done>{'true' if prediction.done else 'false'}</done>"
    )


def target_of(step: Step, reasoning: str) -> ExperiencePrediction:
    """The training target for a real transition, with the reasoning an annotator wrote for it (the next state's
    text, available and irreversible actions; its ``info`` is not predicted)."""
    return ExperiencePrediction(
        reasoning=reasoning,
        next_state=State(
            text=step.next_state.text,
            available_actions=step.next_state.available_actions,
            irreversible_actions=step.next_state.irreversible_actions,
        ),
        reward=step.reward,
        done=step.done,
    )
