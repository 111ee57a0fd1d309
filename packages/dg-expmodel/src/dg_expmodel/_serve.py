"""A small OpenAI-compatible HTTP server over any generation backend (stdlib only).

Serves ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` so a local checkpoint (for
instance a tiny CPU experience model) can be used by any OpenAI-compatible client, including
:class:`~dg_expmodel.OpenAICompatibleBackend`. Requests are answered one generation at a time; for GPU
serving at scale use ``vllm serve``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dg_expmodel._backends import GenerationBackend, Prompt, Sampling


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        route = self.path.rstrip("/")
        if route not in ("/v1/completions", "/v1/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(request, dict):
                raise ValueError("the body must be a JSON object")
            chat = route.endswith("chat/completions")
            prompt = self._prompt(request, chat)
            sampling = self._sampling(request)
        except (ValueError, TypeError, KeyError) as error:
            self._error(400, f"bad request: {error}")
            return
        if chat != self.server.backend.chat:
            kind = "chat" if self.server.backend.chat else "text completion"
            self._error(400, f"this server's model takes {kind} requests")
            return
        with self.server.lock:
            (completion,) = self.server.backend.complete([prompt], sampling)
        text = completion.text
        stopped = next((s for s in sampling.stop if text.endswith(s)), None)
        if stopped:  # OpenAI servers leave the stop string out of the text
            text = text[: -len(stopped)]
        reason = "stop" if completion.finished else "length"
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        self._send(
            200,
            {
                "id": f"dg-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.server.model_name,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "total_tokens": completion.prompt_tokens + completion.completion_tokens,
                },
            },
        )

    @staticmethod
    def _prompt(request: dict[str, Any], chat: bool) -> Prompt:
        if chat:
            messages = request["messages"]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
                for m in messages
            ):
                raise ValueError("messages must be a list of {role, content} objects")
            return [{"role": m["role"], "content": m["content"]} for m in messages]
        prompt = request["prompt"]
        if not isinstance(prompt, str):
            raise ValueError("prompt must be a string (one prompt per request)")
        return prompt

    @staticmethod
    def _sampling(request: dict[str, Any]) -> Sampling:
        stop = request.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        max_tokens = int(request.get("max_tokens") or 256)
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        seed = request.get("seed")
        return Sampling(
            max_new_tokens=max_tokens,
            temperature=float(request.get("temperature") or 0.0),
            top_p=float(request.get("top_p") or 1.0),
            stop=tuple(str(s) for s in stop),
            seed=int(seed) if seed is not None else None,
        )


class ModelServer(ThreadingHTTPServer):
    """OpenAI-compatible server; ``serve_in_thread()`` for tests and notebooks, ``serve_forever()`` otherwise.

    Args:
        backend: What generates.
        model_name: Name reported by ``/v1/models`` and in answers.
        host: Interface to bind (loopback by default).
        port: Port (0 picks a free one; read it from ``server.port``).
    """

    daemon_threads = True

    def __init__(
        self, backend: GenerationBackend, *, model_name: str = "dg-expmodel", host: str = "127.0.0.1", port: int = 0
    ):
        super().__init__((host, port), _Handler)
        self.backend = backend
        self.model_name = model_name
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``."""
        host = self.server_address[0]
        host = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host}:{self.port}/v1"

    def serve_in_thread(self) -> ModelServer:
        """Start serving in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="dg-model-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
