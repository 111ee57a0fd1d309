"""Supervised fine-tuning of the experience model (the paper's Eq. 5).

The loss is the causal-LM loss over the response tokens only — reasoning and next state (plus
available actions, reward and done) jointly — with the prompt masked out. Batches group examples of
similar length so padding stays small. Concatenation packing is deliberately not used: without
variable-length attention kernels it lets examples attend to each other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dg_core import ExperienceQuery, Step, Task, Trajectory
from dg_expmodel._annotate import Annotator
from dg_expmodel._format import (
    EMPTY_REASONING,
    PromptOptions,
    build_messages,
    render_prompt,
    render_response,
    target_of,
)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SFTExample:
    """One training pair: the prompt and the response the model should write."""

    prompt: str
    response: str


def examples_from_trajectories(
    trajectories: Sequence[Trajectory],
    annotator: Annotator,
    *,
    options: PromptOptions | None = None,
    retrieve: Callable[[Task, Step], Sequence[Step]] | None = None,
    tokenizer: Any = None,
) -> list[SFTExample]:
    """Training pairs for every real transition, with the annotator's reasoning.

    Args:
        trajectories: Real episodes (the history of each step comes from its episode).
        annotator: Writes the reasoning of each transition.
        options: Prompt contents (history window, retrieved examples).
        retrieve: Optional ``(task, step) -> steps`` giving the retrieved transitions shown with a step, e.g.
            ``functools.partial(ReplayRetriever(buffer, exclude_self=True).for_step, k=3)``.
        tokenizer: If it has a chat template, prompts are rendered through it; else the plain template.
    """
    options = options or PromptOptions()
    chat = bool(getattr(tokenizer, "chat_template", None))
    examples = []
    for trajectory in trajectories:
        steps = trajectory.steps
        for position, (step, why) in enumerate(zip(steps, annotator.annotate(steps), strict=True)):
            query = ExperienceQuery(
                task=trajectory.task,
                history=steps[:position],
                state=step.state,
                action=step.action,
                retrieved=tuple(retrieve(trajectory.task, step)) if retrieve else (),
            )
            if chat:
                messages = build_messages(query, options)
                prompt = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            else:
                prompt = render_prompt(query, options)
            if options.reasoning:
                response = render_response(target_of(step, why))
            elif chat:  # the chat model writes the empty reasoning field itself (no prefill after the template)
                response = render_response(target_of(step, ""))
            else:  # the plain prompt already ends with the empty reasoning field
                response = render_response(target_of(step, ""))[len(EMPTY_REASONING) :]
            examples.append(SFTExample(prompt=prompt, response=response))
    return examples


def tokenize_examples(examples: Sequence[SFTExample], tokenizer: Any, *, max_length: int) -> list[dict[str, list[int]]]:
    """Token ids and labels with the prompt masked; prompts are cut from the left to fit ``max_length``.

    Examples whose response alone does not fit are dropped (their count is in the returned list's length).
    """
    out = []
    eos = tokenizer.eos_token_id
    for example in examples:
        prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [eos]
        room = max_length - len(response_ids)
        if room < 8:
            continue
        prompt_ids = prompt_ids[-room:]
        out.append(
            {
                "input_ids": prompt_ids + response_ids,
                "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
            }
        )
    return out


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int = 0) -> list[list[int]]:
    """Indices in batches of similar length (sorted within shuffled buckets), batches in random order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bucket = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(features: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a batch; padding is masked in attention and labels."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        input_ids[row, :n] = torch.tensor(feature["input_ids"])
        labels[row, :n] = torch.tensor(feature["labels"])
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


class Batches:
    """An iterable of collated batches, reshuffled (deterministically) every epoch."""

    def __init__(
        self, features: list[dict[str, list[int]]], batch_size: int, pad_token_id: int, *, seed: int, shuffle: bool
    ):
        self.features = features
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        lengths = [len(f["input_ids"]) for f in self.features]
        if self.shuffle:
            batches = length_grouped_batches(lengths, self.batch_size, seed=self.seed + self.epoch)
            self.epoch += 1
        else:
            order = sorted(range(len(lengths)), key=lambda i: lengths[i])
            batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in batches:
            yield collate([self.features[i] for i in batch], self.pad_token_id)
