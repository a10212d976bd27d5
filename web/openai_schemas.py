"""Request and response models of the OpenAI-compatible API (``/v1``), for validation and for
``/openapi.json``.

The request takes the subset of OpenAI's chat completion parameters this server can honour:
text messages (string content or ``{"type": "text"}`` parts) from ``system``, ``developer``,
``user`` and ``assistant``, the sampling knobs, ``max_tokens`` / ``max_completion_tokens``,
``stop``, ``seed``, ``response_format``, ``stream`` and ``stream_options``. Anything else
(tools, images, ``n`` > 1, logprobs) is refused with 400 naming the parameter, as OpenAI
refuses an unknown one, rather than being silently dropped. ``user`` is accepted and ignored:
the upstream gets the server's own opaque id of the user.

The response models describe what ``web.openai_objects`` builds (a test checks that they
agree).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=64)

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        """Say plainly that a part of another type (an image, audio) is not supported."""
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"only text content parts are supported, not {kind!r}")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str = Field(min_length=1, max_length=256, examples=["gpt-4o-mini"])
    messages: list[Message] = Field(min_length=1, max_length=2048)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: Literal[1] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256,
                             description="Accepted and ignored: the upstream is sent the "
                             "server's opaque id of the key's owner.")


# ---- responses (documentation; built as plain dicts by web.openai_objects) ---------------


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str = Field(examples=["stop", "length", "content_filter"])


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut
    system_fingerprint: None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` event of a streamed completion (then ``data: [DONE]``). With
    ``stream_options.include_usage`` every chunk has ``usage: null`` and one more chunk, with
    no choices, carries the usage."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = None
    system_fingerprint: None = None


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """Every error under ``/v1``."""

    error: OpenAIErrorDetail
