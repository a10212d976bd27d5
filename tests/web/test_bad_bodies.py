"""Bad request bodies on every route: a 4xx with the JSON error body, never a 5xx.

The routes come from the app itself: its ``url_map``, and quart-schema's mark on the views that
read a JSON body (cross-checked with the request bodies ``/openapi.json`` documents), so a new
route is covered the day it is added. What a route that reads JSON answers (``web.errors``):

- body not UTF-8, empty, or not JSON → 400 ``malformed_json``
- body over ``MAX_BODY_BYTES`` → 413 ``payload_too_large``
- a body under another content type (text/plain, a form) → 415 ``unsupported_media_type``
- no body and no content type → 422 ``validation_error`` (the schema wants an object)

Every other route ignores a body, whatever it is, and still never answers 5xx.

The OpenAI-compatible API (``/v1``, ``web.openai_errors``) answers the same statuses in OpenAI's
error shape ``{"error": {"message", "type", "param", "code"}}``, except that a missing body is
400 there (OpenAI's status for any invalid request), and is reached with an API key.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE
from quart_trio import QuartTrio

from core.settings import Settings
from scripts.hmac_sign import sign_query
from tests.web.conftest import CHEAP_HASHER, Client, bearer, new_key, register
from web.app import MAX_BODY_BYTES, create_app
from web.chat_service import open_chat_service

METHODS = ("POST", "PUT", "PATCH", "DELETE", "GET")
JSON = "application/json"


@dataclass(frozen=True)
class BadBody:
    name: str
    data: bytes
    content_type: str | None
    status: int  # what a route that reads JSON answers
    code: str


BAD_BODIES = (
    BadBody("not_utf8", b'{"email": "\x84\xff@example.com"}', JSON, 400, "malformed_json"),
    BadBody("not_utf8_bom", b"\xff\xfe{\x00}\x00", JSON, 400, "malformed_json"),
    BadBody("empty", b"", JSON, 400, "malformed_json"),
    BadBody("truncated", b'{"email": ', JSON, 400, "malformed_json"),
    BadBody("huge", b'{"user_memo": "' + b"x" * MAX_BODY_BYTES + b'"}', JSON, 413,
            "payload_too_large"),
    BadBody("text_plain", b'{"email": "a@example.com"}', "text/plain", 415,
            "unsupported_media_type"),
    BadBody("form", b"email=a%40example.com", "application/x-www-form-urlencoded", 415,
            "unsupported_media_type"),
    BadBody("absent", b"", None, 422, "validation_error"),
)


@dataclass(frozen=True)
class Route:
    method: str
    rule: str  # werkzeug form: /api/user/apikeys/<int(max=...):key_id>
    reads_json: bool

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", self.rule)

    @property
    def sample_path(self) -> str:
        """Every path argument as ``1``: an int and a string converter both take it. The body
        is refused before the route looks the id up."""
        return re.sub(r"<[^>]+>", "1", self.rule)


def routes_of(app: QuartTrio) -> Iterator[Route]:
    for rule in app.url_map.iter_rules():
        if rule.websocket:
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted(set(rule.methods or ()) & set(METHODS)):
            yield Route(method, rule.rule, hasattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE))


@pytest.fixture
async def chat_client(web_settings: Settings, redis_actor: object) -> AsyncIterator[Client]:
    """The whole app, chat service included (the room routes answer 503 without it)."""
    app = create_app(web_settings, extra_services=(open_chat_service,),
                     password_hasher=CHEAP_HASHER)
    async with app.test_app() as running:
        yield Client(running.test_client())


def is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


async def signed_in(client: Client, route: Route) -> tuple[str, dict[str, str]]:
    """The route's sample path and the headers that get it past access control (a fresh user
    each time: a route may delete its account)."""
    token = await register(client, f"body-{uuid.uuid4().hex[:12]}@example.com")
    path = route.sample_path
    if is_openai(path):
        key = await new_key(client, token)
        return path, {"Authorization": f"Bearer {key['access_key']}.{key['secret_key']}"}
    if path == "/api/services" or path.startswith("/api/services/"):
        key = await new_key(client, token)
        query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]))
        return f"{path}?{query}", headers
    return path, bearer(token)


async def send(client: Client, route: Route, bad: BadBody):  # type: ignore[no-untyped-def]
    path, headers = await signed_in(client, route)
    if bad.content_type is not None:
        headers = {**headers, "Content-Type": bad.content_type}
    return await client.request(route.method, path, headers=headers, data=bad.data)


def openai_want(bad: BadBody) -> BadBody:
    """What ``/v1`` answers ``bad`` with."""
    if bad.status == 422:
        return BadBody(bad.name, bad.data, bad.content_type, 400, "invalid_value")
    return bad


async def openai_problem(response: object, want: BadBody | None) -> str | None:
    """``problem`` for ``/v1``: OpenAI's error body."""
    status: int = response.status_code  # type: ignore[attr-defined]
    want = openai_want(want) if want is not None else None
    if status >= 500 or (want is not None and status != want.status):
        text = await response.get_data(as_text=True)  # type: ignore[attr-defined]
        return f"HTTP {status}: {text[:200]}"
    if status < 400:
        return None
    if response.content_type != JSON:  # type: ignore[attr-defined]
        return f"HTTP {status} as {response.content_type}"  # type: ignore[attr-defined]
    body = await response.get_json()  # type: ignore[attr-defined]
    error = body.get("error") if isinstance(body, dict) else None
    if set(body) != {"error"} or not isinstance(error, dict) or set(error) != {
            "message", "type", "param", "code"}:
        return f"HTTP {status}, not OpenAI's error body: {body!r:.200}"
    if want is not None and error["code"] != want.code:
        return f"HTTP {status}, body {body!r:.200}"
    return None


