"""The LLM experience model: prompt, generate, parse strictly, retry, fall back to the failure state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from dg_core import ExperiencePrediction, ExperienceQuery
from dg_expmodel._backends import Completion, GenerationBackend, Prompt, Sampling
from dg_expmodel._format import EMPTY_REASONING, PromptOptions, build_messages, render_prompt
from dg_expmodel._parse import (
    DEFAULT_REWARD_RANGE,
    RewardRange,
    check_reward_range,
    failure_prediction,
    parse_response,
)

REASONING_OPEN = "<reasoning>"


@dataclass
class ExperienceModelStats:
    """Counters of an :class:`LLMExperienceModel` since it was made (or ``reset()``)."""

    queries: int = 0
    generations: int = 0
    retries: int = 0
    parse_failures: int = 0
    """Queries answered with the failure state because no attempt parsed."""
    failure_reasons: Counter[str] = field(default_factory=Counter)
    """Parse error codes of every failed attempt."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_prompts: int = 0

    @property
    def parse_failure_rate(self) -> float:
        """Share of queries that ended in the failure state."""
        return self.parse_failures / self.queries if self.queries else 0.0

    def reset(self) -> None:
        """Zero every counter."""
        fresh = ExperienceModelStats()
        self.__dict__.update(fresh.__dict__)


class LLMExperienceModel:
    """An :class:`~dg_core.ExperienceModel` over any :class:`GenerationBackend`.

    Every query is rendered in the versioned format (chat messages if the backend is a chat backend),
    generated in one batched call, and parsed strictly. Unparseable answers are retried up to ``retries``
    times (sampling at ``retry_temperature`` so a retry can differ from a greedy first try); what still fails
    becomes the failure state (unchanged state, reward 0) and is counted in :attr:`stats`.

    Args:
        backend: The generator.
        options: What goes into the prompt (history window, retrieved examples, actions).
        sampling: Decoding settings of the first attempt.
        retries: Extra attempts for unparseable answers.
        retry_temperature: Temperature of the retries.
        reward_range: The rewards the environment can give (an interval ``(low, high)`` or a frozenset of
            values; default [0, 1]); an answer with a reward outside it is unparseable (``reward_out_of_range``).
        prefill: Write the answer's opening (``<reasoning>``; the empty reasoning field in the no-reasoning
            ablation) into the prompt, so the model continues an answer it was trained to write instead of
            choosing how to start (training targets start the same way, so this is what the model learned). Chat
            prompts end with that opening as an assistant message, continued, not answered.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        *,
        options: PromptOptions | None = None,
        sampling: Sampling | None = None,
        retries: int = 1,
        retry_temperature: float = 0.7,
        reward_range: RewardRange = DEFAULT_REWARD_RANGE,
        prefill: bool = True,
    ) -> None:
        self.backend = backend
        self.options = options or PromptOptions()
        self.sampling = sampling or Sampling()
        self.retries = max(0, retries)
        self.retry_temperature = retry_temperature
        self.reward_range = check_reward_range(reward_range)
        self.stats = ExperienceModelStats()
        self.prefill = prefill
        # Plain prompts of the no-reasoning ablation end with the (empty) reasoning field already written.
        self._prefill = EMPTY_REASONING if not self.options.reasoning and not backend.chat else ""
        if prefill:
            self._prefill = EMPTY_REASONING if not self.options.reasoning else REASONING_OPEN

    def with_options(self, options: PromptOptions) -> LLMExperienceModel:
        """The same backend and decoding with other prompt options (for ablations); fresh statistics."""
        return LLMExperienceModel(
            self.backend,
            options=options,
            sampling=self.sampling,
            retries=self.retries,
            retry_temperature=self.retry_temperature,
            reward_range=self.reward_range,
            prefill=self.prefill,
        )

    def prompt(self, query: ExperienceQuery) -> Prompt:
        """The prompt sent for ``query``."""
        if self.backend.chat:
            messages = build_messages(query, self.options)
            if self.prefill:
                messages.append({"role": "assistant", "content": self._prefill})
            return messages
        text = render_prompt(query, self.options)  # ends with the empty reasoning field in the ablation
        return text + REASONING_OPEN if self.prefill and self.options.reasoning else text

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        """One prediction per query; never raises on model output."""
        prompts = [self.prompt(query) for query in queries]
        results: list[ExperiencePrediction | None] = [None] * len(queries)
        last: dict[int, tuple[str, str]] = {}
        pending = list(range(len(queries)))
        self.stats.queries += len(queries)
        for attempt in range(self.retries + 1):
            if not pending:
                break
            sampling = self.sampling
            if attempt:
                self.stats.retries += len(pending)
                sampling = replace(sampling, temperature=self.retry_temperature, seed=(sampling.seed or 0) + attempt)
            completions = self.backend.complete([prompts[i] for i in pending], sampling)
            self.stats.generations += len(pending)
            still: list[int] = []
            for index, completion in zip(pending, completions, strict=True):
                self._account(completion)
                parsed = parse_response(self._answer(completion.text), reward_range=self.reward_range)
                if parsed.prediction is not None:
                    info = {"attempts": attempt + 1, "completion_tokens": completion.completion_tokens}
                    results[index] = parsed.prediction.model_copy(update={"info": info})
                else:
                    self.stats.failure_reasons[parsed.error or "unknown"] += 1
                    last[index] = (parsed.error or "unknown", completion.text)
                    still.append(index)
            pending = still
        for index in pending:
            self.stats.parse_failures += 1
            reason, raw = last[index]
            results[index] = failure_prediction(queries[index], f"unparseable model output ({reason})", raw=raw)
        return [result for result in results if result is not None]

    def _answer(self, text: str) -> str:
        """The whole answer: the prefilled opening and its continuation. A backend that answered a new turn
        instead of continuing (an OpenAI-compatible server without ``continue_final_message``) wrote the
        opening itself: it is not doubled."""
        if self._prefill and text.lstrip().startswith(REASONING_OPEN):
            return text
        return self._prefill + text

    def _account(self, completion: Completion) -> None:
        self.stats.prompt_tokens += completion.prompt_tokens
        self.stats.completion_tokens += completion.completion_tokens
        self.stats.truncated_prompts += int(completion.truncated_prompt)
