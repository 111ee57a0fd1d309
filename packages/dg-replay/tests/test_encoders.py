from __future__ import annotations

import sys

import numpy as np
import pytest

from dg_core import Action, ConfigError, MissingExtraError, State
from dg_replay import (
    MINILM_NAME,
    CachedEncoder,
    Encoder,
    HashingEncoder,
    ReplayBuffer,
    RetrievalQuery,
    SentenceTransformerEncoder,
    key_text,
    minilm_encoder,
)

from .conftest import make_steps, make_task


def test_hashing_encoder_is_deterministic_unit_length_and_word_sensitive() -> None:
    encoder = HashingEncoder(128)
    vectors = encoder.encode(["open the red door", "open the red door", "open the blue door", "eat an apple"])
    assert vectors.shape == (4, 128)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[3]
    assert encoder.name == "hashing-128"
    assert isinstance(encoder, Encoder)
    assert HashingEncoder(128).encode(["open the red door"]).tolist() == vectors[:1].tolist()


def test_hashing_encoder_rejects_a_tiny_dimension() -> None:
    with pytest.raises(ConfigError, match="dim must be >= 2"):
        HashingEncoder(1)


def test_cache_encodes_each_distinct_text_once_and_evicts_least_recent() -> None:
    cached = CachedEncoder(HashingEncoder(32), max_entries=2)
    first = cached.encode(["a b", "c d", "a b"])
    assert (cached.hits, cached.misses) == (0, 2)
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(first, HashingEncoder(32).encode(["a b", "c d", "a b"]))
    cached.encode(["a b"])  # a hit; "c d" becomes the least recent
    cached.encode(["e f"])
    assert (cached.hits, cached.misses, len(cached)) == (1, 3, 2)
    cached.encode(["c d"])
    assert cached.misses == 4
    assert cached.name == "hashing-32"
    assert cached.dim == 32


def test_key_text_joins_instruction_state_and_action() -> None:
    assert key_text("go north", "a hall", "open door") == "Task: go north\nState: a hall\nAction: open door"


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r'pip install "dg-replay\[minilm\]"'):
        SentenceTransformerEncoder("any-model")


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    return minilm_encoder(batch_size=8)


@pytest.mark.slow  # loads torch and the model: ~10 s on a quiet 2-core machine, over a minute on a busy one
@pytest.mark.timeout(300)
def test_offline_minilm_ranks_paraphrases_above_unrelated_text(minilm: SentenceTransformerEncoder) -> None:
    encoder = minilm
    assert (encoder.name, encoder.dim) == (MINILM_NAME, 384)
    vectors = encoder.encode(
        ["open the wooden door", "unlock and open the door made of wood", "the stock market fell sharply today"]
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > 0.6
    assert vectors[0] @ vectors[2] < 0.2
    assert encoder.encode([]).shape == (0, 384)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_buffer_with_minilm_retrieves_the_paraphrased_transition(minilm: SentenceTransformerEncoder) -> None:
    buffer = ReplayBuffer(encoder=CachedEncoder(minilm))
    task = make_task()
    situations = [
        ("you are in a kitchen; the fridge is closed", "open the fridge"),
        ("you stand in a garden next to a locked shed", "unlock the shed with the key"),
        ("a dark cellar; a lamp lies on the floor", "turn on the lamp"),
    ]
    template = make_steps(1)[0]
    steps = [
        template.model_copy(update={"state": State(text=text), "action": Action(text=action)})
        for text, action in situations
    ]
    keys = buffer.add(steps, "real", task=task).keys
    query = RetrievalQuery(task, "in the garden by a shed that is locked", "use key on shed")
    hits = buffer.retrieve([query], k=3)[0]
    assert hits[0].key == keys[1]
    assert hits[0].score > hits[1].score + 0.1
