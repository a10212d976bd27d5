"""Usage accounting end to end (``storage.usage``, ``GET /api/user/usage``): chat sockets (API
key and ticket) and ``/v1`` calls at once, over a few users, keys and models, summed to the
token; and sums that stay exact when a writer dies mid-batch and the server restarts.

Expected numbers come from what each answer left elsewhere: a chat answer's tokens from the
session's stored history (its prompt, in a fresh room, is the question's prompt as the session
builds it), a ``/v1`` call's from the ``usage`` of its response.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from chat_actors.budget import Budget, build_prompt
from core.settings import Settings
from storage.usage import UsageWriter, write_batch
from tests.chat_server import ChatClient, ChatServer, User, running_server

Sums = dict[tuple[int, str], list[int]]  # (key id, model) -> requests, prompt, answer


def add(sums: Sums, key_id: int, model: str, prompt: int, answer: int) -> None:
    row = sums.setdefault((key_id, model), [0, 0, 0])
    row[0] += 1
    row[1] += prompt
    row[2] += answer


async def second_key(server: ChatServer, user: User) -> tuple[str, int]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/api/user/apikeys", json={"user_memo": "second"},
                            headers={"Authorization": user.jwt})
    assert r.status_code == 201, r.text
    key = r.json()
    return f"{key['access_key']}.{key['secret_key']}", int(key["id"])


async def chat_answer(server: ChatServer, user: User, model: str, *, ticket: bool,
                      sums: Sums) -> None:
    room = uuid.uuid4().hex[:12]
    if ticket:
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/api/user/ws-ticket", headers={"Authorization": user.jwt})
        url = f"{server.ws_url}/ws/chatgpt?ticket={r.json()['ticket']}&chat_room_id={room}"
    else:
        url = f"{server.ws_url}/ws/chatgpt/{user.access_key}?chat_room_id={room}"
    async with open_websocket_url(url) as ws:
        client = ChatClient(ws)
        await client.init()
        if model != server.settings.default_model:
            await client.send(f"/changemodel {model}")
            await client.reply()
        await client.send(f"Tell me about {room}")
        text, last = await client.answer(timeout=30)
        assert text and "error" not in last, last
    snap = await server.services.chat.registry.snapshot(user.user_id, room)
    question, answer = snap.messages[-2], snap.messages[-1]
    assert answer.role == "assistant" and snap.profile.model == model
    prompt = build_prompt([], question, Budget.for_model(server.settings, model)).tokens
    add(sums, 0 if ticket else user.key_id, model, prompt, answer.tokens)


async def api_answer(server: ChatServer, user: User, key: str, key_id: int, model: str, *,
                     stream: bool, sums: Sums) -> None:
    body: dict[str, Any] = {"model": model, "max_tokens": 50,
                            "messages": [{"role": "user", "content": f"Hi {uuid.uuid4()}"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        r = await http.post("/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    if stream:
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: {")]
        usage = chunks[-1]["usage"]
    else:
        usage = r.json()["usage"]
    add(sums, key_id, model, usage["prompt_tokens"], usage["completion_tokens"])


async def usage_of(server: ChatServer, user: User, days: int = 30) -> tuple[Sums, bool]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get(f"/api/user/usage?days={days}", headers={"Authorization": user.jwt})
    assert r.status_code == 200, r.text
    body = r.json()
    found: Sums = {}
    for row in body["usage"]:
        assert row["day"] == body["until"]
        assert (row["key_id"], row["model"]) not in found
        found[(row["key_id"], row["model"])] = [row["requests"], row["prompt_tokens"],
                                                row["answer_tokens"]]
    return found, body["complete"]


async def run_mix(server: ChatServer, users: list[User], keys: dict[int, tuple[str, int]],
                  count: int, sums: dict[int, Sums]) -> None:
    """``count`` answers at once: a quarter each key socket, ticket socket, /v1 plain, /v1
    streamed; users, keys and models in turn."""
    models = ["gpt-4o-mini", "gpt-4o"]
    async with trio.open_nursery() as nursery:
        for i in range(count):
            user = users[i % len(users)]
            model = models[(i // len(users)) % 2]
            kind = i % 4
            if kind < 2:
                nursery.start_soon(partial(chat_answer, server, user, model, ticket=kind == 1,
                                           sums=sums[user.user_id]))
            else:
                key, key_id = ((f"{user.access_key}.{user.secret_key}", user.key_id)
                               if (i // 4) % 2 or user.user_id not in keys
                               else keys[user.user_id])
                nursery.start_soon(partial(api_answer, server, user, key, key_id, model,
                                           stream=kind == 3, sums=sums[user.user_id]))


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    async with running_server(db_settings, usage_flush_seconds=0.05) as running:
        yield running


async def test_200_concurrent_answers_are_counted_to_the_token(server: ChatServer) -> None:
    users = [await server.new_user() for _ in range(3)]
    keys = {users[0].user_id: await second_key(server, users[0])}
    sums: dict[int, Sums] = {u.user_id: {} for u in users}
    # The background writer runs every 50 ms meanwhile, and reads flush in the middle too.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_mix, server, users, keys, 200, sums)
        for _ in range(5):
            await trio.sleep(0.2)
            await usage_of(server, users[0])
    assert sum(r[0] for s in sums.values() for r in s.values()) == 200
    for user in users:
        found, complete = await usage_of(server, user)
        assert complete
        assert found == sums[user.user_id]
    found, _ = await usage_of(server, users[0])
    assert {key for key, _ in found} == {0, users[0].key_id, keys[users[0].user_id][1]}
    print("usage sums:", {u.user_id: sums[u.user_id] for u in users})


async def test_bad_days_are_refused(server: ChatServer) -> None:
    user = await server.new_user()
    async with httpx.AsyncClient(base_url=server.url) as http:
        for days in (0, 367, -1):
            r = await http.get(f"/api/user/usage?days={days}",
                               headers={"Authorization": user.jwt})
            assert r.status_code == 422, (days, r.text)
        assert (await http.get("/api/user/usage")).status_code == 401
        r = await http.get("/api/user/usage", headers={"Authorization": user.jwt})
        body = r.json()
        assert r.status_code == 200 and body["usage"] == [] and body["complete"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/openapi.json")
    assert "/api/user/usage" in r.json()["paths"]


async def test_a_writer_dying_mid_batch_and_a_restart_lose_and_double_nothing(
        db_settings: Settings, redis_actor: object) -> None:
    slow = 3600.0  # the background writer never runs: only the steps below write
    async with running_server(db_settings, usage_flush_seconds=slow) as first:
        users = [await first.new_user() for _ in range(2)]
        keys = {users[0].user_id: await second_key(first, users[0])}
        sums: dict[int, Sums] = {u.user_id: {} for u in users}
        await run_mix(first, users, keys, 40, sums)
        storage = first.services.storage
        dead = UsageWriter(storage.redis, storage.sql, every=3600)
        claimed = await dead.claim()  # a writer claims a batch, writes it, and dies
        assert claimed is not None
        assert await storage.sql.run(write_batch(*claimed))
        await run_mix(first, users, keys, 20, sums)  # counted meanwhile, outside the batch
        again = await dead.claim()  # another claims and dies before writing
        assert again is not None and again[0] == claimed[0]  # the same, unfinished batch
    # The first server's shutdown flush found the written batch and wrote only the rest.
    async with running_server(db_settings, usage_flush_seconds=slow) as second:
        await run_mix(second, users, keys, 20, sums)
        for user in users:
            found, complete = await usage_of(second, user)
            assert complete and found == sums[user.user_id]
        assert sum(r[0] for s in sums.values() for r in s.values()) == 80
