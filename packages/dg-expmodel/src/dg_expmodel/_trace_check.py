"""A rule-based check of one reasoning trace against the real transition it explains.

An LLM teacher should explain *why* the environment answered as it did. Small teachers often do
something else: they loop, stop at the token cap, restate the next state, or claim a win the reward
denies. :func:`check_trace` names the first of these faults (one of :data:`REJECT_REASONS`) or returns
``None``; :func:`copies_outcome` is the outcome-copy judgement alone, so that a benchmark can apply it to
rule-written and LLM-written traces alike.

The rules, in the order :func:`check_trace` applies them:

- ``empty``: no word at all.
- ``degenerate``: generation stopped at the token cap (``finished=False``: the trace is cut mid-way), fewer
  than 3 words, a word 4-gram that occurs 3 times or more, a phrase of 8 words or a sentence of 3+ words that
  occurs twice, or, over 20+ words, fewer than 35% distinct words.
- ``contradicts_outcome`` (conservative: only plain claims count; a sentence holding a hypothetical marker
  such as *if*, *would*, *will*, *once*, *to win* is never a claim): with reward 0, the trace claims a win
  ("you win", "the task is complete", "accomplishes the goal"); with reward > 0, it claims a loss ("you lose",
  "fails to complete the task", "no reward"), or, when the episode ended, a negated success ("the task is not
  complete"); or the trace states reward values ("reward is 1", "reward: 0") and none of them is the real
  reward.
- ``copies_outcome``: see :func:`copies_outcome`.

The check judges form, not truth: a fluent trace with a wrong cause passes.
"""

from __future__ import annotations

import re
from collections import Counter

from dg_core import Step
from dg_expmodel._audit_metrics import content_words, words

REJECT_REASONS = ("empty", "degenerate", "contradicts_outcome", "copies_outcome")
"""Why a trace is rejected, in the order the check tests them."""

CAUSAL_CONNECTIVES = (
    "because",
    "since",
    "so",
    "therefore",
    "thus",
    "hence",
    "consequently",
    "as a result",
    "due to",
    "thanks to",
    "requires",
    "required",
    "require",
    "needs",
    "cannot",
    "can't",
    "can not",
    "unless",
    "only if",
    "if",
    "otherwise",
    "in order to",
    "which means",
    "this means",
    "means that",
    "leads to",
    "results in",
    "causes",
    "caused by",
    "prevents",
    "allows",
)
"""Words and phrases that give a reason; a trace holding one (that the transition's own text does not use)
explains rather than copies."""

COPY_SHARE = 0.75
"""A trace without a causal connective copies the outcome when at least this share of its distinct content
words occur in the transition or only describe one (see :func:`copies_outcome`)."""

MIN_WORDS = 3
REPEATED_NGRAM = 4
"""Length of the word n-grams whose repetition marks a loop."""
MAX_NGRAM_REPEATS = 2
"""A loop: some n-gram occurs more often than this."""
REPEATED_PHRASE = 8
"""A loop too: a phrase of this many words occurs twice."""
MIN_DISTINCT_RATIO = 0.35
"""Over :data:`DISTINCT_RATIO_MIN_WORDS` words or more, fewer distinct words than this share is a loop."""
DISTINCT_RATIO_MIN_WORDS = 20

# Words that describe a transition rather than explain it: the labels of the annotation request ("Reward: 0",
# "Done: false"...) and the vocabulary of saying *that* something changed or what the outcome is.
_DESCRIPTIVE_TEXT = """
state states next previous current currently available unavailable actions action free text reward rewards done
true false observation observations observed observe new newly now longer still same unchanged change changes
changed appears appeared vanishes vanished disappears disappeared shows shown visible agent player issues issued
episode episodes task step steps ends ended end continues goes finished accomplishes accomplished earns yields
receives gets remains stays effect
"""
# Function words that carry no content (besides the audits' stopwords, which drop names like 'east'); words are
# split at apostrophes, hence the contraction stems.
_FUNCTION_TEXT = """
about above after again all also am any because been before being both could each even every few he her hers
him his how just more most much must now once only other our ours own same she should some such their theirs
them these they those through too very was we were what when where which while who whom why will with would
yet yours re ve ll isn aren doesn don didn wasn weren hasn haven
"""
_DESCRIPTIVE_WORDS = frozenset(_DESCRIPTIVE_TEXT.split())
_FUNCTION_WORDS = frozenset(_FUNCTION_TEXT.split())
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_HYPOTHETICAL = re.compile(
    r"\b(?:if|would|will|could|should|might|may|once|when|whenever|until|unless|after|before|must|need|needs|"
    r"try|tries|trying|want|wants|goal\s+is\s+to|"
    r"(?<!fail\s)(?<!fails\s)(?<!failed\s)to\s+(?:win|complete|accomplish|achieve|solve|finish))\b"
)
_NEGATION = re.compile(r"\b(?:not|no|never|without|nor|yet|cannot)\b|n't\b")
_TASK = r"(?:task|goal|quest|game|objective|mission)"
_NOT = r"(?:(?:not|never|yet|still|now|just)\s+)*"
_SUCCESS = re.compile(
    rf"\b(?:you|agent|player|it|we)\s+(?:(?:have|has|had|did|does|do|hasn't|haven't|didn't|doesn't|don't)\s+)?{_NOT}"
    r"(?:won|wins|win)\b(?!')"
    rf"|\b{_TASK}\s+(?:is|was|has\s+been|isn't|wasn't)\s+{_NOT}"
    r"(?:complete|completed|accomplished|achieved|solved|won|finished)\b"
    r"|\b(?:accomplish|accomplishes|accomplished|complete|completes|completed|achieve|achieves|achieved|solve|"
    rf"solves|solved|wins|won)\s+the\s+{_TASK}\b"
)
_FAILURE = re.compile(
    r"\b(?:you|agent|player|it|we)\s+(?:have\s+|has\s+|just\s+)?(?:lost|loses|lose)\b"
    rf"|\b{_TASK}\s+(?:is|was|has\s+been)\s+(?:failed|lost)\b"
    r"|\bfail(?:s|ed)?\s+(?:the\s+" + _TASK + r"|to\s+(?:accomplish|complete|win|solve|achieve|finish))\b"
    r"|\b(?:no|zero)\s+reward\b|\bearns\s+nothing\b"
)
_NUMBER_WORDS = {"zero": 0.0, "one": 1.0}
_REWARD_VALUE = re.compile(
    r"\breward\s*(?:(?:is|was|of|stays|remains|equals|becomes)\s+)?(?:[:=]\s*)?(-?\d+(?:\.\d+)?|zero|one)\b(?![.,]\d)"
)


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w'])" + r"\s+".join(re.escape(part) for part in phrase.split()) + r"(?![\w'])")


