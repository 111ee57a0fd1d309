"""Metrics of experience-model fidelity: functions over texts, sets, labels and embeddings.

The audit's counted metrics go through torchmetrics (``dg-expmodel[audit]``): the confusion counts of success and
done (precision, recall, F1, accuracy) accumulate in ``BinaryStatScores`` and the audit's means (reward accuracy,
so eps_R, token F1, so eps_P) in a float64 ``MeanMetric``. Both reduce across ranks when they are computed under
``torch.distributed``, so an audit whose steps are split over processes reports the whole set's numbers
(:func:`binary_stat_scores`, :func:`exact_mean`, :meth:`BinaryStats.from_metric`). The rates are the same
definitions, to the bit, as before torchmetrics: precision, recall and F1 are computed from the summed integer
counts in Python (torchmetrics' own ``BinaryPrecision`` divides in float32 and has one ``zero_division`` for
precision, recall and F1 alike), and a float64 mean of 0/1 values is exactly hits / total.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from dg_core import require

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORD_TEXT = """
a an the and or of to in on at into onto from with for by it its this that is are was be been you your
see there here nothing not no can cannot do does did has have had as but if then than so up down out
over under one two three room rooms take go look walk east west north south i me my
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def words(text: str) -> list[str]:
    """Lower-case word tokens."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    """Words that name things (stopwords and numbers removed) — the entities the audits track."""
    return {w for w in words(text) if w not in _STOPWORDS and not w.isdigit() and len(w) > 1}


def token_f1(predicted: str, reference: str) -> float:
    """Bag-of-words F1 between two texts (1.0 for two empty texts)."""
    p, r = Counter(words(predicted)), Counter(words(reference))
    if not p and not r:
        return 1.0
    overlap = sum((p & r).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def set_f1(predicted: Iterable[str] | None, reference: Iterable[str] | None) -> float:
    """F1 between two action sets; ``None`` (free text) matches only ``None``; two empty sets match."""
    if predicted is None or reference is None:
        return 1.0 if predicted is None and reference is None else 0.0
    p, r = set(predicted), set(reference)
    if not p and not r:
        return 1.0
    overlap = len(p & r)
    if overlap == 0:
        return 0.0
    return 2 * overlap / (len(p) + len(r))


@dataclass(frozen=True)
class BinaryStats:
    """Confusion counts of a binary prediction, with the usual rates."""

    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int

    @classmethod
    def of(cls, predicted: Sequence[bool], actual: Sequence[bool]) -> BinaryStats:
        """Count the four outcomes (every prediction is given here: nothing is reduced across ranks)."""
        metric = binary_stat_scores(sync_on_compute=False)
        update_binary(metric, predicted, actual)
        return cls.from_metric(metric)

    @classmethod
    def from_metric(cls, metric: Any) -> BinaryStats:
        """The counts of a :func:`binary_stat_scores` metric (summed over the ranks when it syncs on compute);
        a metric never updated counts nothing."""
        if not metric.update_called:
            return cls(0, 0, 0, 0)
        true_positive, false_positive, true_negative, false_negative, _support = (
            int(count) for count in metric.compute().tolist()
        )
        return cls(true_positive, false_positive, false_negative, true_negative)

    @property
    def total(self) -> int:
        """Number of predictions."""
        return self.true_positive + self.false_positive + self.false_negative + self.true_negative

    @property
    def positives(self) -> int:
        """Number of actual positives (the rare class: successful final steps, episode ends)."""
        return self.true_positive + self.false_negative

    @property
    def accuracy(self) -> float:
        """Share predicted correctly."""
        return (self.true_positive + self.true_negative) / self.total if self.total else 0.0

    @property
    def precision(self) -> float:
        """Of the predicted positives, the share that were positive (1.0 if none was predicted)."""
        predicted = self.true_positive + self.false_positive
        return self.true_positive / predicted if predicted else 1.0

    @property
    def recall(self) -> float:
        """Of the actual positives, the share predicted (1.0 if there were none)."""
        actual = self.true_positive + self.false_negative
        return self.true_positive / actual if actual else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0

    def as_dict(self) -> dict[str, float]:
        """Counts and rates, for reports."""
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "positives": self.positives,
            "true_positive": self.true_positive,
            "false_positive": self.false_positive,
            "false_negative": self.false_negative,
            "true_negative": self.true_negative,
        }


def _torchmetrics() -> ModuleType:
    return require("torchmetrics", distribution="dg-expmodel", extra="audit", purpose="The audit's metrics")


def binary_stat_scores(**kwargs: Any) -> Any:
    """torchmetrics' ``BinaryStatScores``: confusion counts accumulated by :func:`update_binary` (or its own
    ``update(preds, target)``), summed across ranks when computed; read them with :meth:`BinaryStats.from_metric`.
    ``kwargs`` go to the metric (``sync_on_compute``, ``process_group``...)."""
    return _torchmetrics().classification.BinaryStatScores(**kwargs)


def update_binary(metric: Any, predicted: Sequence[bool], actual: Sequence[bool]) -> None:
    """Add predicted / actual pairs of booleans to a :func:`binary_stat_scores` metric."""
    torch = require("torch", distribution="dg-expmodel", extra="audit", purpose="The audit's metrics")
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions for {len(actual)} actual outcomes")
    if predicted:  # torchmetrics cannot reshape an empty batch
        metric.update(torch.tensor([bool(p) for p in predicted]).long(), torch.tensor([bool(a) for a in actual]).long())


def exact_mean(**kwargs: Any) -> Any:
    """torchmetrics' ``MeanMetric`` accumulating in float64, reduced across ranks when computed: the mean of 0/1
    values is then exactly hits / total (a Python division), and a mean of scores matches ``statistics.mean`` to
    about 1e-16. ``kwargs`` go to the metric."""
    torch = require("torch", distribution="dg-expmodel", extra="audit", purpose="The audit's metrics")
    return _torchmetrics().aggregation.MeanMetric(nan_strategy="error", **kwargs).set_dtype(torch.float64)


def mean_of(values: Iterable[float]) -> float:
    """The mean of ``values`` through :func:`exact_mean`, in this process (all values are given here: nothing is
    reduced across ranks). No values is an error (``ValueError``), as it was with ``statistics.mean``."""
    torch = require("torch", distribution="dg-expmodel", extra="audit", purpose="The audit's metrics")
    data = [float(value) for value in values]
    if not data:
        raise ValueError("mean_of needs at least one value")
    metric = exact_mean(sync_on_compute=False)
    metric.update(torch.tensor(data, dtype=torch.float64))
    return float(metric.compute())


@dataclass(frozen=True)
class TagStats:
    """Irreversible-action tags predicted for next states against the real ones, as set-level precision / recall.

    Precision and recall are over the transitions whose real next state lists irreversible actions, pooled over
    their tags (micro-averaged): of the tags predicted for them, the share that are real, and of their real tags,
    the share predicted. Tags predicted where the real next state has none are counted apart (false alarms).
    """

    transitions: int
    """Transitions whose real next state lists irreversible actions."""
    real_tags: int
    """Irreversible actions listed by those real next states."""
    predicted_tags: int
    """Irreversible actions predicted for those transitions."""
    correct_tags: int
    """Predicted ones that the real next state lists too."""
    exact: int
    """Transitions whose predicted set equals the real one."""
    false_alarms: int
    """Transitions whose real next state lists none but whose prediction lists some."""
    untagged: int
    """Transitions whose real next state lists none."""

    @classmethod
    def of(cls, predicted: Sequence[Iterable[str]], actual: Sequence[Iterable[str]]) -> TagStats:
        """Compare the predicted and real tag sets of each transition."""
        transitions = real_tags = predicted_tags = correct = exact = false_alarms = untagged = 0
        for predicted_tags_of, actual_tags_of in zip(predicted, actual, strict=True):
            p, a = set(predicted_tags_of), set(actual_tags_of)
            if not a:
                untagged += 1
                false_alarms += bool(p)
                continue
            transitions += 1
            real_tags += len(a)
            predicted_tags += len(p)
            correct += len(p & a)
            exact += p == a
        return cls(transitions, real_tags, predicted_tags, correct, exact, false_alarms, untagged)

    @property
    def precision(self) -> float | None:
        """Of the tags predicted where real ones exist, the share that are real (``None``: no such transition;
        1.0 when none was predicted, as in :class:`BinaryStats`)."""
        if not self.transitions:
            return None
        return self.correct_tags / self.predicted_tags if self.predicted_tags else 1.0

    @property
    def recall(self) -> float | None:
        """Of the real tags, the share predicted (``None``: no transition has any)."""
        return self.correct_tags / self.real_tags if self.transitions else None

    @property
    def false_alarm_rate(self) -> float | None:
        """Of the transitions without real tags, the share given some (``None``: every transition has tags)."""
        return self.false_alarms / self.untagged if self.untagged else None

    def as_dict(self) -> dict[str, float | int | None]:
        """Counts and rates, for reports."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "exact_set_match": self.exact / self.transitions if self.transitions else None,
            "false_alarm_rate": self.false_alarm_rate,
            "transitions": self.transitions,
            "real_tags": self.real_tags,
            "predicted_tags": self.predicted_tags,
            "correct_tags": self.correct_tags,
            "false_alarms": self.false_alarms,
        }


