"""The chat page's usage panel in Chromium: a fresh account shows no bar for today; after one
answer (and, without a click, after the answer ended) today's bar is non-zero and matches
``GET /api/user/usage``. The fixtures and helpers are the page tests' own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.web import test_page_browser as page_tests
from tests.web.conftest_page import LiveServer
from tests.web.test_page_browser import (
    PageWatch,
    expect,
    last_answer_done,
    page_token,
    register,
    send,
    wait_connected,
)

# The page tests' fixtures: a live server and Chromium for this module, a page per test.
server, browser, watch, page = (page_tests.server, page_tests.browser, page_tests.watch,
                                page_tests.page)

pytestmark = [pytest.mark.timeout(180)]


def test_usage_chart_shows_todays_tokens_after_a_chat(page: Any, server: LiveServer,
                                                      watch: PageWatch) -> None:
    register(page)
    wait_connected(page)
    today = datetime.now(UTC).date().isoformat()
    bar = page.locator(f'[data-testid="usage-bar"][data-day="{today}"]')
    expect()(bar).to_have_attribute("data-tokens", "0")  # drawn at login: nothing yet
    assert page.get_by_test_id("usage-bar").count() == 14
    send(page, "Count my tokens")
    assert last_answer_done(page)
    # The panel refreshes by itself once the answer ended; the server flushed Redis first.
    expect()(bar).not_to_have_attribute("data-tokens", "0")
    tokens = int(bar.get_attribute("data-tokens") or "0")
    assert tokens > 0
    box = bar.bounding_box()
    assert box is not None and box["height"] > 0
    r = httpx.get(f"{server.url}/api/user/usage?days=1",
                  headers={"Authorization": f"Bearer {page_token(page)}"}, timeout=10)
    rows = r.json()["usage"]
    assert [(row["key_id"], row["requests"]) for row in rows] == [(0, 1)]  # the page: key 0
    assert tokens == rows[0]["prompt_tokens"] + rows[0]["answer_tokens"]
    expect()(page.get_by_test_id("usage-today")).to_contain_text(f"{tokens} tokens")
    page.get_by_test_id("usage-refresh").click()
    expect()(bar).to_have_attribute("data-tokens", str(tokens))
    assert not watch.errors and not watch.dialogs  # (the login screen's 401 is a console line)
    assert not [e for e in watch.console_errors if "Content Security Policy" in e]
