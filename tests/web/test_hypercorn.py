"""The app behind a real Hypercorn (trio worker) on a port, driven with httpx; and a
schemathesis fuzz run over real HTTP against ``/openapi.json`` that must find no 5xx.

Some checks need the real HTTP stack rather than the test client: what h11 lets through in a
header value (``\xa0`` / ``\x85`` are kept, only spaces and tabs are trimmed), percent-encoded
query strings exactly as sent, and bodies parsed by the real request class."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from quart_trio import QuartTrio

from core.settings import Settings
from scripts.hmac_sign import sign_query
from tests.web.conftest import CHEAP_HASHER, PASSWORD
from web.app import create_app
from web.chat_service import open_chat_service


@asynccontextmanager
async def serving(app: QuartTrio) -> AsyncIterator[str]:
    """``app`` on Hypercorn (trio worker) on a free port; its base URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(app, config, shutdown_trigger=stop.wait, task_status=task_status))  # type: ignore[arg-type]
        yield binds[0].replace("0.0.0.0", "127.0.0.1")
        stop.set()


@pytest.fixture
async def base_url(web_settings: Settings, redis_actor: object) -> AsyncIterator[str]:
    async with serving(create_app(web_settings, extra_services=(), password_hasher=CHEAP_HASHER)) as url:
        yield url


@pytest.fixture
async def chat_base_url(web_settings: Settings, redis_actor: object) -> AsyncIterator[str]:
    """The whole app, with the chat service the room routes need (503 without it)."""
    app = create_app(web_settings, extra_services=(open_chat_service,), password_hasher=CHEAP_HASHER)
    async with serving(app) as url:
        yield url


async def test_full_flow_over_http(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers={"Host": "localhost"}) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/health/ready")).status_code == 200
        r = await http.post("/api/auth/register/email", json={"email": "h@example.com", "password": PASSWORD})
        assert r.status_code == 201 and "HttpOnly" in r.headers["set-cookie"]
        token = r.json()["Authorization"]
        http.cookies.clear()
        me = await http.get("/api/user/me", headers={"Authorization": token})
        assert me.status_code == 200 and me.json()["email"] == "h@example.com"
        key = (await http.post("/api/user/apikeys", json={"user_memo": "m"}, headers={"Authorization": token})).json()
        query, headers = sign_query(key["access_key"], key["secret_key"], {"x": "1 2"})
        ok = await http.get(f"/api/services/?{query}", headers=headers)
        assert ok.status_code == 200 and ok.json() == {"your_email": "h@example.com"}
        again = await http.get(f"/api/services/?{query}", headers=headers)
        assert again.status_code == 401 and again.json()["code"] == "signature_replayed"
        bad_host = await http.get("/api/user/me", headers={"Host": "evil.com", "Authorization": token})
        assert bad_host.status_code == 400 and bad_host.json()["code"] == "invalid_host"
        docs = await http.get("/docs")
        assert "/docs-assets/swagger-ui-bundle.js" in docs.text
        assert (await http.get("/docs-assets/swagger-ui-bundle.js")).status_code == 200


# Examples per operation: ~1 minute for the whole run on the 2-core test machine.
FUZZ_EXAMPLES = 200
# Deleting the account would turn every later case into a plain 401 (test_auth and
# test_user_apikeys cover these two).
DELETES_THE_ACCOUNT = {("DELETE", "/api/user/me"), ("DELETE", "/api/auth/register")}
# Logging out revokes the token it is sent with: these cases get a token of their own.
REVOKES_THE_TOKEN = {("POST", "/api/auth/logout")}


def _fuzz_operation(operation: Any, base_url: str, token: str) -> tuple[list[str], int]:
    """The 5xx answers to ``FUZZ_EXAMPLES`` generated cases of one operation; how many ran."""
    failures: list[str] = []
    ran = 0

    @hsettings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
               phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        nonlocal ran
        ran += 1
        response = case.call(
            base_url=base_url, headers={"Host": "localhost", "Authorization": token}, timeout=10
        )
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

    check()
    return failures, ran


def _fuzz(base_url: str, spec: dict[str, object], token: str,
          spare_token: str) -> tuple[list[str], dict[str, int]]:
    """Every 5xx is a failure, on every operation; and how many cases each operation ran."""
    import schemathesis

    failures: list[str] = []
    cases: dict[str, int] = {}
    for result in schemathesis.openapi.from_dict(spec).get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in DELETES_THE_ACCOUNT:
            continue
        revokes = (operation.method.upper(), operation.path) in REVOKES_THE_TOKEN
        found, ran = _fuzz_operation(operation, base_url, spare_token if revokes else token)
        failures += found
        cases[f"{operation.method.upper()} {operation.path}"] = ran
    return failures, cases