def _rbf_kernel(x: np.ndarray, y: np.ndarray, bandwidth: float) -> np.ndarray:
    distances = np.sum(x**2, axis=1)[:, None] + np.sum(y**2, axis=1)[None, :] - 2 * x @ y.T
    kernel: np.ndarray = np.exp(-np.maximum(distances, 0.0) / (2 * bandwidth**2))
    return kernel


def _mmd2(kernel: np.ndarray, n: int) -> float:
    xx, yy, xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    m = kernel.shape[0] - n
    if n < 2 or m < 2:
        return 0.0
    sum_xx = (xx.sum() - np.trace(xx)) / (n * (n - 1))
    sum_yy = (yy.sum() - np.trace(yy)) / (m * (m - 1))
    return float(sum_xx + sum_yy - 2 * xy.mean())


def mmd_permutation_test(
    first: np.ndarray, second: np.ndarray, *, permutations: int = 200, seed: int = 0
) -> tuple[float, float]:
    """Unbiased squared MMD (RBF kernel, median-distance bandwidth) and its permutation-test p-value.

    Returns ``(mmd2, p_value)``; a small p-value says the two sets of embeddings come from different
    distributions.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    pooled = np.concatenate([first, second])
    distances = np.sqrt(np.maximum(np.sum((pooled[:, None, :] - pooled[None, :, :]) ** 2, axis=-1), 0.0))
    positive = distances[distances > 0]
    bandwidth = float(np.median(positive)) if positive.size else 1.0
    kernel = _rbf_kernel(pooled, pooled, bandwidth)
    n = len(first)
    observed = _mmd2(kernel, n)
    rng = random.Random(seed)
    order = list(range(len(pooled)))
    at_least = 0
    for _ in range(permutations):
        rng.shuffle(order)
        permuted = kernel[np.ix_(order, order)]
        at_least += _mmd2(permuted, n) >= observed
    return observed, (at_least + 1) / (permutations + 1)
