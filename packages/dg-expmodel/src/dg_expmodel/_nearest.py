"""The non-parametric experience model: the outcome of the identical real transition, else the failure state."""

from __future__ import annotations

from collections.abc import Sequence

from dg_core import ExperiencePrediction, ExperienceQuery, Step
from dg_expmodel._format import PromptOptions
from dg_expmodel._model import ExperienceModelStats

NO_MATCH = "no retrieved real transition has this state and action"


def _same_transition_start(step: Step, query: ExperienceQuery) -> bool:
    return step.state.text == query.state.text and step.action.text == query.action.text


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
        candidates = query.retrieved[: self.options.max_retrieved]
        for step in candidates:
            if _same_transition_start(step, query):
                self.matched += 1
                success = step.info.get("success")
                return ExperiencePrediction(
                    reasoning="The same action from the same state was observed in the real environment.",
                    next_state=step.next_state,
                    reward=step.reward,
                    done=step.done and not step.truncated,
                    success=success if isinstance(success, bool) else None,
                    info={"nearest": "match"},
                )
        self.fallbacks += 1
        return ExperiencePrediction(
            reasoning=f"Failure state: {NO_MATCH}.",
            next_state=query.state,
            reward=0.0,
            done=False,
            info={"nearest": "fallback"},
        )
