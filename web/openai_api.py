"""``/v1``: an OpenAI-compatible API on the server's own API keys.

- ``POST /v1/chat/completions`` (``stream`` false: one ``chat.completion``; true: SSE
  ``chat.completion.chunk`` events then ``data: [DONE]``, with ``stream_options.include_usage``
  a last chunk carrying the usage) — ``web.openai_completion`` does the work;
- ``GET /v1/models``, ``GET /v1/models/{model}``: the model table (``settings.models``).

Authentication: ``Authorization: Bearer <access_key>.<secret_key>`` (``web.openai_auth``, run by
the access control before every ``/v1`` route). Errors: OpenAI's shape (``web.openai_errors``),
for every path under ``/v1``, unknown ones included (404 ``unknown_url``).

A streamed completion is answered only once its first text (or its end) came, so that limits
and upstream failures before the first byte are still HTTP errors (429, 502, 504). Its
upstream task lives in the request's nursery (``web.request_nursery``) and is cancelled when
the body stops being sent (``web.openai_stream``): a client that goes away closes the upstream
request at once, and the answer's slot and tokens go back to the user's limits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import trio
from pydantic import ValidationError
from quart import Blueprint, Response, current_app, request
from quart_schema import (
    QuartSchema,
    document_request,
    document_response,
    hide,
    security_scheme_blueprint,
    tag_blueprint,
)
from quart_schema.openapi import HttpSecurityScheme

from chat_actors.service import Chat
from web import openai_errors, openai_objects
from web.openai_completion import complete, prepare, stream_completion
from web.openai_errors import OpenAIError
from web.openai_objects import ChunkMaker
from web.openai_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ModelList,
    ModelOut,
    OpenAIErrorBody,
)
from web.openai_stream import CompletionStreamBody
from web.request_nursery import request_nursery
from web.services import get_services
from web.state import state_of

PREFIX = "/v1"
SECURITY_SCHEME = "openai_key"

bp = Blueprint("openai", __name__, url_prefix=PREFIX)
tag_blueprint(bp, ["openai"])
security_scheme_blueprint(bp, [{SECURITY_SCHEME: []}])
openai_errors.install(bp)

_COMPLETION_ERRORS = (400, 401, 403, 404, 429, 502, 503, 504)
_MODEL_ERRORS = (401, 403, 404, 503)


F = TypeVar("F", bound=Callable[..., Any])


def _document_errors(*statuses: int) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for status in statuses:
            func = document_response(OpenAIErrorBody, status)(func)
        return func
    return decorate


def _json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status,
                    content_type="application/json")


def _chat(*, answering: bool = False) -> Chat:
    services = get_services(current_app)
    chat = services.chat
    if not isinstance(chat, Chat):
        raise OpenAIError(503, "The server is starting or stopping.", type="server_error",
                          code="not_ready")
    if answering and services.draining:  # SIGTERM: no new answers (web.drain)
        raise OpenAIError(503, "The server is restarting; retry in a moment.",
                          type="server_error", code="server_restarting")
    return chat


def _user_id() -> int:
    user_id = state_of(request.scope).user_id
    if user_id is None:  # access control authenticates every /v1 route first
        raise OpenAIError(401, "Not authenticated.", code="invalid_api_key")
    return user_id


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list"})


def _param(loc: tuple[int | str, ...]) -> str | None:
    """``messages.0.content``: the location, without pydantic's union member tags."""
    kept = [str(p) for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]
    return ".".join(kept) or None


def _invalid(exc: ValidationError) -> OpenAIError:
    """The 400 of a body that does not fit the schema, naming one parameter. Of the errors of
    a union (``stop``: a string or a list), the one that says most: not "wrong type" when
    another member says more, the deepest location first."""
    errors = exc.errors(include_url=False, include_input=False)
    error = min(errors, key=lambda e: (e["type"].endswith("_type"), -len(e["loc"])))
    param = _param(error["loc"])
    if error["type"] == "extra_forbidden":
        return OpenAIError(400, f"Unrecognized request argument supplied: {param}",
                           code="unknown_parameter", param=param)
    if error["type"] == "missing":
        return OpenAIError(400, f"Missing required parameter: '{param}'.",
                           code="missing_required_parameter", param=param)
    where = f"'{param}'" if param else "the body"
    return OpenAIError(400, f"Invalid value for {where}: "
                       f"{error['msg'].removeprefix('Value error, ')}.",
                       code="invalid_value", param=param)


async def _body() -> ChatCompletionRequest:
    data = await request.get_json()  # not JSON: 400 / 415, mapped by openai_errors
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


@bp.post("/chat/completions")
@document_request(ChatCompletionRequest)
@document_response(ChatCompletion, 200)
@_document_errors(*_COMPLETION_ERRORS)
async def chat_completions() -> Response:
    """OpenAI's chat completions. With ``"stream": true`` the 200 answer is
    ``text/event-stream``: ``data: <chat.completion.chunk>`` events, then ``data: [DONE]``
    (``stream_options.include_usage``: one more chunk, with no choices, carries the usage).
    Shares the chat's per-user limits: one request is one message, it holds an answer slot
    while it generates, and it reserves then settles the daily tokens. Errors are OpenAI's
    ``{"error": {"message", "type", "param", "code"}}``."""
    body = await _body()
    chat = _chat(answering=True)
    call = await prepare(chat, _user_id(), body, state_of(request.scope).api_key_id)
    if not body.stream:
        result = await complete(chat, call)
        return _json(openai_objects.completion(
            openai_objects.new_completion_id(), int(time.time()),
            call.model, result.text, result.finish_reason, result.usage))
    scope = trio.CancelScope()
    events = await request_nursery(request.scope).start(
        partial(stream_completion, chat, call, scope))
    chunks = ChunkMaker.new(call.model, call.include_usage)
    response = Response(CompletionStreamBody(events, chunks, scope), 200,
                        content_type="text/event-stream; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy in front must not hold the events
    response.timeout = None  # Quart's RESPONSE_TIMEOUT (60 s) would cut a long answer
    return response


@bp.get("/models")
@document_response(ModelList, 200)
@_document_errors(*_MODEL_ERRORS)
async def list_models() -> Response:
    """The models this server serves (its model table)."""
    return _json(openai_objects.model_list(_chat().settings.models))


@bp.get("/models/<path:model>")
@document_response(ModelOut, 200)
@_document_errors(*_MODEL_ERRORS)
async def get_model(model: str) -> Response:
    """One model of the model table."""
    if model not in _chat().settings.models:
        raise OpenAIError(404, f"The model '{model}' does not exist on this server.",
                          code="model_not_found", param="model")
    return _json(openai_objects.model_object(model))


_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@bp.route("", methods=_METHODS)
@bp.route("/", methods=_METHODS)
@bp.route("/<path:rest>", methods=_METHODS)
@hide
async def unknown_url(rest: str = "") -> Response:
    raise OpenAIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")


def install_docs(schema: QuartSchema) -> None:
    """``/v1`` in ``/openapi.json``: its bearer scheme, and its own error shape."""
    schemes = schema.security_schemes if schema.security_schemes is not None else {}
    schemes[SECURITY_SCHEME] = HttpSecurityScheme(
        scheme="bearer", bearer_format="<access_key>.<secret_key>")
    schema.security_schemes = schemes
    if schema.info is not None:
        schema.info.description = (schema.info.description or "") + (
            " The OpenAI-compatible API under /v1 is the exception: it takes an API key as "
            "'Authorization: Bearer <access_key>.<secret_key>' and its errors are OpenAI's "
            '{"error": {"message", "type", "param", "code"}}, 400 for any invalid body.')
