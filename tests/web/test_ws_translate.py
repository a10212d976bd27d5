"""Translation over HTTP against the local mock translator (LibreTranslate API)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from core.settings import Settings
from scripts.mock_translator import serve_mock_translator
from tests.chat_server import ChatServer, User, chat_socket, running_server
from tests.web.test_ws_chat import expected


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object,
                 nursery: trio.Nursery) -> AsyncIterator[ChatServer]:
    port = await nursery.start(serve_mock_translator)
    async with running_server(db_settings,
                              translator_url=f"http://127.0.0.1:{port}/translate") as running:
        yield running


async def test_translated_message_is_stored_and_answered(server: ChatServer) -> None:
    user: User = await server.new_user()
    async with chat_socket(server, user.access_key) as client:
        await client.send("bonjour", translate=True)
        note = await client.reply()
        assert note["msg"] == "Translated: [en] bonjour" and "error" not in note
        text, _ = await client.answer()
        assert text == expected("[en] bonjour")
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"{server.mock_url}/mock/requests?n=1")).json()["requests"][-1]["body"]
    assert body["messages"][-1]["content"] == "[en] bonjour"


async def test_translator_failure_sends_the_original(server: ChatServer) -> None:
    user = await server.new_user()
    async with chat_socket(server, user.access_key) as client:
        await client.send("[fail] salut", translate=True)
        assert (await client.reply())["error"]["code"] == "translation_unavailable"
        text, _ = await client.answer()
        assert text == expected("[fail] salut")
