"""Errors of the OpenAI-compatible API (``/v1``), in OpenAI's shape, never the project's.

Every error under ``/v1`` is ``{"error": {"message", "type", "param", "code"}}`` with the
status OpenAI's clients expect (the ``openai`` package raises ``AuthenticationError`` for 401,
``PermissionDeniedError`` 403, ``NotFoundError`` 404, ``BadRequestError`` 400,
``RateLimitError`` 429, ``InternalServerError`` 5xx):

    cause                                     status  type                   code
    no / malformed / unknown key, bad secret  401     invalid_request_error  missing_api_key,
                                                                             invalid_api_key
    key disabled, owner blocked or deleted,   403     invalid_request_error  key_disabled,
    address outside the key's allow-list                                     user_blocked, ...
    model not in the model table              404     invalid_request_error  model_not_found
    no such route under /v1                   404     invalid_request_error  unknown_url
    body not JSON, not the schema, too long   400     invalid_request_error  invalid_json, ...
    messages per minute (the chat's)          429     requests               rate_limit_exceeded
    answers at once (the chat's)              429     requests               too_many_answers
    daily token budget (the chat's)           429     insufficient_quota     insufficient_quota
    upstream kept answering 429               429     requests               upstream_rate_limited
    upstream failed                           502     server_error           upstream_error
    upstream timed out                        504     server_error           upstream_timeout
    storage down, server starting, a secret   503     server_error           storage_unavailable,
    that does not decrypt                                                    not_ready, ...

A 429 carries ``Retry-After`` when the wait is known. ``x-should-retry: false`` (read by
OpenAI's SDKs) goes with the errors a retry cannot cure soon: the daily budget, and upstream
failures the server has already retried (``upstream_retries``) or will not (timeouts).
"""

from __future__ import annotations

import json
import logging

from quart import Blueprint, Response, has_request_context, request
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from core.errors import (
    ApiError,
    BudgetExceeded,
    ChatServerError,
    LimitError,
    StorageError,
    TooManyAnswers,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from web.errors import HTTP_CODES
from web.state import state_of

log = logging.getLogger("chat.errors")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class OpenAIError(Exception):
    """An error answered as ``{"error": {...}}``; see the module docstring."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,  # OpenAI's name for it
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type, code, param)
        self.retry_after, self.should_retry = retry_after, should_retry

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def error_response(error: OpenAIError) -> Response:
    """The HTTP response of ``error`` (its code also goes to the access log)."""
    if has_request_context():
        state_of(request.scope).error_code = error.code or error.type
    response = Response(json.dumps(error.body()), error.status, content_type="application/json")
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if error.should_retry is not None:
        response.headers["x-should-retry"] = "true" if error.should_retry else "false"
    return response


def _from_api_error(exc: ApiError) -> OpenAIError:
    kind = SERVER_ERROR if exc.status >= 500 else INVALID_REQUEST
    if exc.status == 429:
        kind = "requests"
    retry_after = getattr(exc, "retry_after", None)
    return OpenAIError(exc.status, exc.msg, type=kind, code=exc.code,
                       retry_after=retry_after if isinstance(retry_after, int) else None)


def _from_limit(exc: LimitError) -> OpenAIError:
    retry_after = exc.retry_after or None
    if isinstance(exc, BudgetExceeded):
        return OpenAIError(429, str(exc), type="insufficient_quota", code="insufficient_quota",
                           should_retry=False)
    code = "too_many_answers" if isinstance(exc, TooManyAnswers) else "rate_limit_exceeded"
    return OpenAIError(429, str(exc), type="requests", code=code, retry_after=retry_after)


def _from_upstream(exc: UpstreamError) -> OpenAIError:
    if isinstance(exc, UpstreamRateLimited):
        return OpenAIError(429, "The model's upstream is rate limiting this server; retry "
                           f"later. ({exc})", type="requests", code="upstream_rate_limited")
    if isinstance(exc, UpstreamTimeout):
        return OpenAIError(504, f"The model's upstream timed out. ({exc})", type=SERVER_ERROR,
                           code="upstream_timeout", should_retry=False)
    return OpenAIError(502, f"The model's upstream failed. ({exc})", type=SERVER_ERROR,
                       code="upstream_error", should_retry=False)


def to_openai_error(exc: BaseException) -> OpenAIError:
    """The OpenAI-shaped error for anything a ``/v1`` request may raise (unexpected ones are
    logged and answered 500 without internals)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ApiError):
        return _from_api_error(exc)
    if isinstance(exc, LimitError):
        return _from_limit(exc)
    if isinstance(exc, UpstreamError):
        return _from_upstream(exc)
    if isinstance(exc, StorageError):
        log.error("storage failure: %s", type(exc).__name__)
        return OpenAIError(503, "Storage is unavailable, retry later.", type=SERVER_ERROR,
                           code="storage_unavailable")
    if isinstance(exc, RequestSchemaValidationError):
        return OpenAIError(400, f"Invalid request: {exc.validation_error}",
                           code="invalid_request")
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        if status >= 500:
            log.error("HTTP %s raised inside a /v1 handler", status)
        fallback = "http_error" if status < 500 else "internal_error"
        return OpenAIError(status, exc.description or exc.name or "Error",
                           type=SERVER_ERROR if status >= 500 else INVALID_REQUEST,
                           code=HTTP_CODES.get(status, fallback))
    if isinstance(exc, ChatServerError):
        log.error("unmapped %s in a /v1 request: %s", type(exc).__name__, exc)
        return OpenAIError(500, "Internal server error.", type=SERVER_ERROR, code=exc.code)
    log.error("unhandled %s in a /v1 request", type(exc).__name__, exc_info=exc)
    return OpenAIError(500, "Internal server error.", type=SERVER_ERROR, code="internal_error")


def install(bp: Blueprint) -> None:
    """Answer every error of ``bp``'s requests (its routes, and the access control that runs
    before them) in OpenAI's shape; more specific than the app's handlers (``web.errors``)."""

    async def handle(exc: Exception) -> Response:
        return error_response(to_openai_error(exc))

    bp.register_error_handler(Exception, handle)  # blueprint handlers are looked up first
