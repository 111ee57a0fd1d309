"""Inference backends behind one interface: Hugging Face transformers, vLLM, OpenAI-compatible HTTP.

A backend turns prompts into completions. ``chat`` says whether it wants chat messages (instruct models,
chat endpoints) or plain text; :class:`~dg_expmodel.LLMExperienceModel` renders the prompt accordingly.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dg_core import ConfigError, DGError
from dg_expmodel._deps import models_module, transformers_module, vllm_module

Prompt = str | list[dict[str, str]]
"""Plain text, or chat messages (``[{"role": ..., "content": ...}]``)."""

STOP = "</done>"
"""Generation stops after the last tag of the response format."""


@dataclass(frozen=True)
class Sampling:
    """How to decode.

    Attributes:
        max_new_tokens: Cap on generated tokens per completion.
        temperature: 0 for greedy decoding.
        top_p: Nucleus sampling mass.
        stop: Strings that end a completion (kept in the output).
        seed: Seed for sampling (where the backend supports one).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = (STOP,)
    seed: int | None = None


@dataclass
class Completion:
    """One generated text and its accounting."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_prompt: bool = False
    """Whether the prompt was cut (from the left) to fit the model's context."""
    finished: bool = True
    """False when generation hit ``max_new_tokens`` before a stop string or end of text."""
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class GenerationBackend(Protocol):
    """Generates completions for a batch of prompts."""

    @property
    def chat(self) -> bool:
        """Whether prompts should be chat messages rather than plain text."""
        ...

    def complete(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[Completion]:
        """One completion per prompt, in order."""
        ...


def continues_answer(prompt: Prompt) -> bool:
    """Whether chat ``prompt`` ends with an assistant message: the start of the answer, to be continued (rendered
    without a new assistant turn: transformers' and vLLM's ``continue_final_message``)."""
    return not isinstance(prompt, str) and bool(prompt) and prompt[-1].get("role") == "assistant"


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = [text.index(s) + len(s) for s in stop if s in text]
    if cut:
        return text[: min(cut)], True
    return text, False


class TransformersBackend:
    """Batched generation with a Hugging Face causal LM (KV cache on; CPU or GPU).

    Args:
        model: A loaded ``AutoModelForCausalLM``.
        tokenizer: Its tokenizer.
        chat: Use the tokenizer's chat template (defaults to whether it has one).
        batch_size: Prompts per ``generate`` call.
        max_prompt_tokens: Longer prompts are cut from the left (counted in ``Completion.truncated_prompt``);
            defaults to the model's context minus ``max_new_tokens``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        chat: bool | None = None,
        batch_size: int = 16,
        max_prompt_tokens: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        if self._chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("chat=True needs a tokenizer with a chat_template")
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", **kwargs: Any) -> TransformersBackend:
        """Load any source :func:`dg_models.load_model` knows (directory, ``.gguf``, ``"smollm2"``) and wrap it."""
        transformers_module()
        loaded = models_module().load_model(path, device=device, padding_side="left")
        return cls(loaded.model, loaded.tokenizer, **kwargs)

    @property
    def chat(self) -> bool:
        """Whether the chat template is applied."""
        return self._chat

    def _text(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            if self._chat:
                raise ConfigError("this backend uses a chat template: pass chat messages, not text")
            return prompt
        if not self._chat:
            raise ConfigError("this backend has no chat template: pass plain text prompts")
        if continues_answer(prompt):
            text = self.tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=False, continue_final_message=True
            )
        else:
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return str(text)

    def complete(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[Completion]:
        """Generate for every prompt, ``batch_size`` at a time."""
        texts = [self._text(prompt) for prompt in prompts]
        out: list[Completion] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._complete_batch(texts[start : start + self.batch_size], sampling))
        return out

    def _complete_batch(self, texts: list[str], sampling: Sampling) -> list[Completion]:
        import torch

        context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        budget = self.max_prompt_tokens or max(1, context - sampling.max_new_tokens)
        full_lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        self.tokenizer.truncation_side = "left"
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=budget, add_special_tokens=False
        )
        device = next(self.model.parameters()).device
        batch = {key: value.to(device) for key, value in batch.items()}
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "use_cache": True,
        }
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            kwargs.update(do_sample=False)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        with torch.no_grad():
            generated = self.model.generate(**batch, **kwargs)
        prompt_width = batch["input_ids"].shape[1]
        completions = []
        for row, full_length in enumerate(full_lengths):
            new_ids = generated[row, prompt_width:].tolist()
            eos = self.tokenizer.eos_token_id
            produced = new_ids.index(eos) + 1 if eos in new_ids else len(new_ids)
            pad = self.tokenizer.pad_token_id
            while produced > 0 and new_ids[produced - 1] == pad and pad != eos:
                produced -= 1
            text = self.tokenizer.decode(new_ids[:produced], skip_special_tokens=True)
            text, stopped = _cut_at_stop(text, sampling.stop)
            completions.append(
                Completion(
                    text=text,
                    prompt_tokens=min(full_length, budget),
                    completion_tokens=produced,
                    truncated_prompt=full_length > budget,
                    finished=stopped or (eos in new_ids[:produced]) or produced < sampling.max_new_tokens,
                )
            )
        return completions


class VLLMBackend:
    """Generation with vLLM's offline engine (``pip install "dg-expmodel[gpu]"``; GPU machines only).

    Not exercised on CPU machines: only its construction error is tested there.

    Args:
        model: A hub id or local directory.
        chat: Whether to apply the chat template.
        engine_kwargs: Passed to ``vllm.LLM`` (``tensor_parallel_size``, ``gpu_memory_utilization``...).
    """

    def __init__(self, model: str, *, chat: bool = True, **engine_kwargs: Any) -> None:
        vllm = vllm_module()
        self._vllm = vllm
        self._engine = vllm.LLM(model=model, **engine_kwargs)
        self._chat = chat

    @property
    def chat(self) -> bool:
        """Whether the chat template is applied."""
        return self._chat

    def complete(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[Completion]:
        """Generate for all prompts in one engine call."""
        params = self._vllm.SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop),
            include_stop_str_in_output=True,
            seed=sampling.seed,
        )
        if self._chat:
            messages = [p for p in prompts if not isinstance(p, str)]
            continued = {continues_answer(p) for p in messages}
            if len(continued) > 1:
                raise ConfigError("a vLLM chat batch must either all continue an assistant message or none")
            if continued == {True}:  # the answer's start is given: continue it (vLLM >= 0.6.3)
                outputs = self._engine.chat(messages, params, add_generation_prompt=False, continue_final_message=True)
            else:
                outputs = self._engine.chat(messages, params)
        else:
            outputs = self._engine.generate([p for p in prompts if isinstance(p, str)], params)
        return [
            Completion(
                text=o.outputs[0].text,
                prompt_tokens=len(o.prompt_token_ids or ()),
                completion_tokens=len(o.outputs[0].token_ids),
                finished=o.outputs[0].finish_reason != "length",
            )
            for o in outputs
        ]


class BackendHTTPError(DGError, RuntimeError):
    """The HTTP server answered with an error, or could not be reached after the retries."""


class OpenAICompatibleBackend:
    """Client of any OpenAI-compatible server (``vllm serve``, ``transformers serve``, ``dg-expmodel serve``...).

    Prompts are sent concurrently, one request each, to ``/v1/chat/completions`` (chat) or ``/v1/completions``.

    Args:
        base_url: Server root, e.g. ``http://127.0.0.1:8000/v1``.
        model: Model name the server knows.
        chat: Use the chat endpoint.
        api_key: Sent as a bearer token if given.
        concurrency: Requests in flight at once.
        timeout_s: Per-request timeout.
        retries: Extra attempts after a connection error or a 5xx answer.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        chat: bool = True,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        retries: int = 2,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._chat = chat
        self.api_key = api_key
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.retries = retries

    @property
    def chat(self) -> bool:
        """Whether the chat endpoint is used."""
        return self._chat

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer: dict[str, Any] = json.loads(response.read())
                    return answer
            except urllib.error.HTTPError as error:
                body = error.read().decode(errors="replace")[:300]
                if error.code < 500:
                    raise BackendHTTPError(f"{self.base_url}{path} answered {error.code}: {body}") from error
                last = error
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last = error
            time.sleep(min(2.0, 0.2 * 2**attempt))
        raise BackendHTTPError(f"{self.base_url}{path} failed after {self.retries + 1} attempts: {last}")

    def _one(self, prompt: Prompt, sampling: Sampling) -> Completion:
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": list(sampling.stop) or None,
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if self._chat:
            if isinstance(prompt, str):
                raise ConfigError("the chat endpoint needs chat messages, not text")
            if continues_answer(prompt):  # vLLM's server extension; servers without it answer a new turn
                payload.update(continue_final_message=True, add_generation_prompt=False)
            answer = self._post("/chat/completions", {**payload, "messages": prompt})
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        else:
            if not isinstance(prompt, str):
                raise ConfigError("the completions endpoint needs a text prompt")
            answer = self._post("/completions", {**payload, "prompt": prompt})
            choice = answer["choices"][0]
            text = choice["text"]
        # OpenAI servers drop the stop string; the response format wants it back.
        if choice.get("finish_reason") == "stop" and sampling.stop and not text.rstrip().endswith(sampling.stop[0]):
            text += sampling.stop[0]
        usage = answer.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finished=choice.get("finish_reason") != "length",
        )

    def complete(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[Completion]:
        """One request per prompt, ``concurrency`` at a time."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda prompt: self._one(prompt, sampling), prompts))