_CONNECTIVE_PATTERNS = {phrase: _phrase_pattern(phrase) for phrase in CAUSAL_CONNECTIVES}


def _sentences(text: str) -> list[str]:
    return [part.strip().lower() for part in _SENTENCE.split(text) if part.strip()]


def transition_text(step: Step) -> str:
    """What an annotator is shown of a transition: state, available actions, action, next state, reward, done."""
    actions = step.state.available_actions
    listed = " | ".join(actions) if actions is not None else "free text"
    return (
        f"State: {step.state.text}\nAvailable actions: {listed}\nAction: {step.action.text}\n"
        f"Next state: {step.next_state.text}\nReward: {step.reward:g}\nDone: {'true' if step.done else 'false'}"
    )


def _content(text: str) -> set[str]:
    return {word for word in content_words(text) if word not in _FUNCTION_WORDS}


def connectives_in(trace: str, step: Step | None = None) -> list[str]:
    """The causal connectives of ``trace``, leaving out those the transition's own text already uses."""
    lowered = trace.lower()
    shown = transition_text(step).lower() if step is not None else ""
    return [
        phrase
        for phrase, pattern in _CONNECTIVE_PATTERNS.items()
        if pattern.search(lowered) and not (shown and pattern.search(shown))
    ]


def copied_share(trace: str, step: Step) -> float:
    """Share of the trace's distinct content words that occur in the transition it explains (0 for none)."""
    found = _content(trace)
    if not found:
        return 0.0
    given = (
        _content(transition_text(step))
        | _content(" ".join(step.next_state.available_actions or ()))
        | _DESCRIPTIVE_WORDS
    )
    return len(found & given) / len(found)


def copies_outcome(trace: str, step: Step) -> bool:
    """Whether ``trace`` only restates the transition instead of explaining it.

    True when the trace has content words, no causal connective (:data:`CAUSAL_CONNECTIVES`; one that the
    transition's text also uses does not count, since copying it proves nothing), and at least
    :data:`COPY_SHARE` of its distinct content words (stopwords, function words and numbers left out) occur in
    the transition: the state, the available actions, the action, the next state and its available actions, and
    the outcome labels of the annotation request (reward, done, true, false...).
    """
    if connectives_in(trace, step):
        return False
    found = _content(trace)
    return bool(found) and copied_share(trace, step) >= COPY_SHARE


def _degenerate(trace: str, finished: bool) -> bool:
    if not finished:
        return True
    tokens = words(trace)
    if len(tokens) < MIN_WORDS:
        return True
    grams = Counter(tuple(tokens[i : i + REPEATED_NGRAM]) for i in range(len(tokens) - REPEATED_NGRAM + 1))
    if grams and max(grams.values()) > MAX_NGRAM_REPEATS:
        return True
    phrases = Counter(tuple(tokens[i : i + REPEATED_PHRASE]) for i in range(len(tokens) - REPEATED_PHRASE + 1))
    if phrases and max(phrases.values()) > 1:
        return True
    sentences = Counter(s for s in _sentences(trace) if len(words(s)) >= MIN_WORDS)
    if sentences and max(sentences.values()) > 1:
        return True
    return len(tokens) >= DISTINCT_RATIO_MIN_WORDS and len(set(tokens)) / len(tokens) < MIN_DISTINCT_RATIO


def contradicts_outcome(trace: str, step: Step) -> bool:
    """Whether a plain claim of ``trace`` (never a hypothetical one) denies the transition's reward or outcome."""
    stated: list[float] = []
    for sentence in _sentences(trace):
        if _HYPOTHETICAL.search(sentence):
            continue
        negated = bool(_NEGATION.search(sentence))
        success = bool(_SUCCESS.search(sentence))
        if step.reward <= 0 and success and not negated:
            return True
        if step.reward > 0 and (_FAILURE.search(sentence) or (step.done and success and negated)):
            return True
        stated += [
            _NUMBER_WORDS[value] if value in _NUMBER_WORDS else float(value)
            for value in _REWARD_VALUE.findall(sentence)
        ]
    return bool(stated) and all(abs(value - step.reward) > 1e-6 for value in stated)


def check_trace(trace: str, step: Step, *, finished: bool = True) -> str | None:
    """The first reason in :data:`REJECT_REASONS` that ``trace`` fails for ``step``, or ``None`` if it passes.

    Args:
        trace: The reasoning to check.
        step: The real transition it explains.
        finished: False when generation stopped at the token cap (the trace is cut: ``degenerate``).
    """
    if not words(trace):
        return "empty"
    if _degenerate(trace, finished):
        return "degenerate"
    if contradicts_outcome(trace, step):
        return "contradicts_outcome"
    if copies_outcome(trace, step):
        return "copies_outcome"
    return None
