"""Security headers on every response the app sends: routes, errors of every layer (404, 405,
422, 429, 401, the trusted-host and CORS refusals, a 503), the docs and their assets, the chat
page and its files (whose own CSP stays as it is), and a WebSocket refused before the upgrade
(through a real Hypercorn)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from quart_trio import QuartTrio
from trio_websocket import ConnectionRejected, open_websocket_url

from core.settings import Settings
from tests.chat_server import running_server
from tests.web.conftest import CHEAP_HASHER, Client
from web.app import create_app
from web.routes_page import CONTENT_SECURITY_POLICY

EXPECTED = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def check(headers: Any, what: object) -> None:
    """Each header present exactly once, with our value (werkzeug's or httpx's headers)."""
    values = headers.get_list if isinstance(headers, httpx.Headers) else headers.get_all
    for name, value in EXPECTED.items():
        assert values(name) == [value], (what, name, headers)


async def test_every_kind_of_response_has_them(client: Client) -> None:
    responses = {
        "200": await client.get("/health"),
        "404": await client.get("/no/such/route"),
        "405": await client.delete("/health"),
        "422": await client.post("/api/auth/register/email", json={"email": "x"}),
        "400 route": await client.post("/api/auth/login/facebook",
                                       json={"email": "a@example.com", "password": "12345678"}),
        "401": await client.get("/api/user/me"),
        "400 host": await client.get("/api/user/me", headers={"Host": "evil.test"}),
        "400 cors": await client.request("OPTIONS", "/api/user/me", headers={
            "Origin": "https://evil.test", "Access-Control-Request-Method": "GET"}),
        "204 cors": await client.request("OPTIONS", "/api/user/me", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}),
        "docs": await client.get("/docs"),
        "openapi": await client.get("/openapi.json"),
        "docs asset": await client.get("/docs-assets/swagger-ui.css"),
    }
    for what, response in responses.items():
        assert response.status_code < 500, what
        check(response.headers, what)
    assert responses["404"].status_code == 404 and responses["422"].status_code == 422
    assert responses["400 host"].status_code == 400 and responses["400 cors"].status_code == 400

    # The page and its files: the same headers once each, and the page's own CSP unchanged.
    for path in ("/chatgpt", "/chatgpt/static/favicon.svg", "/chatgpt/static/index.html"):
        r = await client.get(path)
        assert r.status_code == 200, path
        check(r.headers, path)
        assert r.headers.get_all("Content-Security-Policy") == [CONTENT_SECURITY_POLICY], path
        assert r.headers["X-Frame-Options"] == "DENY"
    missing = await client.get("/chatgpt/static/nothing-here.js")
    assert missing.status_code == 404
    check(missing.headers, "page 404")


async def test_a_429_has_them(web_settings: Settings, redis_actor: object) -> None:
    app = create_app(web_settings.model_copy(update={"registrations_per_ip": 1}),
                     extra_services=(), password_hasher=CHEAP_HASHER)
    async with app.test_app() as running:
        client = Client(running.test_client())
        body = {"email": "one@example.com", "password": "12345678"}
        assert (await client.post("/api/auth/register/email", json=body)).status_code == 201
        refused = await client.post("/api/auth/register/email", json=body)
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        check(refused.headers, "429")


async def test_a_5xx_has_them(app: QuartTrio) -> None:
    """Before start-up (no services): 503 ``not_ready`` from the route."""
    r = await Client(app.test_client()).get("/api/user/me", headers={"Authorization": "x"})
    assert r.status_code == 503
    check(r.headers, "503")


@pytest.mark.parametrize("path", ["/ws/chatgpt/no-such-key", "/ws/chatgpt?ticket=nope"])
async def test_over_real_http_and_a_refused_socket(db_settings: Settings, redis_actor: object,
                                                   path: str) -> None:
    async with running_server(db_settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for url in ("/health", "/missing", "/docs"):
                check((await http.get(url)).headers, url)
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(server.ws_url + path):
                pass
        assert info.value.status_code == 403
        headers = httpx.Headers([(k.decode(), v.decode()) for k, v in info.value.headers])
        check(headers, path)