async def problem(response: object, want: BadBody | None, path: str = "") -> str | None:
    """What is wrong with the answer (None: nothing). ``want`` None: any status below 500,
    and the JSON error body if it is an error."""
    if is_openai(path):
        return await openai_problem(response, want)
    status: int = response.status_code  # type: ignore[attr-defined]
    if status >= 500 or (want is not None and status != want.status):
        text = await response.get_data(as_text=True)  # type: ignore[attr-defined]
        return f"HTTP {status}: {text[:200]}"
    if status < 400:
        return None
    if response.content_type != JSON:  # type: ignore[attr-defined]
        return f"HTTP {status} as {response.content_type}"  # type: ignore[attr-defined]
    body = await response.get_json()  # type: ignore[attr-defined]
    if not isinstance(body, dict) or set(body) != {"status", "msg", "detail", "code"}:
        return f"HTTP {status}, not the error body: {body!r:.200}"
    if body["status"] != status or (want is not None and body["code"] != want.code):
        return f"HTTP {status}, body {body!r:.200}"
    return None


async def test_the_routes_are_found(app: QuartTrio) -> None:
    routes = list(routes_of(app))
    reading = {(r.method, r.openapi_path) for r in routes if r.reads_json}
    assert ("POST", "/api/auth/login/{sns_type}") in reading
    assert ("PUT", "/api/user/chatrooms/{chat_room_id}") in reading
    assert len(reading) >= 7 and len(routes) > len(reading)


async def test_openapi_documents_a_body_for_exactly_those_routes(
    app: QuartTrio, client: Client
) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    documented = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    reading = {(r.method, r.openapi_path) for r in routes_of(app) if r.reads_json}
    assert documented == reading


async def test_json_routes_refuse_bad_bodies_with_a_clear_4xx(
    app: QuartTrio, chat_client: Client
) -> None:
    failures: list[str] = []
    routes = [r for r in routes_of(app) if r.reads_json]
    for route in routes:
        for bad in BAD_BODIES:
            response = await send(chat_client, route, bad)
            if (found := await problem(response, bad, route.rule)) is not None:
                failures.append(f"{route.method} {route.rule} [{bad.name}] {found}")
    assert failures == []


async def test_other_routes_ignore_bodies_and_never_answer_5xx(
    app: QuartTrio, chat_client: Client
) -> None:
    failures: list[str] = []
    routes = [r for r in routes_of(app) if not r.reads_json]
    for route in routes:
        for bad in BAD_BODIES:
            response = await send(chat_client, route, bad)
            if (found := await problem(response, None, route.rule)) is not None:
                failures.append(f"{route.method} {route.rule} [{bad.name}] {found}")
    assert failures == []
