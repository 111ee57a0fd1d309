from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dg_core import ExperienceQuery, MissingExtraError
from dg_expmodel import (
    BackendHTTPError,
    LLMExperienceModel,
    ModelServer,
    OpenAICompatibleBackend,
    Sampling,
    TransformersBackend,
    VLLMBackend,
    load_tokenizer,
    render_prompt,
    save_hf_directory,
)
from tests.conftest import OPTIONS

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def queries_of(trajectories: list, count: int) -> list[ExperienceQuery]:  # type: ignore[type-arg]
    out = []
    for trajectory in trajectories:
        for position, step in enumerate(trajectory.steps):
            out.append(
                ExperienceQuery(
                    task=trajectory.task, history=trajectory.steps[:position], state=step.state, action=step.action
                )
            )
    return out[:count]


def test_tokenizer_round_trips_and_keeps_format_tags_whole(tokenizer: Any, tmp_path: Path) -> None:
    text = "<reasoning>Ünïcode ✓ never seen</reasoning>\n<done>true</done>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "<reasoning>"
    tokenizer.save_pretrained(str(tmp_path))
    reloaded = load_tokenizer(tmp_path)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
    assert reloaded.padding_side == "left"


def test_transformers_backend_generates_deterministically(tiny_model: Any, tokenizer: Any, trajectories: list) -> None:  # type: ignore[type-arg]
    backend = TransformersBackend(tiny_model, tokenizer, batch_size=3)
    assert backend.chat is False
    prompts = [render_prompt(q, OPTIONS) for q in queries_of(trajectories, 4)]
    sampling = Sampling(max_new_tokens=12)
    first = backend.complete(prompts, sampling)
    second = backend.complete(prompts, sampling)
    assert [c.text for c in first] == [c.text for c in second]
    assert all(c.completion_tokens <= 12 and c.prompt_tokens > 50 for c in first)
    assert all(not c.truncated_prompt for c in first)
    cut = TransformersBackend(tiny_model, tokenizer, max_prompt_tokens=40).complete(prompts[:1], sampling)[0]
    assert cut.truncated_prompt and cut.prompt_tokens == 40


def test_chat_mode_needs_a_template(tiny_model: Any, tokenizer: Any) -> None:
    with pytest.raises(Exception, match="chat_template"):
        TransformersBackend(tiny_model, tokenizer, chat=True)
    plain = TransformersBackend(tiny_model, tokenizer)
    with pytest.raises(Exception, match="plain text prompts"):
        plain.complete([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=2))


def test_untrained_model_output_is_counted_not_raised(tiny_model: Any, tokenizer: Any, trajectories: list) -> None:  # type: ignore[type-arg]
    backend = TransformersBackend(tiny_model, tokenizer)
    model = LLMExperienceModel(backend, options=OPTIONS, sampling=Sampling(max_new_tokens=8), retries=1)
    queries = queries_of(trajectories, 3)
    predictions = model.predict(queries)
    assert len(predictions) == 3
    for query, prediction in zip(queries, predictions, strict=True):
        assert not prediction.parse_ok
        assert prediction.next_state == query.state and prediction.reward == 0.0 and not prediction.done
        assert prediction.info["failure"].startswith("unparseable model output (")
    stats = model.stats
    assert (stats.queries, stats.generations, stats.retries, stats.parse_failures) == (3, 6, 3, 3)
    assert sum(stats.failure_reasons.values()) == 6
    assert stats.parse_failure_rate == 1.0


def test_server_and_http_client_match_the_local_backend(tiny_model: Any, tokenizer: Any, trajectories: list) -> None:  # type: ignore[type-arg]
    local = TransformersBackend(tiny_model, tokenizer, batch_size=1)
    prompts = [render_prompt(q, OPTIONS) for q in queries_of(trajectories, 3)]
    sampling = Sampling(max_new_tokens=10)
    expected = local.complete(prompts, sampling)
    server = ModelServer(local, model_name="tiny").serve_in_thread()
    try:
        with urllib.request.urlopen(server.base_url + "/models", timeout=10) as response:
            assert json.loads(response.read())["data"][0]["id"] == "tiny"
        client = OpenAICompatibleBackend(server.base_url, "tiny", chat=False, concurrency=2)
        answers = client.complete(prompts, sampling)
        assert [a.text for a in answers] == [e.text for e in expected]
        assert [a.completion_tokens for a in answers] == [e.completion_tokens for e in expected]
        with pytest.raises(BackendHTTPError, match=r"answered 400: .*takes text completion requests"):
            OpenAICompatibleBackend(server.base_url, "tiny", chat=True).complete(
                [[{"role": "user", "content": "x"}]], sampling
            )
    finally:
        server.stop()
    dead = OpenAICompatibleBackend(server.base_url, "tiny", chat=False, retries=1, timeout_s=2)
    with pytest.raises(BackendHTTPError, match="failed after 2 attempts"):
        dead.complete(["hello"], sampling)


def test_chat_template_through_server(tiny_model: Any, tokenizer: Any, trajectories: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        save_hf_directory(tiny_model, tokenizer, tmp_path / "chat-model")
    finally:
        tokenizer.chat_template = None
    backend = TransformersBackend.from_pretrained(tmp_path / "chat-model")
    assert backend.chat
    model = LLMExperienceModel(backend, options=OPTIONS, sampling=Sampling(max_new_tokens=6), retries=0)
    query = queries_of(trajectories, 1)[0]
    messages = model.prompt(query)
    assert isinstance(messages, list) and messages[0]["role"] == "system"
    server = ModelServer(backend).serve_in_thread()
    try:
        client = OpenAICompatibleBackend(server.base_url, "dg-expmodel", chat=True)
        remote = LLMExperienceModel(client, options=OPTIONS, sampling=Sampling(max_new_tokens=6), retries=0)
        (answer,) = remote.predict([query])
        (direct,) = model.predict([query])
        assert answer.raw == direct.raw
    finally:
        server.stop()


def test_bad_configuration_is_named() -> None:
    with pytest.raises(Exception, match="must start with http"):
        OpenAICompatibleBackend("127.0.0.1:8000", "m")
    with pytest.raises(MissingExtraError, match=r'pip install "dg-expmodel\[gpu\]"'):
        VLLMBackend("some/model")


def test_the_answer_opening_is_prefilled_and_continued(tiny_model: Any, tokenizer: Any, trajectories: list) -> None:  # type: ignore[type-arg]
    """The prompt ends with ``<reasoning>`` (plain text) or an assistant message holding it (chat, rendered with
    continue_final_message): the model continues the answer it was trained to write, as in its SFT targets."""
    query = queries_of(trajectories, 1)[0]
    plain = LLMExperienceModel(TransformersBackend(tiny_model, tokenizer), options=OPTIONS, retries=0)
    prompt = plain.prompt(query)
    assert isinstance(prompt, str) and prompt == render_prompt(query, OPTIONS) + "<reasoning>"
    assert (
        not LLMExperienceModel(TransformersBackend(tiny_model, tokenizer), options=OPTIONS, prefill=False)
        .prompt(query)
        .endswith("<reasoning>")
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        chat = TransformersBackend(tiny_model, tokenizer)
        messages = LLMExperienceModel(chat, options=OPTIONS, retries=0).prompt(query)
        assert isinstance(messages, list) and messages[-1] == {"role": "assistant", "content": "<reasoning>"}
        rendered = chat._text(messages)
        assert rendered.endswith("<|assistant|><reasoning>")  # continued: no new turn, no end of message
        assert chat._text(messages[:-1]).endswith("<|assistant|>")
    finally:
        tokenizer.chat_template = None
