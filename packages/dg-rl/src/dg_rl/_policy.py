"""A causal LM as a dg :class:`~dg_core.Policy`, in *choose* or *generate* mode.

*choose*: every available action is scored by its log-likelihood after the prompt and the action is
sampled from ``softmax(score / temperature)``; its log-probability is exact, which is what lets a tiny
model learn on CPU. *generate*: the model writes the action; the text is matched against the available
actions, and what matches none is counted and sent as written (the environment answers it as an
invalid action).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from dg_core import Action, ConfigError, PolicyRequest
from dg_rl._prompt import PromptFormat, parse_action
from dg_rl._sampler import RolloutSampler, TransformersSampler

__all__ = ["ActionMode", "Decision", "LMPolicy", "ScoreReduction"]

ActionMode = Literal["choose", "generate"]
ScoreReduction = Literal["mean", "sum"]


@dataclass
class Decision:
    """What the policy decided for one request, with the token ids and log-probs the loss needs."""

    action: Action
    """The action sent to the environment."""
    prompt_ids: list[int]
    """Token ids of the prompt (env and task text: never trained on)."""
    completion_ids: list[int]
    """Token ids the policy produced (generate) or chose (choose); they carry the loss."""
    logprobs: list[float]
    """Generate: log-prob of each completion token. Choose: one value, the log-prob of the choice."""
    candidates: list[list[int]] = field(default_factory=list)
    """Choose mode: the token ids of every available action, in the state's order."""
    chosen: int = -1
    """Choose mode: index of the chosen candidate."""
    parsed: bool = True
    """Generate mode: whether the text named an available action."""
    turn_truncated: bool = False
    """The completion (or a candidate) hit the per-turn token budget."""
    prompt_truncated: bool = False
    """History was dropped or the prompt cut to fit the prompt budget."""


