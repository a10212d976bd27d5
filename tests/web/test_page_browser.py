"""The chat page at /chatgpt in a real browser (Debian's Chromium, driven by Playwright).

Against a real server in subprocesses (Hypercorn trio worker, fresh MariaDB, own Redis prefix,
the mock upstream): register and chat at once (no API key: the socket opens with a single-use
ticket, a fresh one per connection), streamed answers, Stop, reload and see the history, HTML in
messages shown as text (no script runs), rooms, readable errors, the API keys panel, losing the
connection and resuming a half-streamed answer, a phone-sized screen with the keyboard only.

Plain sync tests (Playwright's sync API), not trio ones. On failure each test saves a
screenshot (and the page's HTML and the server logs) in its ``tmp_path``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from scripts.mock_upstream import expected_answer
from tests.tools import require_tool
from tests.web.conftest_page import CHROMIUM, CHROMIUM_ARGS, LiveServer, live_server
from tests.web.scripted_upstream import Script, scripted_upstream

pytestmark = [pytest.mark.timeout(180)]

PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 15_000
MOCK_TOKENS = 16  # words in a default mock answer


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from scripts.vendor_js import check

    problems = check()
    assert not problems, (
        f"vendored JS missing ({problems}): run python -m scripts.vendor_js --install"
    )
    with live_server(tmp_path_factory.mktemp("page_server"), mock_tokens=MOCK_TOKENS) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = require_tool(str(CHROMIUM), "chromium")  # fails, not skips, when missing
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class PageWatch:
    """What the page did that it should not: dialogs, uncaught errors, console errors."""

    def __init__(self) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console_errors: list[str] = []


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


def _open_page(
    request: pytest.FixtureRequest,
    browser: Any,
    server: LiveServer,
    watch: PageWatch,
    tmp_path: Path,
    **context_args: Any,
) -> Iterator[Any]:
    context = browser.new_context(base_url=server.url, **context_args)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()

    def on_dialog(dialog: Any) -> None:
        watch.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.on("console", lambda m: watch.console_errors.append(m.text) if m.type == "error" else None)
    failed_before = request.session.testsfailed
    try:
        yield page
    finally:
        # The call phase's report is in by teardown: a new failure means this test failed.
        if request.session.testsfailed > failed_before:
            _save_failure_artifacts(page, server, watch, tmp_path)
        context.close()


def _save_failure_artifacts(page: Any, server: LiveServer, watch: PageWatch, out: Path) -> None:
    from playwright.sync_api import Error as PlaywrightError

    try:
        page.screenshot(path=str(out / "failure.png"), full_page=True)
        (out / "failure.html").write_text(page.content(), encoding="utf-8")
    except PlaywrightError as exc:  # the page may be gone; the logs still help
        (out / "screenshot-error.txt").write_text(repr(exc), encoding="utf-8")
    (out / "server-logs.txt").write_text(server.logs(), encoding="utf-8")
    (out / "page-events.json").write_text(json.dumps(vars(watch), indent=2), encoding="utf-8")
    print(f"\nbrowser test artifacts: {out}")


@pytest.fixture
def page(
    request: pytest.FixtureRequest,
    browser: Any,
    server: LiveServer,
    watch: PageWatch,
    tmp_path: Path,
) -> Iterator[Any]:
    yield from _open_page(
        request, browser, server, watch, tmp_path, viewport={"width": 1280, "height": 860}
    )


@pytest.fixture
def phone(
    request: pytest.FixtureRequest,
    browser: Any,
    server: LiveServer,
    watch: PageWatch,
    tmp_path: Path,
) -> Iterator[Any]:
    yield from _open_page(
        request,
        browser,
        server,
        watch,
        tmp_path,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )


# -- helpers -------------------------------------------------------------------------------------


def expect() -> Any:
    from playwright.sync_api import expect as pw_expect

    pw_expect.set_options(timeout=TIMEOUT_MS)
    return pw_expect


def new_email() -> str:
    return f"page{uuid.uuid4().hex[:10]}@example.com"


def register(page: Any, email: str | None = None) -> str:
    email = email or new_email()
    page.goto("/chatgpt")
    expect()(page.get_by_test_id("auth-view")).to_be_visible()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_test_id("register-button").click()
    expect()(page.get_by_test_id("app-view")).to_be_visible()
    expect()(page.get_by_test_id("user-email")).to_have_text(email)
    return email


def create_key(page: Any, memo: str = "browser") -> str:
    """Create a key in the API keys panel (for scripts: the chat does not need one)."""
    page.get_by_test_id("new-key-memo").fill(memo)
    page.get_by_test_id("create-key-button").click()
    panel = page.get_by_test_id("new-secret-panel")
    expect()(panel).to_be_visible()
    secret = page.get_by_test_id("new-secret-key").input_value()
    access: str = page.get_by_test_id("new-access-key").input_value()
    assert len(secret) >= 16 and len(access) >= 8
    page.get_by_test_id("copy-secret-button").click()
    expect()(page.get_by_test_id("copy-feedback")).not_to_be_empty()
    page.get_by_test_id("dismiss-secret-button").click()
    expect()(panel).to_be_hidden()
    item = page.locator(f'[data-testid="key-item"][data-access-key="{access}"]')
    expect()(item.get_by_test_id("key-status")).to_have_text("active")
    return access


def page_token(page: Any) -> str:
    """The JWT the page got at login / registration, for REST calls of the test's own."""
    token: str | None = page.evaluate("() => localStorage.getItem('chat.jwt')")
    assert token, "the page keeps no JWT in localStorage"
    return token


