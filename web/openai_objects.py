"""The objects the OpenAI-compatible API answers with, as OpenAI sends them: ``chat.completion``,
``chat.completion.chunk`` (as SSE ``data:`` events, then ``data: [DONE]``) and the model list.
``web.openai_schemas`` documents the same shapes."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from chat_actors.upstream_types import Usage

DONE_EVENT = b"data: [DONE]\n\n"
OWNED_BY = "trio-chat-server"


def usage_dict(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def completion(
    completion_id: str, created: int, model: str, text: str, finish_reason: str, usage: Usage
) -> dict[str, object]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": usage_dict(usage),
        "system_fingerprint": None,
    }


def model_object(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNED_BY}


def model_list(names: Iterable[str]) -> dict[str, object]:
    return {"object": "list", "data": [model_object(name) for name in names]}


def sse_event(body: object) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


@dataclass(frozen=True)
class ChunkMaker:
    """The ``chat.completion.chunk`` events of one streamed completion (one id and time)."""

    model: str
    include_usage: bool
    id: str = ""
    created: int = 0

    @classmethod
    def new(cls, model: str, include_usage: bool) -> ChunkMaker:
        return cls(model, include_usage, new_completion_id(), int(time.time()))

    def _chunk(self, choices: list[dict[str, object]], usage: Usage | None = None) -> bytes:
        body: dict[str, object] = {"id": self.id, "object": "chat.completion.chunk",
                                   "created": self.created, "model": self.model,
                                   "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            body["usage"] = usage_dict(usage) if usage is not None else None
        return sse_event(body)

    def _choice(self, delta: dict[str, str], finish_reason: str | None) -> list[dict[str, object]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    def role(self) -> bytes:
        """The first chunk: the assistant's role, no text yet."""
        return self._chunk(self._choice({"role": "assistant", "content": ""}, None))

    def text(self, text: str) -> bytes:
        return self._chunk(self._choice({"content": text}, None))

    def finish(self, finish_reason: str) -> bytes:
        return self._chunk(self._choice({}, finish_reason))

    def usage(self, usage: Usage) -> bytes:
        """The chunk after the last one, with ``include_usage``: no choices, the usage."""
        return self._chunk([], usage)


def new_completion_id() -> str:
    return f"chatcmpl-{secrets.token_urlsafe(18)}"