class LMPolicy:
    """Any causal LM (``AutoModelForCausalLM``) as a :class:`~dg_core.Policy`.

    Args:
        model: The causal LM (it may be wrapped by peft for LoRA).
        tokenizer: Its tokenizer; needs ``pad_token_id`` and ``eos_token_id``.
        mode: ``"choose"`` or ``"generate"``.
        temperature: Sampling temperature of both modes.
        prompt_format: How requests are rendered.
        max_turn_tokens: Per-turn budget of policy tokens (generated, or of one candidate action).
        max_prompt_tokens: Longest prompt; older history is dropped first, then the prompt is cut on the left.
        policy_id: Name recorded in trajectories.
        seed: Seed of the sampling generator.
        score_batch_rows: Most rows scored in one forward pass in choose mode.
        score_reduction: Choose mode: an action's score is the ``"mean"`` (default) or ``"sum"`` of its
            token log-probs. The sum favours short actions by orders of magnitude in an untrained model;
            the mean starts near uniform. Either way the choice distribution and its log-probs are exact.
        chat: Render prompts through the tokenizer's chat template (history as chat turns). ``None`` (default)
            uses it whenever the tokenizer has one (instruct models); tiny tokenizers have none. An action is
            an assistant turn: its ids end with the tokenizer's eos, which for chat models is the end-of-turn
            token (``<|im_end|>`` for SmolLM2), so what the policy is scored on is what the template writes.
        sampler: What samples completions and scores candidates (:class:`~dg_rl.RolloutSampler`). ``None``
            (default): a :class:`~dg_rl.TransformersSampler` over ``model``, which reads the live weights.
            Another sampler (``dg_rl.VLLMSampler``) is sent ``model``'s weights before the first decision and
            before the first decision after each :meth:`after_update`.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerFast,
        *,
        mode: ActionMode = "choose",
        temperature: float = 1.0,
        prompt_format: PromptFormat | None = None,
        max_turn_tokens: int = 32,
        max_prompt_tokens: int = 512,
        policy_id: str = "lm",
        seed: int = 0,
        score_batch_rows: int = 256,
        score_reduction: ScoreReduction = "mean",
        chat: bool | None = None,
        sampler: RolloutSampler | None = None,
    ) -> None:
        if mode not in ("choose", "generate"):
            raise ConfigError(f"mode must be 'choose' or 'generate', got {mode!r}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer needs a pad token and an eos token")
        self.model = model
        self.tokenizer = tokenizer
        self.mode: ActionMode = mode
        self.temperature = temperature
        self.prompt_format = prompt_format or PromptFormat()
        self.max_turn_tokens = max_turn_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.score_batch_rows = score_batch_rows
        if score_reduction not in ("mean", "sum"):
            raise ConfigError(f"score_reduction must be 'mean' or 'sum', got {score_reduction!r}")
        self.score_reduction: ScoreReduction = score_reduction
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat and not has_template:
            raise ConfigError("chat=True needs a tokenizer with a chat template")
        self.chat = has_template if chat is None else chat
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self._policy_id = policy_id
        self.generator = torch.Generator().manual_seed(seed)
        self.sampler: RolloutSampler = sampler or TransformersSampler(
            model, pad_id=self.pad_id, score_batch_rows=score_batch_rows
        )
        # The sampler is sent the weights before it is first used, and after each update (lazily, so that a
        # sampler that copies weights copies them once per collection, inside whatever context gathers them).
        self._weights_changed = True

    @property
    def policy_id(self) -> str:
        """Name recorded in trajectories."""
        return self._policy_id

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def after_update(self) -> None:
        """Say that ``model``'s weights changed (an optimiser step): the sampler gets them before it next samples.

        The Lightning modules call it after every optimiser step; call it after changing the weights by hand.
        """
        self._weights_changed = True

    def release_sampler_memory(self) -> None:
        """Let the sampler free the accelerator memory it holds (training runs next)."""
        self.sampler.release_memory()

    def _ready_sampler(self) -> None:
        if self._weights_changed or self.sampler.synced_model is not self.model:
            self.sampler.sync_weights(self.model)
            self._weights_changed = False

    def act(self, requests: Sequence[PolicyRequest]) -> list[Action]:
        """One action per request (the :class:`~dg_core.Policy` protocol)."""
        return [decision.action for decision in self.decide(requests)]

    def encode_prompt(self, request: PolicyRequest) -> tuple[list[int], bool]:
        """Token ids of the prompt for ``request`` within the prompt budget, and whether it was cut."""
        keep = min(self.prompt_format.history_turns, len(request.history))
        while True:
            ids = self._prompt_ids(request, keep)
            if len(ids) <= self.max_prompt_tokens:
                return ids, keep < min(self.prompt_format.history_turns, len(request.history))
            if keep == 0:
                return ids[len(ids) - self.max_prompt_tokens :], True
            keep -= 1

    def _prompt_ids(self, request: PolicyRequest, history_turns: int) -> list[int]:
        if not self.chat:
            ids: list[int] = self.tokenizer(self.prompt_format.render(request, history_turns=history_turns))[
                "input_ids"
            ]
            return ids
        text = self.tokenizer.apply_chat_template(
            self.prompt_format.messages(request, history_turns=history_turns),
            tokenize=False,
            add_generation_prompt=True,
        )
        chat_ids: list[int] = self.tokenizer(str(text), add_special_tokens=False)["input_ids"]
        return chat_ids

    def encode_action(self, text: str) -> tuple[list[int], bool]:
        """Token ids of an action (ending with eos) within the per-turn budget, and whether it was cut."""
        ids: list[int] = [*self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"], self.eos_id]
        if len(ids) > self.max_turn_tokens:
            return ids[: self.max_turn_tokens], True
        return ids, False

    @torch.no_grad()
    def decide(
        self, requests: Sequence[PolicyRequest], *, max_new_tokens: Sequence[int] | None = None
    ) -> list[Decision]:
        """Decide every request, recording token ids and behaviour log-probs.

        Args:
            requests: One per episode that must act.
            max_new_tokens: Generate mode: per-request token budget (defaults to ``max_turn_tokens``).
        """
        if not requests:
            return []
        encoded = [self.encode_prompt(request) for request in requests]
        self._ready_sampler()
        if self.mode == "choose":
            return self._choose(requests, encoded)
        budgets = list(max_new_tokens) if max_new_tokens is not None else [self.max_turn_tokens] * len(requests)
        return self._generate(requests, encoded, budgets)

    def _choose(self, requests: Sequence[PolicyRequest], encoded: list[tuple[list[int], bool]]) -> list[Decision]:
        rows_prompt: list[list[int]] = []
        rows_action: list[list[int]] = []
        per_request: list[list[list[int]]] = []
        cut_turn: list[bool] = []
        for request, (prompt, _) in zip(requests, encoded, strict=True):
            actions = request.state.available_actions
            if not actions:
                raise ConfigError(
                    f"choose mode needs available actions; task {request.task.id!r} offers none "
                    "(use mode='generate' for free-text environments)"
                )
            candidates = [self.encode_action(text) for text in actions]
            per_request.append([ids for ids, _ in candidates])
            cut_turn.append(any(cut for _, cut in candidates))
            for ids, _ in candidates:
                rows_prompt.append(prompt)
                rows_action.append(ids)
        scores = self.candidate_scores(rows_prompt, rows_action)
        decisions = []
        offset = 0
        for index, request in enumerate(requests):
            count = len(per_request[index])
            log_dist = torch.log_softmax(scores[offset : offset + count] / self.temperature, dim=0)
            offset += count
            chosen = int(torch.multinomial(log_dist.exp(), 1, generator=self.generator).item())
            actions = request.state.available_actions or ()
            decisions.append(
                Decision(
                    action=Action(text=actions[chosen]),
                    prompt_ids=encoded[index][0],
                    completion_ids=per_request[index][chosen],
                    logprobs=[float(log_dist[chosen])],
                    candidates=per_request[index],
                    chosen=chosen,
                    turn_truncated=cut_turn[index],
                    prompt_truncated=encoded[index][1],
                )
            )
        return decisions

    @torch.no_grad()
    def candidate_scores(self, prompts: list[list[int]], actions: list[list[int]]) -> torch.Tensor:
        """Score (see ``score_reduction``) of each ``actions[i]`` after ``prompts[i]``, float32 on the CPU."""
        self._ready_sampler()
        return self.sampler.score(prompts, actions, reduction=self.score_reduction)

    def _generate(
        self, requests: Sequence[PolicyRequest], encoded: list[tuple[list[int], bool]], budgets: list[int]
    ) -> list[Decision]:
        prompts = [prompt for prompt, _ in encoded]
        budgets = [max(0, min(budget, self.max_turn_tokens)) for budget in budgets]
        samples = self.sampler.sample(
            prompts, budgets, temperature=self.temperature, stop_token_ids=(self.eos_id,), generator=self.generator
        )
        decisions = []
        for index, request in enumerate(requests):
            ids = samples[index].token_ids
            text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
            action_text = parse_action(text, request.state.available_actions)
            decisions.append(
                Decision(
                    action=Action(text=action_text if action_text is not None else text.strip(), raw=text),
                    prompt_ids=prompts[index],
                    completion_ids=ids,
                    logprobs=samples[index].logprobs,
                    parsed=action_text is not None,
                    turn_truncated=not samples[index].stopped,
                    prompt_truncated=encoded[index][1],
                )
            )
        return decisions
