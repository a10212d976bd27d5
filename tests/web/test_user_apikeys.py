"""/api/user/me, /api/user/apikeys and their allow-lists, with ownership everywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import ApiError
from core.settings import Settings
from storage.models import ChatRoom
from tests.web.conftest import CHEAP_HASHER, PASSWORD, Client, bearer, error_code, new_key, register
from web.app import create_app
from web.services import Services, get_services


async def test_me_get_put(client: Client) -> None:
    token = await register(client, "me@example.com")
    r = await client.put(
        "/api/user/me", json={"name": "Ada", "phone_number": "+82 10-1234", "marketing_agree": True},
        headers=bearer(token),
    )
    assert r.status_code == 200
    body = await r.get_json()
    assert (body["name"], body["phone_number"], body["marketing_agree"]) == ("Ada", "+82 10-1234", True)
    partial = await client.put("/api/user/me", json={"profile_img": "https://x/y.png"}, headers=bearer(token))
    assert (await partial.get_json())["name"] == "Ada"  # absent fields unchanged
    too_long = await client.put("/api/user/me", json={"name": "x" * 65}, headers=bearer(token))
    assert too_long.status_code == 422
    assert (await too_long.get_json())["detail"][0]["field"] == "name"
    unknown = await client.put("/api/user/me", json={"email": "other@example.com"}, headers=bearer(token))
    assert unknown.status_code == 422  # the email is not a profile field
    # marketing_agree is NOT NULL: null is the client's mistake (422 naming it), not a conflict
    null = await client.put("/api/user/me", json={"marketing_agree": None}, headers=bearer(token))
    assert null.status_code == 422 and await error_code(null) == "validation_error"
    assert (await null.get_json())["detail"][0]["field"] == "marketing_agree"
    cleared = await client.put("/api/user/me", json={"name": None}, headers=bearer(token))
    assert cleared.status_code == 200 and (await cleared.get_json())["name"] is None


async def test_delete_me(web_settings: Settings, redis_actor: object) -> None:
    deleted: list[int] = []

    @asynccontextmanager
    async def chat_hook(services: Services) -> AsyncIterator[None]:
        async def forget(services: Services, user_id: int) -> None:
            deleted.append(user_id)

        services.user_deleted_hooks.append(forget)
        yield

    app = create_app(web_settings, extra_services=[chat_hook], password_hasher=CHEAP_HASHER)
    async with app.test_app() as running:
        client = Client(running.test_client())
        token = await register(client, "bye@example.com")
        key = await new_key(client, token)
        me = await (await client.get("/api/user/me", headers=bearer(token))).get_json()
        sql = get_services(app).storage.sql

        async def add_room(session: AsyncSession) -> None:
            session.add(ChatRoom(user_id=me["id"], room_key="0", name="r"))

        async def count_rooms(session: AsyncSession) -> int:
            query = select(func.count()).where(ChatRoom.user_id == me["id"])
            return int((await session.execute(query)).scalar_one())

        await sql.run(add_room)
        assert await sql.run(count_rooms) == 1
        r = await client.delete("/api/user/me", headers=bearer(token))
        assert r.status_code == 200
        assert (await r.get_json()) == {"id": me["id"], "deleted": True, "message": "OK"}
        assert deleted == [me["id"]]
        assert await sql.run(count_rooms) == 0  # the rooms' rows went with the account
        again = await client.get("/api/user/me", headers=bearer(token))
        assert again.status_code == 401 and await error_code(again) == "user_deleted"
        # the key stopped working, and the email is free again
        from web.auth_keys import authenticate_access_key

        services = get_services(app)
        with pytest.raises(ApiError) as info:
            await authenticate_access_key(services, str(key["access_key"]), "127.0.0.1")
        assert info.value.status == 403
        login = await client.post("/api/auth/login/email", json={"email": "bye@example.com", "password": PASSWORD})
        assert login.status_code == 401
        await register(client, "bye@example.com")


async def test_api_key_lifecycle(client: Client) -> None:
    token = await register(client, "keys@example.com")
    created = await new_key(client, token, "my laptop")
    assert set(created) >= {"id", "access_key", "secret_key", "user_memo", "status", "is_whitelisted"}
    assert created["status"] == "active" and created["user_memo"] == "my laptop"
    listed = await (await client.get("/api/user/apikeys", headers=bearer(token))).get_json()
    assert [k["id"] for k in listed] == [created["id"]]
    assert "secret_key" not in listed[0]  # shown only once
    key_id = created["id"]
    r = await client.put(f"/api/user/apikeys/{key_id}", json={"user_memo": "renamed", "status": "disabled"}, headers=bearer(token))
    assert r.status_code == 200
    body = await r.get_json()
    assert (body["user_memo"], body["status"]) == ("renamed", "disabled") and "secret_key" not in body
    bad = await client.put(f"/api/user/apikeys/{key_id}", json={"status": "deleted"}, headers=bearer(token))
    assert bad.status_code == 422 and (await bad.get_json())["detail"][0]["field"] == "status"
    r = await client.delete(f"/api/user/apikeys/{key_id}", headers=bearer(token))
    assert r.status_code == 200 and (await r.get_json())["message"] == "OK"
    gone = await client.delete(f"/api/user/apikeys/{key_id}", headers=bearer(token))
    assert gone.status_code == 404 and await error_code(gone) == "api_key_not_found"
    listed = await (await client.get("/api/user/apikeys", headers=bearer(token))).get_json()
    assert listed == []


async def test_key_limit_and_ten_concurrent_creations(client: Client, web_settings: Settings) -> None:
    token = await register(client, "limit@example.com")
    statuses: list[int] = []

    async def one() -> None:
        r = await client.post("/api/user/apikeys", json={"user_memo": "race"}, headers=bearer(token))
        statuses.append(r.status_code)
        if r.status_code != 201:
            assert await error_code(r) == "max_api_keys"

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    limit = web_settings.max_api_keys_per_user
    assert sorted(statuses) == [201] * limit + [400] * (10 - limit)
    listed = await (await client.get("/api/user/apikeys", headers=bearer(token))).get_json()
    assert len(listed) == limit


async def test_ownership_is_404(client: Client, test_app: object) -> None:
    alice = await register(client, "alice@example.com")
    bob_client = Client(test_app.test_client())  # type: ignore[attr-defined]
    bob = await register(bob_client, "bob@example.com")
    alice_key = await new_key(client, alice)
    key_id = alice_key["id"]
    entry = await client.post(f"/api/user/apikeys/{key_id}/whitelists", json={"ip_address": "10.1.2.3"}, headers=bearer(alice))
    list_id = (await entry.get_json())["id"]
    for method, path, body in [
        ("PUT", f"/api/user/apikeys/{key_id}", {"user_memo": "mine now"}),
        ("DELETE", f"/api/user/apikeys/{key_id}", None),
        ("GET", f"/api/user/apikeys/{key_id}/whitelists", None),
        ("POST", f"/api/user/apikeys/{key_id}/whitelists", {"ip_address": "1.1.1.1"}),
        ("DELETE", f"/api/user/apikeys/{key_id}/whitelists/{list_id}", None),
    ]:
        kwargs = {"json": body} if body is not None else {}
        r = await bob_client.request(method, path, headers=bearer(bob), **kwargs)
        assert r.status_code == 404, (method, path)
    listed = await (await bob_client.get("/api/user/apikeys", headers=bearer(bob))).get_json()
    assert listed == []
    # alice's key and entry are untouched
    entries = await (await client.get(f"/api/user/apikeys/{key_id}/whitelists", headers=bearer(alice))).get_json()
    assert [e["ip_address"] for e in entries] == ["10.1.2.3"]


async def test_whitelists(client: Client, web_settings: Settings) -> None:
    token = await register(client, "wl@example.com")
    key_id = (await new_key(client, token))["id"]
    path = f"/api/user/apikeys/{key_id}/whitelists"
    ok = []
    for ip, stored in [("203.0.113.7", "203.0.113.7"), ("10.0.0.0/8", "10.0.0.0/8"),
                       ("192.168.1.77/24", "192.168.1.0/24"), ("2001:DB8::1", "2001:db8::1"),
                       ("2001:db8::/32", "2001:db8::/32"),
                       ("::ffff:203.0.113.8", "203.0.113.8"),  # IPv4-mapped: stored as IPv4
                       ("::ffff:198.51.100.0/120", "198.51.100.0/24")]:
        r = await client.post(path, json={"ip_address": ip}, headers=bearer(token))
        assert r.status_code == 200, ip
        body = await r.get_json()
        assert body["ip_address"] == stored
        ok.append(body["id"])
    for bad in ["300.1.1.1", "example.com", "10.0.0.0/33", "", "1.2.3.4/abc", "fe80::1%eth0",
                "fe80::%eth0/64"]:
        r = await client.post(path, json={"ip_address": bad}, headers=bearer(token))
        assert r.status_code == 422, bad
        assert (await r.get_json())["detail"][0]["field"] == "ip_address", bad
    # already listed: the existing entry again (as the original server did), not a second one
    dup = await client.post(path, json={"ip_address": "203.0.113.7"}, headers=bearer(token))
    assert dup.status_code == 200 and (await dup.get_json())["id"] == ok[0]
    key = (await (await client.get("/api/user/apikeys", headers=bearer(token))).get_json())[0]
    assert key["is_whitelisted"] is True
    for i in range(web_settings.max_whitelists_per_key - len(ok)):
        r = await client.post(path, json={"ip_address": f"198.51.100.{i}"}, headers=bearer(token))
        assert r.status_code == 200
    over = await client.post(path, json={"ip_address": "198.51.100.200"}, headers=bearer(token))
    assert over.status_code == 400 and await error_code(over) == "max_whitelists"
    full_dup = await client.post(path, json={"ip_address": "10.0.0.0/8"}, headers=bearer(token))
    assert full_dup.status_code == 200 and (await full_dup.get_json())["id"] == ok[1]
    listed = await (await client.get(path, headers=bearer(token))).get_json()
    assert len(listed) == web_settings.max_whitelists_per_key
    for entry in listed:
        r = await client.delete(f"{path}/{entry['id']}", headers=bearer(token))
        assert r.status_code == 200 and (await r.get_json())["message"] == "OK"
    missing = await client.delete(f"{path}/{ok[0]}", headers=bearer(token))
    assert missing.status_code == 404 and await error_code(missing) == "whitelist_not_found"
    key = (await (await client.get("/api/user/apikeys", headers=bearer(token))).get_json())[0]
    assert key["is_whitelisted"] is False


async def test_unknown_ids_and_routes(client: Client) -> None:
    token = await register(client, "ids@example.com")
    r = await client.put("/api/user/apikeys/999999", json={"user_memo": "x"}, headers=bearer(token))
    assert r.status_code == 404
    r = await client.get("/api/user/apikeys/abc/whitelists", headers=bearer(token))
    assert r.status_code == 404 and await error_code(r) == "not_found"
    r = await client.request("PATCH", "/api/user/me", headers=bearer(token))
    assert r.status_code == 405 and await error_code(r) == "method_not_allowed"


async def test_shapes_the_original_servers_clients_read(client: Client) -> None:
    """As c0sogi/LLMChat answered: plain lists, ``ip_address``, ``{"message": "OK"}``."""
    token = await register(client, "original@example.com")
    key = await new_key(client, token, "TESTING")
    listed = await (await client.get("/api/user/apikeys", headers=bearer(token))).get_json()
    assert isinstance(listed, list) and listed[0]["user_memo"] == "TESTING"
    path = f"/api/user/apikeys/{key['id']}/whitelists"
    added = await client.post(path, json={"ip_address": "192.0.2.1"}, headers=bearer(token))
    assert added.status_code == 200, await added.get_data(as_text=True)
    entry = await added.get_json()
    assert entry["ip_address"] == "192.0.2.1" and isinstance(entry["id"], int)
    legacy = await client.post(path, json={"ip_addr": "192.0.2.2"}, headers=bearer(token))
    assert legacy.status_code == 200 and (await legacy.get_json())["ip_address"] == "192.0.2.2"
    both = await client.post(path, json={"ip_address": "192.0.2.3", "ip_addr": "192.0.2.4"},
                             headers=bearer(token))
    assert both.status_code == 422 and await error_code(both) == "validation_error"
    entries = await (await client.get(path, headers=bearer(token))).get_json()
    assert [e["ip_address"] for e in entries] == ["192.0.2.1", "192.0.2.2"]
    removed = await client.delete(f"{path}/{entry['id']}", headers=bearer(token))
    assert (await removed.get_json())["message"] == "OK"
    # the original's clients confirm a key's deletion with its access key
    wrong = await client.delete(f"/api/user/apikeys/{key['id']}?access_key=not-this-one",
                                headers=bearer(token))
    assert wrong.status_code == 404 and await error_code(wrong) == "api_key_not_found"
    gone = await client.delete(f"/api/user/apikeys/{key['id']}?access_key={key['access_key']}",
                               headers=bearer(token))
    assert gone.status_code == 200 and (await gone.get_json())["message"] == "OK"
    assert await (await client.get("/api/user/apikeys", headers=bearer(token))).get_json() == []


async def test_openapi_documents_the_same_shapes(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    paths = spec["paths"]

    def schema(ref_or_schema: dict[str, object]) -> dict[str, object]:
        ref = ref_or_schema.get("$ref")
        if isinstance(ref, str):
            found: dict[str, object] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
            return found
        return ref_or_schema

    def ok_body(path: str, method: str, status: str = "200") -> dict[str, object]:
        content = paths[path][method]["responses"][status]["content"]
        return schema(content["application/json"]["schema"])

    keys = ok_body("/api/user/apikeys", "get")
    assert keys["type"] == "array"
    whitelist_path = "/api/user/apikeys/{key_id}/whitelists"
    entries = ok_body(whitelist_path, "get")
    assert entries["type"] == "array"
    entry = schema(entries["items"])  # type: ignore[arg-type]
    assert "ip_address" in entry["properties"] and "ip_addr" not in entry["properties"]  # type: ignore[operator]
    assert "ip_address" in ok_body(whitelist_path, "post")["properties"]  # type: ignore[operator]
    create = schema(paths[whitelist_path]["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert create["required"] == ["ip_address"]
    delete_params = paths["/api/user/apikeys/{key_id}"]["delete"]["parameters"]
    assert "access_key" in {p["name"] for p in delete_params}
    assert "message" in ok_body("/api/user/apikeys/{key_id}", "delete")["properties"]  # type: ignore[operator]
    assert "delete" in paths["/api/auth/register"]
