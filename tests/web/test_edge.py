"""The layers around the routes: trusted host, CORS, errors, health, request state, access log."""

from __future__ import annotations

import json
import logging
from html.parser import HTMLParser

import pytest

from core.networks import parse_networks
from core.settings import Settings
from scripts.hmac_sign import sign_query
from tests.web.conftest import CHEAP_HASHER, PASSWORD, Client, bearer, error_code, new_key, register
from web.access_control import PathClass, classify
from web.access_log import redact_path
from web.app import create_app
from web.state import client_ip


async def test_health_and_ready(client: Client) -> None:
    assert (await (await client.get("/health")).get_json()) == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and (await ready.get_json()) == {"redis": "ok", "database": "ok"}


async def test_ready_names_the_failed_store(web_settings: Settings, redis_actor: object) -> None:
    broken = web_settings.model_copy(
        update={"database_url": web_settings.sqlalchemy_url.replace(":3306/", ":1/"), "mysql_statement_timeout": 1}
    )
    app = create_app(broken, extra_services=(), password_hasher=CHEAP_HASHER)
    async with app.test_app() as running:
        r = await Client(running.test_client()).get("/health/ready")
        body = await r.get_json()
        assert r.status_code == 503 and body["code"] == "not_ready"
        assert body["detail"]["redis"] == "ok" and body["detail"]["database"] != "ok"
        assert "database" in body["msg"] and set(body) == {"status", "msg", "detail", "code"}


async def test_trusted_hosts(client: Client) -> None:
    assert (await client.get("/openapi.json", headers={"Host": "localhost:8000"})).status_code == 200
    assert (await client.get("/openapi.json", headers={"Host": "api.example.com"})).status_code == 200
    for host in ["evil.com", "example.com", "api.example.com.evil.com", ""]:
        r = await client.get("/openapi.json", headers={"Host": host})
        assert r.status_code == 400 and await error_code(r) == "invalid_host", host
    assert (await client.get("/health", headers={"Host": "10.9.8.7"})).status_code == 200