def api_keys_of(server: LiveServer, token: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.url}/api/user/apikeys",
                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    keys: list[dict[str, Any]] = r.json()
    return keys


def ticket_of(socket_url: str) -> str:
    """The ticket of a page socket URL; asserts it is ``/ws/chatgpt?ticket=…&chat_room_id=…``
    (no access key in the path or the query)."""
    parts = urlsplit(socket_url)
    query = parse_qs(parts.query)
    assert parts.path == "/ws/chatgpt", socket_url
    assert set(query) == {"ticket", "chat_room_id"}, socket_url
    assert len(query["ticket"]) == 1 and query["ticket"][0], socket_url
    return query["ticket"][0]


# Text a page that needs no key for chatting must not show (the old page's prompts).
KEY_NEEDED_TEXT = re.compile(r"create (an api key|one) .*chat|api key (first|selected)|"
                             r"connects with the selected key", re.IGNORECASE)


def wait_connected(page: Any) -> None:
    expect()(page.locator('[data-testid="connection-status"][data-state="open"]')).to_be_visible()


def send(page: Any, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")
    expect()(box).to_have_value("")


def messages(page: Any, role: str) -> Any:
    return page.locator(f'[data-testid="message"][data-role="{role}"]')


def last_answer_done(page: Any) -> str:
    answer = messages(page, "assistant").last
    expect()(answer).to_have_attribute("data-state", "done")
    text: str = answer.get_by_test_id("message-body").inner_text()
    return text


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def mock_answer(user_text: str, tokens: int = MOCK_TOKENS) -> str:
    return expected_answer([{"role": "user", "content": user_text}], tokens)


# -- tests ---------------------------------------------------------------------------------------


def test_page_is_served_with_its_libraries_and_a_strict_policy(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/chatgpt")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "https://" not in response.text and "http://" not in response.text  # no CDN
    for path in (
        "/chatgpt/static/js/app.js",
        "/chatgpt/static/vendor/marked.esm.js",
        "/chatgpt/static/vendor/purify.es.js",
        "/chatgpt/static/vendor/highlight.min.js",
    ):
        r = httpx.get(f"{server.url}{path}")
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/javascript"), path
    assert httpx.get(f"{server.url}/chatgpt/static/../routes_page.py").status_code == 404


def test_chat_scenario(page: Any, server: LiveServer, watch: PageWatch) -> None:
    """register → message (no key) → streamed answer → long answer + Stop → reload → history →
    HTML in a message is text, no dialog → switch rooms."""
    register(page)
    expect()(page.get_by_test_id("no-keys")).to_be_visible()
    wait_connected(page)

    # A message and its streamed answer, whole.
    first = "Hello there, page!"
    send(page, first)
    expect()(messages(page, "user").last).to_have_text(re.compile(re.escape(first)))
    answer = last_answer_done(page)
    assert squash(answer) == squash(mock_answer(first))
    expect()(page.get_by_test_id("stop-button")).to_be_hidden()

    # A long answer, stopped half-way.
    long_prompt = "Tell me a long story [mock tokens=2000 delay_ms=20]"
    send(page, long_prompt)
    streaming = page.locator(
        '[data-testid="message"][data-role="assistant"][data-state="streaming"]'
    )
    expect()(streaming).to_have_count(1)
    stop = page.get_by_test_id("stop-button")
    expect()(stop).to_be_visible()
    page.wait_for_function(
        """() => { const m = document.querySelector('[data-state="streaming"] [data-testid="message-body"]');
                   return m && m.innerText.split(/\\s+/).length > 10; }"""
    )
    stop.click()
    stopped = last_answer_done(page)
    expect()(stop).to_be_hidden()
    full = mock_answer(long_prompt, 2000)
    assert 10 < len(squash(stopped).split(" ")) < 2000
    assert squash(full).startswith(squash(stopped))

    # Reload: still logged in (cookie / stored token), the history comes back from the init frame.
    page.reload()
    wait_connected(page)
    expect()(messages(page, "user")).to_have_count(2)
    expect()(messages(page, "assistant")).to_have_count(2)
    bodies = messages(page, "assistant").get_by_test_id("message-body").all_inner_texts()
    assert squash(bodies[0]) == squash(answer)
    assert squash(bodies[1]).startswith(squash(stopped)[:40])

    # HTML in a user message, and in a server reply, is text: nothing runs, no dialog.
    evil = "look <img src=x onerror=alert(1)> and <script>alert(2)</script>"
    send(page, evil)
    expect()(messages(page, "user").last.get_by_test_id("message-body")).to_have_text(evil)
    last_answer_done(page)
    send(page, "/echo <img src=x onerror=alert(3)> <b>bold?</b>")
    note = messages(page, "note").last
    expect()(note).to_contain_text("<img src=x onerror=alert(3)>")
    page.reload()
    wait_connected(page)
    expect()(messages(page, "user").last.get_by_test_id("message-body")).to_have_text(evil)
    page.wait_for_timeout(300)
    assert page.locator("#messages img, #messages script, #messages [onerror]").count() == 0
    assert watch.dialogs == []
    # Not even an attempt that the Content-Security-Policy had to block.
    assert not [e for e in watch.console_errors if "Content Security Policy" in e]

    # A second room: empty, its own history; switching back shows the first room's.
    page.get_by_test_id("new-room-name").fill("Second room")
    page.get_by_test_id("new-room-button").click()
    wait_connected(page)
    expect()(page.get_by_test_id("room-title")).to_have_text("Second room")
    expect()(messages(page, "user")).to_have_count(0)
    send(page, "hi in room two")
    last_answer_done(page)
    rooms = page.get_by_test_id("room-item")
    expect()(rooms).to_have_count(2)
    expect()(page.locator('[data-testid="room-button"][aria-current="true"]')).to_contain_text(
        "Second room"
    )

    page.locator('[data-testid="room-item"][data-room-id="0"] [data-testid="room-button"]').click()
    wait_connected(page)
    expect()(messages(page, "user")).to_have_count(3)
    expect()(messages(page, "user").first).to_contain_text(first)

    page.get_by_test_id("room-button").filter(has_text="Second room").click()
    wait_connected(page)
    expect()(messages(page, "user")).to_have_count(1)
    expect()(messages(page, "user").first).to_have_text(re.compile("hi in room two"))
    assert watch.dialogs == [] and watch.errors == []


def mock_requests(server: LiveServer) -> list[dict[str, Any]]:
    """The chat requests the mock upstream received (their bodies), oldest first."""
    r = httpx.get(f"{server.mock_url}/mock/requests", params={"n": 1000}, timeout=5)
    bodies: list[dict[str, Any]] = [entry["body"] for entry in r.json()["requests"]]
    return bodies


def last_user_text(body: dict[str, Any]) -> str:
    text: str = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return text


def test_commands_errors_and_buttons(page: Any, server: LiveServer, watch: PageWatch) -> None:
    register(page)
    wait_connected(page)

    send(page, "/help")
    expect()(messages(page, "note").last).to_contain_text("/retry")

    send(page, "/nosuchcommand")
    error = messages(page, "error").last
    expect()(error).to_have_attribute("data-error-code", "unknown_command")
    expect()(error).to_contain_text("/help")

    # Upstream down: a readable error, not raw JSON.
    send(page, "this will fail [mock fault=500]")
    error = messages(page, "error").last
    expect()(error).to_have_attribute("data-error-code", re.compile("upstream"))
    text = error.inner_text()
    assert "{" not in text and "AI service" in text

    # Too long: refused readably, and the text stays usable.
    send(page, "word " * 6000)
    error = messages(page, "error").last
    expect()(error).to_have_attribute("data-error-code", "too_long")
    expect()(error).to_contain_text("too long")

    # Retry asks the upstream again and replaces the last answer with the new one.
    send(page, "first question")
    first_answer = last_answer_done(page)
    old = messages(page, "assistant").last.element_handle()
    asked = len(mock_requests(server))
    page.get_by_test_id("retry-button").click()
    page.wait_for_function("(element) => !element.isConnected", arg=old)
    expect()(messages(page, "assistant")).to_have_count(1)
    assert squash(last_answer_done(page)) == squash(first_answer)  # the mock is deterministic
    retried = mock_requests(server)[asked:]
    assert [last_user_text(body) for body in retried] == ["first question"]

    # Clear (two clicks: no browser dialog) empties the conversation.
    clear = page.get_by_test_id("clear-button")
    clear.click()
    expect()(clear).to_have_text(re.compile("Confirm"))
    clear.click()
    expect()(messages(page, "user")).to_have_count(0)
    page.reload()
    wait_connected(page)
    expect()(messages(page, "user")).to_have_count(0)
    assert watch.dialogs == [] and watch.errors == []


def test_new_user_chats_at_once_without_an_api_key(
    page: Any, server: LiveServer, watch: PageWatch
) -> None:
    """Registered a moment ago, no key created: the chat connects and a message gets its whole
    streamed answer; no text asks for a key; the user still has no key afterwards."""
    register(page)
    expect()(page.get_by_test_id("no-keys")).to_be_visible()
    wait_connected(page)
    expect()(page.get_by_test_id("send-button")).to_be_enabled()
    assert not KEY_NEEDED_TEXT.search(page.locator("body").inner_text())

    prompt = "Hi, I just signed up"
    send(page, prompt)
    expect()(messages(page, "user").last).to_have_text(re.compile(re.escape(prompt)))
    assert squash(last_answer_done(page)) == squash(mock_answer(prompt))
    assert not KEY_NEEDED_TEXT.search(page.locator("body").inner_text())
    assert api_keys_of(server, page_token(page)) == []
    assert watch.dialogs == [] and watch.errors == []


def test_socket_url_carries_a_ticket_and_no_access_key(page: Any, server: LiveServer) -> None:
    """Even with a key in the panel, the page's socket is /ws/chatgpt?ticket=…: the key is in no
    socket URL, and every socket (here: first load, then a reload) spent its own ticket."""
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    register(page)
    wait_connected(page)
    access = create_key(page)
    page.reload()
    wait_connected(page)

    assert len(urls) >= 2, urls
    tickets = [ticket_of(url) for url in urls]
    assert all(access not in url for url in urls), urls
    assert len(set(tickets)) == len(tickets), urls  # single use: never presented twice
    assert [key["access_key"] for key in api_keys_of(server, page_token(page))] == [access]


def test_key_panel_create_disable_delete_without_touching_the_chat(page: Any) -> None:
    """The API keys panel (keys are for scripts): create, disable, enable, delete; the chat's
    socket is not reopened by any of it and still answers once every key is gone."""
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    register(page)
    wait_connected(page)
    opened = len(sockets)
    first = create_key(page, "one")
    second = create_key(page, "two")
    item = page.locator(f'[data-testid="key-item"][data-access-key="{first}"]')
    item2 = page.locator(f'[data-testid="key-item"][data-access-key="{second}"]')
    expect()(page.get_by_test_id("key-item")).to_have_count(2)
    expect()(item.get_by_test_id("key-name")).to_have_text("one")

    item2.get_by_test_id("key-toggle").click()
    expect()(item2.get_by_test_id("key-status")).to_have_text("disabled")
    expect()(item.get_by_test_id("key-status")).to_have_text("active")
    item2.get_by_test_id("key-toggle").click()
    expect()(item2.get_by_test_id("key-status")).to_have_text("active")

    for left, access in enumerate((second, first)):
        delete = page.locator(
            f'[data-testid="key-item"][data-access-key="{access}"] [data-testid="key-delete"]'
        )
        delete.click()
        expect()(delete).to_have_text(re.compile("Confirm"))
        delete.click()
        expect()(page.get_by_test_id("key-item")).to_have_count(1 - left)
    expect()(page.get_by_test_id("no-keys")).to_be_visible()

    wait_connected(page)
    send(page, "still here without keys")
    assert squash(last_answer_done(page)) == squash(mock_answer("still here without keys"))
    assert len(sockets) == opened  # the key actions did not reconnect the chat


def ticket_requests(page: Any) -> list[int]:
    """Start recording the statuses of the page's POST /api/user/ws-ticket; the live list."""
    statuses: list[int] = []

    def on_response(response: Any) -> None:
        if response.url.endswith("/api/user/ws-ticket") and response.request.method == "POST":
            statuses.append(response.status)

    page.on("response", on_response)
    return statuses


def test_connection_loss_reconnects_and_resumes(page: Any) -> None:
    """The socket drops mid-answer: the page says so, reconnects with a fresh ticket (a ticket
    is single-use) and resumes the answer."""
    routes: list[Any] = []

    def proxy(ws: Any) -> None:
        ws.connect_to_server()
        routes.append(ws)

    page.route_web_socket(re.compile(r"/ws/chatgpt(/|\?|$)"), proxy)
    tickets = ticket_requests(page)
    register(page)
    wait_connected(page)
    assert tickets == [201]

    prompt = "A story to resume [mock tokens=150 delay_ms=30]"
    send(page, prompt)
    page.wait_for_function(
        """() => { const m = document.querySelector('[data-state="streaming"] [data-testid="message-body"]');
                   return m && m.innerText.split(/\\s+/).length > 15; }"""
    )
    before = len(routes)
    routes[-1].close(code=1011, reason="test drops the connection")
    expect()(
        page.locator('[data-testid="connection-status"][data-state="waiting"]')
    ).to_be_visible()
    expect()(page.get_by_test_id("connection-status")).to_contain_text("Reconnecting")
    wait_connected(page)
    assert len(routes) > before
    answer = last_answer_done(page)
    assert squash(answer) == squash(mock_answer(prompt, 150))
    expect()(messages(page, "assistant")).to_have_count(1)
    assert len(tickets) == len(routes) >= 2 and set(tickets) == {201}
    used = [ticket_of(route.url) for route in routes]
    assert len(set(used)) == len(used)  # the reconnect spent a second, fresh ticket


def api_error(status: int, code: str, msg: str) -> dict[str, Any]:
    """``route.fulfill`` arguments for an error answer shaped like the server's."""
    body = {"status": status, "msg": msg, "detail": None, "code": code}
    return {"status": status, "content_type": "application/json", "body": json.dumps(body)}


def test_ticket_failures_retry_with_backoff_and_401_goes_back_to_login(page: Any) -> None:
    """A failing ticket request (503, or no answer at all) is retried with the socket's
    backoff until one succeeds; a 401 one (logged out, token revoked) shows the login form."""
    routes: list[Any] = []

    def proxy(ws: Any) -> None:
        ws.connect_to_server()
        routes.append(ws)

    mode: dict[str, Any] = {"fail": ["503", "abort"], "unauthorized": False}
    seen: list[str] = []

    def ticket_route(route: Any) -> None:
        if mode["unauthorized"]:
            seen.append("401")
            route.fulfill(**api_error(401, "token_revoked", "The token was revoked."))
        elif mode["fail"]:
            failure = mode["fail"].pop(0)
            seen.append(failure)
            if failure == "abort":
                route.abort("connectionreset")
            else:
                route.fulfill(**api_error(503, "storage_unavailable", "Storage is down."))
        else:
            seen.append("pass")
            route.continue_()

    page.route_web_socket(re.compile(r"/ws/chatgpt(/|\?|$)"), proxy)
    page.route("**/api/user/ws-ticket", ticket_route)
    register(page)
    expect()(
        page.locator('[data-testid="connection-status"][data-state="waiting"]')
    ).to_be_visible()
    wait_connected(page)
    assert seen == ["503", "abort", "pass"] and len(routes) == 1
    expect()(page.get_by_test_id("auth-view")).to_be_hidden()

    mode["unauthorized"] = True
    routes[-1].close(code=1011, reason="test drops the connection")
    expect()(page.get_by_test_id("auth-view")).to_be_visible()
    expect()(page.get_by_test_id("auth-error")).to_have_text("Please log in again.")
    expect()(page.get_by_test_id("app-view")).to_be_hidden()
    page.wait_for_timeout(1500)  # longer than the first backoff delays: no retry after a 401
    assert seen[3:] == ["401"] and len(routes) == 1


def test_phone_screen_keyboard_only(phone: Any, watch: PageWatch) -> None:
    page = phone
    register(page)
    expect()(page.get_by_test_id("sidebar")).to_be_hidden()
    page.get_by_test_id("menu-toggle").click()
    expect()(page.get_by_test_id("sidebar")).to_be_visible()
    page.keyboard.press("Escape")
    expect()(page.get_by_test_id("sidebar")).to_be_hidden()
    wait_connected(page)

    box = page.get_by_test_id("composer-input")
    box.focus()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect()(box).to_have_value("line one\nline two")
    page.keyboard.press("Enter")
    expect()(box).to_have_value("")
    expect()(messages(page, "user").last.get_by_test_id("message-body")).to_have_text(
        "line one\nline two"
    )
    last_answer_done(page)

    # The page fits the screen: no sideways scrolling.
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390
    assert watch.dialogs == [] and watch.errors == []


# A hostile answer: the upstream (scripted, see tests/web/scripted_upstream.py) sends Markdown
# with javascript: links and raw HTML with event handlers; streamed 7 characters a chunk, so the
# page renders every partial text too.
HOSTILE_ANSWER = (
    "Links: [x](javascript:window.__pwned='link') [y](JAVASCRIPT:alert(1)) "
    "[z](&#106;avascript:alert(2)) [w](<javascript:alert(3)>) [fine](https://example.com/).\n\n"
    "<img src=x onerror=\"window.__pwned='img'\">\n\n"
    "Inline <img src=x onerror=window.__pwned='inline'> and "
    "<a href=\"javascript:window.__pwned='a'\">a</a> and <svg onload=\"alert(4)\"></svg>.\n\n"
    "**still Markdown**"
)

# Every attribute of the answer's elements that could run script: on* handlers, and URLs with a
# javascript: scheme (however it is cased or padded).
FIND_SCRIPT_VECTORS = """(body) => {
  const found = [];
  for (const el of [body, ...body.querySelectorAll('*')]) {
    for (const attr of el.attributes) {
      const value = attr.value.replace(/[\\s\\u0000-\\u001f]/g, '').toLowerCase();
      if (attr.name.toLowerCase().startsWith('on') || value.startsWith('javascript:')) {
        found.push(`${el.tagName} ${attr.name}=${attr.value}`);
      }
    }
  }
  return found;
}"""


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log_dir = tmp_path_factory.mktemp("hostile_server")
    with (
        scripted_upstream(Script(answer=HOSTILE_ANSWER, chunk_size=7)) as upstream_url,
        live_server(log_dir, upstream_url=upstream_url) as live,
    ):
        yield live


@pytest.fixture
def hostile_page(
    request: pytest.FixtureRequest,
    browser: Any,
    hostile_server: LiveServer,
    watch: PageWatch,
    tmp_path: Path,
) -> Iterator[Any]:
    yield from _open_page(request, browser, hostile_server, watch, tmp_path)


def assert_answer_is_harmless(page: Any) -> None:
    body = messages(page, "assistant").last.get_by_test_id("message-body")
    expect()(body.locator("strong")).to_have_text("still Markdown")  # rendered as Markdown
    expect()(body).to_contain_text("<img src=x onerror=")  # raw HTML is shown as text
    assert body.evaluate(FIND_SCRIPT_VECTORS) == []


def test_hostile_markdown_answer_is_rendered_harmless(hostile_page: Any, watch: PageWatch) -> None:
    """Sanitized, not merely blocked: no handler or javascript: URL reaches the DOM (the
    Content-Security-Policy would stop them running, but it logs what it had to block)."""
    page = hostile_page
    register(page)
    wait_connected(page)
    send(page, "say something nasty")
    last_answer_done(page)
    assert_answer_is_harmless(page)
    links = messages(page, "assistant").last.get_by_test_id("message-body").locator("a")
    for index in range(links.count()):
        if links.nth(index).get_attribute("href") is None:
            links.nth(index).click()  # a link that lost its javascript: URL does nothing
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__pwned") is None

    page.reload()  # the stored answer, rendered from the history this time
    wait_connected(page)
    expect()(messages(page, "assistant")).to_have_count(1)
    assert_answer_is_harmless(page)
    assert page.evaluate("() => window.__pwned") is None
    assert watch.dialogs == [] and watch.errors == []
    assert not [e for e in watch.console_errors if "Content Security Policy" in e]


def test_docs_page_renders_in_standards_mode(page: Any) -> None:
    page.goto("/docs")
    assert page.evaluate("() => document.compatMode") == "CSS1Compat"
    expect()(page.locator(".opblock").first).to_be_visible()
