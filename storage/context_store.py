"""Chat context of one session (user, room) in Redis.

Key layout (``P`` is the Redis actor's prefix, ``U`` the user id, ``R`` the room key):

    P ctx:U:R:profile    hash   model, temperature, top_p, presence_penalty, frequency_penalty
    P ctx:U:R:messages   list   one JSON object per message, oldest first:
                                {"id", "role", "content", "tokens", "ts", "partial"?}
    P ctx:U:R:meta       hash   next_id (last message id handed out), count (expected LLEN)

``id`` is unique within a session, so a message's JSON text is unique in its list and can be
removed by value (``LREM key 1 <json>``). Every change is one atomic step (a MULTI/EXEC
transaction, or a Lua script for ``change``) that also updates ``count``, makes sure a profile
exists, and refreshes the TTL of all three keys: a crash between two commands can never leave a
half-trimmed history, and the TTL (``CONTEXT_TTL_SECONDS``) restarts on every use. ``change`` is
checked: if the stored list is not what the session believes (keys expired or deleted under a
live session), it changes nothing and says so, and the session rewrites its context whole.

Loading checks the layout: a list whose length differs from ``count``, an item that is not a
valid message, or a missing profile next to existing messages is *repaired* (bad items skipped,
profile defaulted, ``count`` rewritten) and reported in ``LoadedContext.repairs`` so the caller
logs it. Nothing is ever reset silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


class RedisLike(Protocol):
    """What the store needs of the Redis actor."""

    prefix: str

    async def execute(self, *args: Any) -> Any: ...

    async def transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]: ...

    async def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: Role
    content: str
    tokens: int
    ts: int  # YYYYMMDDHHMMSS, UTC
    partial: bool = False  # an answer cut short (/stop, upstream error)

    def to_json(self) -> str:
        data = asdict(self)
        if not self.partial:
            del data["partial"]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> StoredMessage:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("role") not in ROLES:
            raise ValueError("not a message")
        return cls(
            id=int(data["id"]),
            role=data["role"],
            content=str(data["content"]),
            tokens=int(data["tokens"]),
            ts=int(data["ts"]),
            partial=bool(data.get("partial", False)),
        )


@dataclass(frozen=True)
class Profile:
    model: str
    temperature: float = 0.7
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def to_mapping(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_mapping(cls, data: dict[str, str], default_model: str) -> Profile:
        fields: dict[str, Any] = {"model": data.get("model") or default_model}
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            if name in data:
                fields[name] = float(data[name])
        return cls(**fields)


@dataclass(frozen=True)
class LoadedContext:
    profile: Profile
    messages: list[StoredMessage]
    next_id: int
    repairs: list[str] = field(default_factory=list)


class ContextStore:
    """All reads and writes of chat contexts; one instance shared by every session actor."""

    def __init__(self, redis: RedisLike, *, ttl_seconds: int, default_model: str) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._default_model = default_model

    def _keys(self, user_id: int, room: str) -> tuple[str, str, str]:
        base = f"{self._redis.prefix}ctx:{user_id}:{room}:"
        return base + "profile", base + "messages", base + "meta"

    def _expire_all(self, keys: Iterable[str]) -> list[list[Any]]:
        return [["EXPIRE", key, self._ttl] for key in keys]

    async def load(self, user_id: int, room: str) -> LoadedContext:
        keys = self._keys(user_id, room)
        # A script, not MULTI/EXEC: scripts share the Redis actor's batches, so the session
        # starts of a connection storm load together instead of each taking a connection.
        profile_pairs, raw_messages, meta_pairs = await self._redis.eval(_LOAD, keys, [self._ttl])
        raw_profile, meta = _pairs(profile_pairs), _pairs(meta_pairs)
        repairs: list[str] = []
        messages: list[StoredMessage] = []
        for raw in raw_messages:
            try:
                messages.append(StoredMessage.from_json(raw))
            except (ValueError, KeyError, TypeError):
                repairs.append(f"skipped an unreadable message: {raw[:80]!r}")
        try:
            profile = Profile.from_mapping(raw_profile, self._default_model)
        except ValueError:
            repairs.append("profile unreadable: defaults used")
            profile = Profile(model=self._default_model)
        if not raw_profile and messages:
            repairs.append("profile missing next to stored messages: defaults used")
        expected = int(meta.get("count", len(raw_messages))) if meta else len(raw_messages)
        if expected != len(raw_messages):
            repairs.append(f"history has {len(raw_messages)} messages, meta says {expected}")
        if raw_messages and not meta:
            repairs.append("meta missing next to stored messages")
        next_id = max([int(meta.get("next_id", 0)) if meta else 0, *(m.id for m in messages)])
        if repairs:
            await self.rewrite(user_id, room, messages, next_id, profile=profile)
        return LoadedContext(profile=profile, messages=messages, next_id=next_id, repairs=repairs)

    async def change(
        self,
        user_id: int,
        room: str,
        *,
        append: Sequence[StoredMessage] = (),
        remove: Sequence[StoredMessage] = (),
        next_id: int,
        count: int,
    ) -> bool:
        """Remove and append messages atomically; ``count`` is the new length.

        Checked, not blind: when the stored list is not what the caller believes (its length is
        not ``count - len(append) + len(remove)``, or a message to remove is missing), nothing is
        changed and False is returned, so the caller can rewrite the context it holds.
        """
        keys = self._keys(user_id, room)
        expected = count - len(append) + len(remove)
        args: list[Any] = [expected, self._ttl, self._default_model, next_id, count, len(remove),
                           *(m.to_json() for m in remove), *(m.to_json() for m in append)]
        return bool(await self._redis.eval(_CHECKED_CHANGE, keys, args))

    async def save_profile(self, user_id: int, room: str, profile: Profile) -> None:
        profile_key, _messages_key, _meta_key = keys = self._keys(user_id, room)
        await self._redis.transaction(
            [["HSET", profile_key, *_flatten(profile.to_mapping())], *self._expire_all(keys)]
        )

    async def rewrite(
        self, user_id: int, room: str, messages: Sequence[StoredMessage], next_id: int, *,
        profile: Profile | None = None,
    ) -> None:
        """Replace the stored history with ``messages`` (and the profile, when given) in one
        transaction: repairs, ``/clear`` (``messages=[]``), ``/reset`` (with the default
        profile), and a session rewriting a context that changed under it."""
        profile_key, messages_key, meta_key = keys = self._keys(user_id, room)
        commands: list[list[Any]] = [["DEL", messages_key]]
        if profile is not None:
            commands += [["DEL", profile_key], ["HSET", profile_key, *_flatten(profile.to_mapping())]]
        if messages:
            commands.append(["RPUSH", messages_key, *(m.to_json() for m in messages)])
        commands += [
            ["HSET", meta_key, "next_id", next_id, "count", len(messages)],
            ["HSETNX", profile_key, "model", self._default_model],
            *self._expire_all(keys),
        ]
        await self._redis.transaction(commands)

    async def delete(self, user_id: int, room: str) -> None:
        await self._redis.execute("DEL", *self._keys(user_id, room))

    async def delete_user(self, user_id: int) -> int:
        """Remove every context of a user; returns how many keys went."""
        pattern = f"{self._redis.prefix}ctx:{user_id}:*"
        cursor, removed = "0", 0
        while True:
            cursor, found = await self._redis.execute(
                "SCAN", cursor, "MATCH", pattern, "COUNT", 500
            )
            if found:
                removed += int(await self._redis.execute("DEL", *found))
            if str(cursor) == "0":
                return removed


# KEYS: profile, messages, meta. ARGV: expected length, ttl, default model, next_id, new count,
# n (messages to remove), the n JSON texts to remove, then the JSON texts to append.
# Every check runs before any write: the script changes all or nothing.
_LOAD = """
local out = {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1),
             redis.call('HGETALL', KEYS[3])}
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return out
"""


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """HGETALL's reply inside a script: field, value, field, value..."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


_CHECKED_CHANGE = """
local profile, messages, meta = KEYS[1], KEYS[2], KEYS[3]
if redis.call('LLEN', messages) ~= tonumber(ARGV[1]) then return 0 end
local n = tonumber(ARGV[6])
for i = 1, n do
  if not redis.call('LPOS', messages, ARGV[6 + i]) then return 0 end
end
for i = 1, n do redis.call('LREM', messages, 1, ARGV[6 + i]) end
for i = 7 + n, #ARGV do redis.call('RPUSH', messages, ARGV[i]) end
redis.call('HSET', meta, 'next_id', ARGV[4], 'count', ARGV[5])
redis.call('HSETNX', profile, 'model', ARGV[3])
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[2]) end
return 1
"""


def _flatten(mapping: dict[str, str]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]