async def test_cors(client: Client) -> None:
    allowed = "https://app.example.com"
    pre = await client.request("OPTIONS", "/api/user/me", headers={
        "Origin": allowed, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == allowed
    assert pre.headers["Access-Control-Allow-Credentials"] == "true"
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"]
    denied = await client.request("OPTIONS", "/api/user/me", headers={
        "Origin": "https://evil.example.net", "Access-Control-Request-Method": "GET"})
    assert denied.status_code == 400 and "Access-Control-Allow-Origin" not in denied.headers
    simple = await client.get("/health", headers={"Origin": "http://localhost:3000"})
    assert simple.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    other = await client.get("/health", headers={"Origin": "https://evil.example.net"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Credentials" not in other.headers


async def test_any_origin_never_with_credentials(web_settings: Settings, redis_actor: object) -> None:
    settings = web_settings.model_copy(update={"allowed_origins": ["*"]})
    app = create_app(settings, extra_services=(), password_hasher=CHEAP_HASHER)
    async with app.test_app() as running:
        r = await Client(running.test_client()).get("/health", headers={"Origin": "https://a.b"})
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers


async def test_errors_are_json(client: Client) -> None:
    r = await client.get("/no/such/route")
    assert r.status_code == 404 and await error_code(r) == "not_found"
    r = await client.get("/chatgpt/static/" + "é" * 200)  # over NAME_MAX: was a 500
    assert r.status_code == 404 and await error_code(r) == "not_found"
    r = await client.request("DELETE", "/health")
    assert r.status_code == 405 and await error_code(r) == "method_not_allowed"
    r = await client.post("/api/auth/login/email", data=b"x" * (2 * 1024 * 1024),
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and await error_code(r) == "payload_too_large"
    r = await client.post("/api/auth/login/email", json=["not", "an", "object"])
    assert r.status_code == 422
    r = await client.post("/api/auth/login/email", data=b"email=a", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and await error_code(r) == "unsupported_media_type"
    # not UTF-8 (was a 500: UnicodeDecodeError while reading the body)
    r = await client.post("/api/auth/login/email", data=b"\x84\x85\x86",
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and await error_code(r) == "malformed_json"


async def test_docs_render_offline(client: Client) -> None:
    page = await (await client.get("/docs")).get_data(as_text=True)
    assert "https://" not in page and "/docs-assets/swagger-ui-bundle.js" in page
    js = await client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(await js.get_data()) > 100_000
    assert (await client.get("/docs-assets/../app.py")).status_code == 404
    spec = await (await client.get("/openapi.json")).get_json()
    assert {"bearer", "cookie", "hmac_key", "hmac_signature"} <= set(spec["components"]["securitySchemes"])
    for path in ["/api/auth/register/{sns_type}", "/api/auth/login/{sns_type}", "/api/user/me",
                 "/api/user/apikeys", "/api/user/apikeys/{key_id}", "/api/user/apikeys/{key_id}/whitelists",
                 "/api/user/apikeys/{key_id}/whitelists/{list_id}", "/api/services/", "/health", "/health/ready"]:
        assert path in spec["paths"], path


class _Outline(HTMLParser):
    """The start tags of a page, in order, and its declarations (``<!DOCTYPE ...>``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.declarations: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_decl(self, decl: str) -> None:
        self.declarations.append(decl)


async def test_docs_is_a_whole_html_document(client: Client) -> None:
    """Not a fragment starting at ``<head>``: browsers render that in quirks mode."""
    r = await client.get("/docs")
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
    text = await r.get_data(as_text=True)
    assert text.startswith("<!DOCTYPE html>")
    outline = _Outline()
    outline.feed(text)
    assert [d.lower() for d in outline.declarations] == ["doctype html"]
    names = [tag for tag, _ in outline.tags]
    assert names[:2] == ["html", "head"] and names.count("html") == 1
    assert outline.tags[0][1].get("lang") == "en"
    assert "body" in names
    head = outline.tags[names.index("head"):names.index("body")]
    assert ("meta", {"charset": "utf-8"}) in head and "title" in [tag for tag, _ in head]
    assert "<title>Trio chat server" in text
    assert text.rstrip().endswith("</html>") and "</head>" in text and "</body>" in text
    assert 'url: "/openapi.json"' in text


def test_path_classes() -> None:
    assert classify("/") is PathClass.PUBLIC
    assert classify("/health/ready") is PathClass.PUBLIC
    assert classify("/api/auth/login/email") is PathClass.PUBLIC
    assert classify("/chatgpt") is PathClass.PUBLIC
    assert classify("/ws/chatgpt/abc") is PathClass.PUBLIC
    assert classify("/api/services") is PathClass.SERVICE
    assert classify("/api/services/x") is PathClass.SERVICE
    assert classify("/api/servicesX") is PathClass.USER
    assert classify("/api/authx") is PathClass.USER
    assert classify("/api/user/me") is PathClass.USER


def test_client_ip_honours_only_trusted_proxies() -> None:
    proxies = parse_networks(["10.0.0.0/8", "::1"])

    def scope(peer: str, xff: str | None) -> dict[str, object]:
        headers = [(b"x-forwarded-for", xff.encode())] if xff else []
        return {"client": (peer, 1), "headers": headers}

    assert client_ip(scope("1.2.3.4", "9.9.9.9"), proxies) == "1.2.3.4"
    assert client_ip(scope("10.0.0.5", "9.9.9.9"), proxies) == "9.9.9.9"
    assert client_ip(scope("10.0.0.5", "6.6.6.6, 9.9.9.9, 10.0.0.7"), proxies) == "9.9.9.9"
    assert client_ip(scope("10.0.0.5", "garbage"), proxies) == "10.0.0.5"
    assert client_ip(scope("10.0.0.5", None), proxies) == "10.0.0.5"
    assert client_ip(scope("1.2.3.4", "9.9.9.9"), []) == "1.2.3.4"


def test_redact_path() -> None:
    assert redact_path("/ws/chatgpt/SECRETKEY") == "/ws/chatgpt/***"
    assert redact_path("/ws/chatgpt/SECRET/more") == "/ws/chatgpt/***"
    assert redact_path("/api/user/me") == "/api/user/me"


async def test_access_log_has_fields_and_no_secrets(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = await register(client, "logged@example.com")
    login = await client.post("/api/auth/login/email", json={"email": "logged@example.com", "password": PASSWORD})
    assert login.status_code == 200
    key = await new_key(client, token)
    query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]))
    assert (await client.get(f"/api/services/?{query}", headers=headers)).status_code == 200
    assert (await client.get(f"/api/services/?{query}", headers=headers)).status_code == 401
    await client.get(f"/ws/chatgpt/{key['access_key']}?chat_room_id=1")
    await client.get("/api/user/me", headers=bearer(token + "x"))
    await client.put("/api/user/me", json={"name": "secret-name-123"}, headers=bearer(token))

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "chat.access"]
    assert len(lines) >= 7
    for line in lines:
        assert set(line) >= {"method", "path", "status", "duration_ms", "client_ip", "user_id", "error_code"}
    services_ok = next(x for x in lines if x["path"] == "/api/services/" and x["status"] == 200)
    assert services_ok["user_id"] is not None and services_ok["client_ip"] == "127.0.0.1"
    replay = next(x for x in lines if x["path"] == "/api/services/" and x["status"] == 401)
    assert replay["error_code"] == "signature_replayed"
    assert any(x["path"] == "/ws/chatgpt/***" for x in lines)

    everything = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    secrets = [PASSWORD, token.removeprefix("Bearer "), str(key["secret_key"]),
               str(key["access_key"]), headers["secret"], "secret-name-123"]
    for secret in secrets:
        assert secret not in everything