@pytest.mark.timeout(600)  # ~1 minute alone; more when the machine is shared
async def test_fuzz_finds_no_server_error(chat_base_url: str) -> None:
    async with httpx.AsyncClient(base_url=chat_base_url, headers={"Host": "localhost"}) as http:
        spec = (await http.get("/openapi.json")).json()
        r = await http.post("/api/auth/register/email", json={"email": "fuzz@example.com", "password": PASSWORD})
        token = r.json()["Authorization"]
        r = await http.post("/api/auth/login/email", json={"email": "fuzz@example.com", "password": PASSWORD})
        spare_token = r.json()["Authorization"]
        # a key and a room that exist, so that some cases get past the lookups
        await http.post("/api/user/apikeys", json={"user_memo": "fuzz"}, headers={"Authorization": token})
        await http.put("/api/user/chatrooms/0", json={"name": "fuzz"}, headers={"Authorization": token})
    started = time.monotonic()
    failures, cases = await trio.to_thread.run_sync(_fuzz, chat_base_url, spec, token, spare_token)
    print(f"fuzz: {sum(cases.values())} cases over {len(cases)} operations in "
          f"{time.monotonic() - started:.0f} s")
    assert failures == []
    assert any("/chatrooms" in name for name in cases) and min(cases.values()) > 0, cases
    async with httpx.AsyncClient(base_url=chat_base_url, headers={"Host": "localhost"}) as http:
        me = await http.get("/api/user/me", headers={"Authorization": token})
        assert me.status_code == 200  # the token stayed valid: every case reached its route
        rooms = await http.get("/api/user/chatrooms", headers={"Authorization": token})
        assert rooms.status_code == 200  # the chat service ran: the room routes were fuzzed


async def _new_key(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    r = await http.post("/api/auth/register/email", json={"email": email, "password": PASSWORD})
    token = r.json()["Authorization"]
    http.cookies.clear()
    created = await http.post("/api/user/apikeys", json={}, headers={"Authorization": token})
    assert created.status_code == 201
    key: dict[str, str] = created.json()
    return key


async def test_signature_header_is_compared_exactly_and_replays_stay_refused(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers={"Host": "localhost"}) as http:
        key = await _new_key(http, "replay@example.com")
        query, headers = sign_query(key["access_key"], key["secret_key"], nonce=False)
        url = f"/api/services/?{query}"
        assert (await http.get(url, headers=headers)).status_code == 200
        signature = headers["secret"].encode()
        # Bytes HTTP keeps in a header value but str.strip() drops: each must not be a new call.
        for tail in (b"\xa0", b"\x85", b"\xa0\xa0", b"\x85\xa0"):
            r = await http.get(url, headers={"secret": signature + tail})
            assert r.status_code == 401, (tail, r.text)
            assert r.json()["code"] in ("signature_invalid", "signature_replayed"), tail
        # A fresh query with such a byte appended is refused too: the signature must be exact.
        query, headers = sign_query(key["access_key"], key["secret_key"], nonce=False,
                                    params={"n": "2"})
        r = await http.get(f"/api/services/?{query}",
                           headers={"secret": headers["secret"].encode() + b"\xa0"})
        assert r.status_code == 401 and r.json()["code"] == "signature_invalid"
        r = await http.get(f"/api/services/?{query}", headers=headers)
        assert r.status_code == 200  # the exact signature: still unused, accepted


async def test_bad_input_is_4xx_not_5xx(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers={"Host": "localhost"}) as http:
        key = await _new_key(http, "input@example.com")
        # "²" is a digit to str.isdigit() but not to int()
        query = f"key={key['access_key']}&timestamp=%C2%B2"
        r = await http.get(f"/api/services/?{query}", headers={"secret": "x"})
        assert r.status_code == 401 and r.json()["code"] == "timestamp_invalid"
        query = f"key={key['access_key']}&timestamp=%EF%BC%91%EF%BC%92"  # fullwidth "12"
        r = await http.get(f"/api/services/?{query}", headers={"secret": "x"})
        assert r.status_code == 401 and r.json()["code"] == "timestamp_invalid"
        # JSON nested deeper than the parser's recursion limit
        r = await http.post("/api/auth/login/email", content=b"[" * 200_000,
                            headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "malformed_json", r.text
        r = await http.post("/api/auth/login/email", content=b'{"email": "\x84\xff"}',
                            headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "malformed_json", r.text
        r = await http.post("/api/auth/login/email", content=b"email=a",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type", r.text

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds anyway
            for _ in range(40):
                yield b" " * 65536

        r = await http.post("/api/auth/login/email", content=chunks(),
                            headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large", r.text


async def test_chat_page_files_only_with_their_security_headers(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers={"Host": "localhost"}) as http:
        page = await http.get("/chatgpt")
        assert page.status_code == 200 and "Content-Security-Policy" in page.headers
        # Quart's default static route would serve the same file without them
        for path in ("/static/index.html", "/static/js/app.js"):
            r = await http.get(path)
            assert r.status_code in (401, 404), (path, r.status_code)
            assert "<html" not in r.text.lower()
