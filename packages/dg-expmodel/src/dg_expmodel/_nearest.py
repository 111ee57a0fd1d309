"""The non-parametric experience model: the outcome of the identical real transition, else the failure state; and
the exact-match-first wrapper: that outcome where one was retrieved, any other model's answer elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dg_core import ExperienceModel, ExperiencePrediction, ExperienceQuery, Step
from dg_expmodel._format import PromptOptions
from dg_expmodel._model import ExperienceModelStats
from dg_expmodel._wrapper import WrappedModel

NO_MATCH = "no retrieved real transition has this state and action"


def _same_transition_start(step: Step, query: ExperienceQuery) -> bool:
    return step.state.text == query.state.text and step.action.text == query.action.text


def exact_match(query: ExperienceQuery, max_retrieved: int | None) -> ExperiencePrediction | None:
    """The outcome of a real transition among the first ``max_retrieved`` retrieved for ``query`` that has the same
    state text and action (copied: next state, reward, done, success), or ``None`` when there is none
    (``max_retrieved=None`` searches them all)."""
    for step in query.retrieved[:max_retrieved]:
        if _same_transition_start(step, query):
            success = step.info.get("success")
            return ExperiencePrediction(
                reasoning="The same action from the same state was observed in the real environment.",
                next_state=step.next_state,
                reward=step.reward,
                done=step.done and not step.truncated,
                success=success if isinstance(success, bool) else None,
                info={"nearest": "match"},
            )
    return None


class NearestExperienceModel:
    """Answers from the replay buffer alone: the baseline every learned experience model must beat.

    For each query it looks through the real transitions retrieved for it (the synthetic environment's
    retriever puts them in ``query.retrieved``; ``options.max_retrieved`` of them are read): one with the same
    state text and the same action gives its outcome (next state, reward, done, success), copied. Anything else
    gets the failure state (the state unchanged, reward 0, not done), as the paper prescribes for an action the
    model cannot ground. It never generates, so it never fails to parse; :attr:`matched` and :attr:`fallbacks`
    count how often each answer was given.

    Args:
        options: ``max_retrieved`` bounds the retrieved transitions read (0 reads none: every answer is the
            failure state); ``history_window`` is what the synthetic env passes along (unused here).
    """

    kind = "nearest"

    def __init__(self, options: PromptOptions | None = None) -> None:
        self.options = options or PromptOptions()
        self.stats = ExperienceModelStats()
        self.matched = 0
        self.fallbacks = 0

    def with_options(self, options: PromptOptions) -> NearestExperienceModel:
        """The same model reading ``options`` (the audit's ablations)."""
        return NearestExperienceModel(options)

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        """One prediction per query."""
        self.stats.queries += len(queries)
        return [self._answer(query) for query in queries]

    def _answer(self, query: ExperienceQuery) -> ExperiencePrediction:
        found = exact_match(query, self.options.max_retrieved)
        if found is not None:
            self.matched += 1
            return found
        self.fallbacks += 1
        return ExperiencePrediction(
            reasoning=f"Failure state: {NO_MATCH}.",
            next_state=query.state,
            reward=0.0,
            done=False,
            info={"nearest": "fallback"},
        )


class ExactFirstModel(WrappedModel):
    """Retrieval that puts exact matches first: a query whose identical real transition (same state text and
    action) is among its retrieved ones gets that transition's outcome, copied as :class:`NearestExperienceModel`
    copies it; every other query goes to the wrapped model, in one batch.

    A learned model re-derives, token by token, transitions the buffer already holds; on the tasks its data came
    from (what synthetic training plays) those are most steps, and a copy is exact. Its next states, rewards and
    parse status elsewhere stay the wrapped model's; ``stats`` are the wrapped model's and so count the delegated
    queries only; :attr:`matched` / :attr:`delegated` count the two answers.
    """

    def __init__(self, model: ExperienceModel) -> None:
        super().__init__(model)
        self.kind = f"exact-first+{getattr(model, 'kind', type(model).__name__)}"
        self.matched = 0
        self.delegated = 0

    def with_options(self, options: Any) -> ExactFirstModel:
        """The wrapped model under ``options`` (the audit's ablations), still exact-match first; its
        ``max_retrieved`` also bounds the retrieved steps searched here."""
        return ExactFirstModel(self.wrapped_with(options))

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        """Copied outcomes where an exact match was retrieved, the wrapped model's predictions elsewhere."""
        options = self.options
        limit = options.max_retrieved if options is not None else None  # no options: every retrieved step
        answers: list[ExperiencePrediction | None] = [exact_match(query, limit) for query in queries]
        rest = [index for index, answer in enumerate(answers) if answer is None]
        self.matched += len(queries) - len(rest)
        self.delegated += len(rest)
        if rest:
            for index, prediction in zip(rest, self.model.predict([queries[i] for i in rest]), strict=True):
                answers[index] = prediction
        return [answer for answer in answers if answer is not None]
