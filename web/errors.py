"""Every error the edge answers is JSON ``{"status", "msg", "detail", "code"}``.

``install_error_handlers`` maps our ``ApiError``, quart-schema validation errors, werkzeug HTTP
errors (404, 405, malformed JSON, ...), storage failures and anything unexpected to that body.
Unexpected exceptions are logged (to ``chat.errors``) and answered 500 without internals.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel, ValidationError
from quart import Quart, Response, has_request_context, has_websocket_context, request, websocket
from quart_schema import RequestSchemaValidationError
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException

from core.errors import ApiError, StorageConflict, StorageError, StorageTimeout, StorageUnavailable
from web.state import state_of

log = logging.getLogger("chat.errors")


class ErrorBody(BaseModel):
    """The body of every error response."""

    status: int
    msg: str
    detail: Any = None
    code: str


HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def error_body(status: int, code: str, msg: str, detail: object = None) -> bytes:
    return json.dumps({"status": status, "msg": msg, "detail": detail, "code": code}).encode()


def error_response(status: int, code: str, msg: str, detail: object = None) -> Response:
    if has_request_context():
        state_of(request.scope).error_code = code
    elif has_websocket_context():
        state_of(websocket.scope).error_code = code
    return Response(error_body(status, code, msg, detail), status, content_type="application/json")


def malformed_json(msg: str = "The request body is not valid JSON.") -> ApiError:
    return ApiError(400, "malformed_json", msg)


def not_json() -> ApiError:
    return ApiError(415, "unsupported_media_type",
                    "The request body must be JSON (Content-Type: application/json).",
                    {"expected": "application/json"})


class JsonErrorRequest(TrioRequest):
    """A request whose JSON body, when a route reads one, is JSON or a clear 4xx:

    - not UTF-8 (RFC 8259: JSON is UTF-8, whatever ``charset`` says) → 400 ``malformed_json``;
    - empty or not JSON → 400 ``malformed_json``; nested deeper than the parser's recursion
      limit (``[[[[...``: ``RecursionError``, not a ``ValueError``) → 400 too;
    - a body under another content type (text/plain, a form, ...) → 415
      ``unsupported_media_type``; no body and no content type at all reads as "no JSON", which
      the route's schema then refuses (422);
    - over ``MAX_CONTENT_LENGTH`` → 413 ``payload_too_large`` (werkzeug's error, mapped).
    """

    def on_json_loading_failed(self, error: Exception) -> Any:
        raise malformed_json()

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not (force or self.is_json) and (self.mimetype or self.content_length):
            if silent:
                return None
            raise not_json()
        try:
            return await super().get_json(force=force, silent=silent, cache=cache)
        except (RecursionError, UnicodeDecodeError) as exc:
            if silent:
                return None
            if isinstance(exc, UnicodeDecodeError):
                raise malformed_json("The request body is not UTF-8 JSON.") from None
            raise malformed_json() from None


def _validation_detail(exc: RequestSchemaValidationError) -> list[dict[str, object]]:
    inner = exc.validation_error
    if isinstance(inner, ValidationError):
        return [
            {
                "field": ".".join(str(p) for p in err["loc"]) or "body",
                "msg": err["msg"],
                "type": err["type"],
            }
            for err in inner.errors(include_url=False, include_input=False, include_context=False)
        ]
    return [{"field": "body", "msg": str(inner), "type": "invalid"}]


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.msg, exc.detail)

    @app.errorhandler(RequestSchemaValidationError)
    async def _schema_error(exc: RequestSchemaValidationError) -> Response:
        detail = _validation_detail(exc)
        fields = ", ".join(sorted({str(d["field"]) for d in detail}))
        return error_response(422, "validation_error", f"Invalid request: {fields}", detail)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status >= 500:
            log.error("HTTP %s raised inside a handler", status)
        code = HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
        response = error_response(status, code, exc.name or "Error", None)
        if status == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods or ())  # type: ignore[attr-defined]
        return response

    @app.errorhandler(StorageConflict)
    async def _conflict(exc: StorageConflict) -> Response:
        return error_response(409, "conflict", "The change conflicts with existing data.")

    @app.errorhandler(StorageError)
    async def _storage(exc: StorageError) -> Response:
        log.error("storage failure: %s", type(exc).__name__)
        if isinstance(exc, (StorageUnavailable, StorageTimeout)):
            return error_response(503, "storage_unavailable", "Storage is unavailable, retry later.")
        return error_response(500, "storage_error", "Internal storage error.")

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled %s", type(exc).__name__)
        return error_response(500, "internal_error", "Internal server error.")
