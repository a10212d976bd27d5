"""One chat completion of the OpenAI-compatible API: checked, limited, asked of the upstream.

``prepare`` turns a validated request into a ``CompletionCall``: the model must be in the model
table (``settings.models``, as the chat's ``/changemodel`` requires; else 404
``model_not_found``), the prompt is counted with the chat's tiktoken helpers and must leave
room for the answer in the model's window, and the answer's limit is the client's
``max_tokens`` (``max_completion_tokens``) or, without one, what the model table allows. That
limit is always sent upstream, so the tokens reserved are the most the answer can spend.

``complete`` (whole answer) and ``stream_completion`` (deltas into a channel) then run it in the
chat's own limits (``chat.limits``, the same Redis keys as the chat socket): the request counts
as one message, holds an answer slot while it generates, reserves prompt + answer limit of the
daily tokens and settles to what it spent (nothing when no text came). The upstream is the
chat's client (``chat_actors.upstream``: timeouts, retries before the first byte), asked for
its usage (``stream_options.include_usage``) and with no continuations: a ``"length"`` finish
is the client's to see. Usage is the upstream's when it reports one, else counted here.
Every call that reached the upstream is counted once in the usage accounting
(``ChatLimits.record_usage``: the call's API key, its model), with the tokens it settled to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from chat_actors.chat_limits import AnswerHold
from chat_actors.service import Chat
from chat_actors.tokens import (
    REPLY_PRIMING_TOKENS,
    THREAD_THRESHOLD_CHARS,
    count_message_tokens,
    count_tokens,
    is_loaded,
)
from chat_actors.upstream_types import ChatRequest, Usage
from core.errors import UpstreamContentFilter
from web.openai_errors import OpenAIError, to_openai_error
from web.openai_schemas import ChatCompletionRequest, Message

log = logging.getLogger("chat.openai")


@dataclass(frozen=True)
class CompletionCall:
    """A request that passed every check that needs no limit: ready to run."""

    user_id: int
    model: str
    upstream_request: ChatRequest
    prompt_tokens: int
    answer_limit: int  # tokens the answer may take (sent upstream)
    include_usage: bool
    key_id: int | None = None  # the API key it came with (usage accounting)

    @property
    def reserve(self) -> int:
        """What the daily budget reserves before the answer starts."""
        return self.prompt_tokens + self.answer_limit


@dataclass(frozen=True)
class CompletionResult:
    text: str
    finish_reason: str
    usage: Usage


@dataclass(frozen=True)
class StreamEnd:
    """The last event of a stream: how it finished and its usage."""

    finish_reason: str
    usage: Usage


@dataclass(frozen=True)
class StreamFailed:
    """The stream broke after its first text; the error event to send."""

    error: OpenAIError


StreamEvent = str | StreamEnd | StreamFailed


def _prompt_tokens(messages: Sequence[Message], model: str) -> int:
    return REPLY_PRIMING_TOKENS + sum(
        count_message_tokens(m.text(), m.role, model, m.name) for m in messages)


async def count_prompt_tokens(messages: Sequence[Message], model: str) -> int:
    """The prompt's tokens as OpenAI counts them; long prompts (and a model's first use, whose
    encoding takes a second to build) are counted in a worker thread."""
    chars = sum(len(m.text()) for m in messages)
    if chars > THREAD_THRESHOLD_CHARS or not is_loaded(model):
        return await trio.to_thread.run_sync(_prompt_tokens, messages, model)
    return _prompt_tokens(messages, model)


async def count_answer_tokens(text: str, model: str) -> int:
    if len(text) > THREAD_THRESHOLD_CHARS or not is_loaded(model):
        return await trio.to_thread.run_sync(count_tokens, text, model)
    return count_tokens(text, model)


def _answer_limit(body: ChatCompletionRequest) -> tuple[int | None, str]:
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise OpenAIError(400, "Send max_completion_tokens or max_tokens, not both.",
                          code="invalid_value", param="max_tokens")
    if body.max_completion_tokens is not None:
        return body.max_completion_tokens, "max_completion_tokens"
    return body.max_tokens, "max_tokens"


async def prepare(chat: Chat, user_id: int, body: ChatCompletionRequest,
                  key_id: int | None = None) -> CompletionCall:
    """The call ``body`` asks for, or the ``OpenAIError`` (400 / 404) that refuses it."""
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(400, "The 'stream_options' parameter is only allowed when 'stream' "
                          "is enabled.", code="invalid_value", param="stream_options")
    spec = chat.settings.models.get(body.model)
    if spec is None:
        raise OpenAIError(404, f"The model '{body.model}' does not exist on this server; "
                          "GET /v1/models lists the models it serves.",
                          code="model_not_found", param="model")
    asked, param = _answer_limit(body)
    if asked is not None and asked > spec.max_answer_tokens:
        raise OpenAIError(400, f"{param} is too large: {asked}. This model supports at most "
                          f"{spec.max_answer_tokens} completion tokens.",
                          code="invalid_value", param=param)
    prompt = await count_prompt_tokens(body.messages, body.model)
    room = spec.context_window - prompt
    answer_limit = asked if asked is not None else min(spec.max_answer_tokens, room)
    if answer_limit < 1 or prompt + answer_limit > spec.context_window:
        raise OpenAIError(400, f"This model's maximum context length is {spec.context_window} "
                          f"tokens. However, you requested {prompt + max(answer_limit, 1)} "
                          f"tokens ({prompt} in the messages, {max(answer_limit, 1)} in the "
                          "completion). Please reduce the length of the messages or "
                          "completion.", code="context_length_exceeded", param="messages")
    extra: dict[str, object] = {"stream_options": {"include_usage": True}}
    for name in ("stop", "seed", "response_format"):
        value = getattr(body, name)
        if value is not None:
            extra[name] = value
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                for m in body.messages]
    request = ChatRequest(
        model=body.model,
        messages=messages,
        temperature=body.temperature,
        top_p=body.top_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        max_tokens=None if spec.reasoning else answer_limit,
        max_completion_tokens=answer_limit if spec.reasoning else None,
        user=chat.registry.deps.opaque_user_id(user_id),
        extra=extra,
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return CompletionCall(user_id, body.model, request, prompt, answer_limit, include_usage,
                          key_id)


def _spent_so_far(call: CompletionCall, parts: list[str]) -> Usage:
    """What an answer cut short spent (as the chat settles one: nothing if no text came)."""
    if not parts:
        return Usage(0, 0)
    return Usage(call.prompt_tokens, count_tokens("".join(parts), call.model))


async def _settle(chat: Chat, call: CompletionCall, hold: AnswerHold, spent: Usage) -> None:
    """Set what the call spent, and count it in the usage accounting, once, before its client
    sees the end (shielded: a client that left is counted too)."""
    hold.spent = spent.total_tokens
    await chat.limits.record_usage(call.user_id, call.key_id, call.model,
                                   prompt_tokens=spent.prompt_tokens,
                                   answer_tokens=spent.completion_tokens)


async def _usage(call: CompletionCall, text: str, reported: Usage | None) -> Usage:
    if reported is not None:
        return reported
    return Usage(call.prompt_tokens, await count_answer_tokens(text, call.model) if text else 0)


async def _answer(chat: Chat, call: CompletionCall, hold: AnswerHold,
                  on_delta: Callable[[str], None]) -> tuple[str, str, Usage]:
    """Stream the upstream's answer through ``on_delta`` and settle ``hold`` with what it
    spent, also when it fails or is cancelled (the text so far); its errors propagate."""
    parts: list[str] = []

    async def collect(delta: str) -> None:
        parts.append(delta)
        on_delta(delta)

    try:
        info = await chat.upstream.stream(call.upstream_request, collect, max_continuations=0)
        finish, reported = info.finish_reason, info.usage
    except UpstreamContentFilter:
        finish, reported = "content_filter", None
    except BaseException:
        await _settle(chat, call, hold, _spent_so_far(call, parts))
        raise
    text = "".join(parts)
    usage = await _usage(call, text, reported)
    await _settle(chat, call, hold, usage if text else Usage(0, 0))
    return text, finish, usage


async def complete(chat: Chat, call: CompletionCall) -> CompletionResult:
    """The whole answer; the limits' and the upstream's errors propagate. Cancelled (the client
    left), the upstream request closes at once and the limits are given back."""
    await chat.limits.count_message(call.user_id)
    async with chat.limits.hold_answer(call.user_id, call.reserve) as hold:
        text, finish, usage = await _answer(chat, call, hold, lambda _delta: None)
    return CompletionResult(text, finish, usage)


async def stream_completion(
    chat: Chat,
    call: CompletionCall,
    cancel_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[trio.MemoryReceiveChannel[StreamEvent]] = (
        trio.TASK_STATUS_IGNORED),
) -> None:
    """``nursery.start`` it: it returns, with the channel of the answer's events (text deltas,
    then a ``StreamEnd`` or a ``StreamFailed``), once the first text (or the end) came. Before
    that, the limits' and the upstream's errors are raised, so the response can still be an
    HTTP error; after it, nothing is raised: errors become a ``StreamFailed``. Cancelling
    ``cancel_scope`` (the response's body does when the client goes) ends it at once, the
    upstream request closed and the limits given back."""
    send, receive = trio.open_memory_channel[StreamEvent](math.inf)
    started = False

    def emit(event: StreamEvent) -> None:
        try:
            send.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            cancel_scope.cancel()  # the body is gone: stop at the next checkpoint

    def start() -> None:
        nonlocal started
        if not started:
            started = True
            task_status.started(receive)

    with cancel_scope, send:
        await chat.limits.count_message(call.user_id)
        async with chat.limits.hold_answer(call.user_id, call.reserve) as hold:

            def forward(delta: str) -> None:
                emit(delta)
                start()

            try:
                _text, finish, usage = await _answer(chat, call, hold, forward)
            except Exception as exc:
                if not started:
                    raise
                log.warning("a /v1 stream of user %s broke after its first text: %s",
                            call.user_id, exc)
                emit(StreamFailed(to_openai_error(exc)))
                return
            emit(StreamEnd(finish, usage))
            start()
