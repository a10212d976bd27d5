"""Chat context of one session (user, room) in Redis.

Key layout (``P`` is the Redis actor's prefix, ``U`` the user id, ``R`` the room key):

    P ctx:U:R:profile    hash   model, temperature, top_p, presence_penalty, frequency_penalty
    P ctx:U:R:messages   list   one JSON object per message, oldest first:
                                {"id", "role", "content", "tokens", "ts", "partial"?}
    P ctx:U:R:meta       hash   next_id (last message id handed out), count (expected LLEN)
    P ctx:U:R:lease      string "<node> <token>" of the process that owns the session (PX)
    P ctx:U:R:fence      string the token of the session's newest owner
    P ctx:U:R:inbox      stream inputs waiting for the owner (``storage.session_inbox``)
    P ctx:U:R:answer     hash   the answer in progress: gen, answering, replaces (JSON), text,
                              usage (JSON: what its store settles)

Ownership and fencing (``storage.session_leases``): a process that owns a session passes its
``Fence`` with every write; the script refuses the write (``SessionMoved``) when the fence key
names another owner, or, with no fence key, when another node holds the lease. Deleting a
context leaves the fence as a tombstone (``deleted``), so a process that still believed it
owned the session cannot bring it back.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal, NamedTuple, Protocol

from core.errors import SessionMoved

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
class Fence:
    """A session owner's proof: its lease value (``"<node> <token>"``) and token."""

    lease: str
    token: int


@dataclass(frozen=True)
class AnswerUsage:
    """What whoever stores an answer in progress settles for it: the token budget it
    reserved (on ``budget_day``), its prompt's tokens, the key and model of its usage."""

    key_id: int | None = None
    model: str = ""
    prompt_tokens: int = 0
    reserved: int = 0
    budget_day: str = ""


@dataclass(frozen=True)
class AnswerInProgress:
    """The mirror of an answer that was streaming when its owner stopped or died."""

    gen: str  # unique per answer (across owners: ids restart with each one); its limit slot
    answering: int  # the id of the message it answers
    replaces: list[int]  # ids of the answers it replaces once stored (/retry)
    text: str
    usage: AnswerUsage = field(default_factory=AnswerUsage)

    @cached_property
    def fixed_json(self) -> tuple[str, str]:
        """``replaces`` and ``usage`` as the mirror stores them (made once per answer: every
        mirror write sends them)."""
        return json.dumps(self.replaces), json.dumps(asdict(self.usage))


@dataclass(frozen=True)
class LoadedContext:
    profile: Profile
    messages: list[StoredMessage]
    next_id: int
    repairs: list[str] = field(default_factory=list)
    #: The answer its previous owner was streaming, when that owner did not end it.
    interrupted: AnswerInProgress | None = None


class SessionKeys(NamedTuple):
    profile: str
    messages: str
    meta: str
    lease: str
    fence: str
    inbox: str
    answer: str


def session_keys(prefix: str, user_id: int, room: str) -> SessionKeys:
    base = f"{prefix}ctx:{user_id}:{room}:"
    return SessionKeys(*(base + name for name in SessionKeys._fields))


def _fence_args(fence: Fence | None) -> list[Any]:
    return ["", 0] if fence is None else [fence.lease, fence.token]


def _fenced(result: Any) -> Any:
    if result == -1:
        raise SessionMoved("a newer owner holds this session: the write was refused")
    return result


class ContextStore:
    """All reads and writes of chat contexts; one instance shared by every session actor."""

    def __init__(self, redis: RedisLike, *, ttl_seconds: int, default_model: str) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._default_model = default_model

    def keys(self, user_id: int, room: str) -> SessionKeys:
        return session_keys(self._redis.prefix, user_id, room)

    async def load(self, user_id: int, room: str, fence: Fence | None = None) -> LoadedContext:
        """The stored context, and the answer a previous owner left streaming (its mirror)."""
        keys = self.keys(user_id, room)
        # A script, not MULTI/EXEC: scripts share the Redis actor's batches, so the session
        # starts of a connection storm load together instead of each taking a connection.
        profile_pairs, raw_messages, meta_pairs, answer_pairs = await self._redis.eval(
            _LOAD, keys, [self._ttl])
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
        interrupted = _answer(_pairs(answer_pairs))
        if repairs:  # the mirror stays: the caller stores it
            await self.rewrite(user_id, room, messages, next_id, profile=profile, fence=fence,
                               answering=interrupted.gen if interrupted else "")
        return LoadedContext(profile=profile, messages=messages, next_id=next_id, repairs=repairs,
                             interrupted=interrupted)

    async def change(
        self,
        user_id: int,
        room: str,
        *,
        append: Sequence[StoredMessage] = (),
        remove: Sequence[StoredMessage] = (),
        next_id: int,
        count: int,
        fence: Fence | None = None,
        done_input: str = "",
        answer_stored: bool = False,
    ) -> bool:
        """Remove and append messages atomically; ``count`` is the new length.

        Checked, not blind: when the stored list is not what the caller believes (its length is
        not ``count - len(append) + len(remove)``, or a message to remove is missing), nothing is
        changed and False is returned, so the caller can rewrite the context it holds.
        In the same step ``done_input`` (an inbox entry id) leaves the inbox, and with
        ``answer_stored`` the answer's mirror goes: a crash can neither answer an input twice
        nor store an answer twice. ``SessionMoved`` when a newer owner holds the session.
        """
        expected = count - len(append) + len(remove)
        args: list[Any] = [*_fence_args(fence), expected, self._ttl, self._default_model,
                           next_id, count, done_input, int(answer_stored), len(remove),
                           *(m.to_json() for m in remove), *(m.to_json() for m in append)]
        return bool(_fenced(await self._redis.eval(_CHECKED_CHANGE, self.keys(user_id, room),
                                                   args)))

    async def save_profile(self, user_id: int, room: str, profile: Profile,
                           fence: Fence | None = None) -> None:
        args = [*_fence_args(fence), self._ttl, *_flatten(profile.to_mapping())]
        _fenced(await self._redis.eval(_SAVE_PROFILE, self.keys(user_id, room), args))

    async def rewrite(
        self, user_id: int, room: str, messages: Sequence[StoredMessage], next_id: int, *,
        profile: Profile | None = None, fence: Fence | None = None, answering: str = "",
    ) -> None:
        """Replace the stored history with ``messages`` (and the profile, when given) in one
        step: repairs, ``/clear`` (``messages=[]``), ``/reset`` (with the default profile),
        and a session rewriting a context that changed under it (or that Redis could not take
        for a while). The answer mirror goes unless it is the one of ``answering`` (the
        ``gen`` of the answer still in progress): a mirror of an answer that ended is in
        ``messages`` already, or was meant to go."""
        pairs = _flatten(profile.to_mapping()) if profile is not None else []
        args = [*_fence_args(fence), self._ttl, self._default_model, next_id, answering,
                len(pairs), *pairs, *(m.to_json() for m in messages)]
        _fenced(await self._redis.eval(_REWRITE, self.keys(user_id, room), args))

    async def mirror_answer(self, user_id: int, room: str, answer: AnswerInProgress,
                            more_text: str, fence: Fence | None) -> None:
        """Keep the answer in progress recoverable: a process that takes the session over
        after its owner died stores this text as a partial answer. ``more_text`` is what
        came since the last call for the same ``answer.gen`` (appended)."""
        replaces, usage = answer.fixed_json
        args = [*_fence_args(fence), self._ttl, answer.gen, answer.answering, replaces,
                more_text, usage]
        _fenced(await self._redis.eval(_MIRROR, self.keys(user_id, room), args))

    async def drop_answer(self, user_id: int, room: str, fence: Fence | None) -> None:
        """The answer in progress ended without being stored: its mirror goes."""
        _fenced(await self._redis.eval(_DROP_ANSWER, self.keys(user_id, room),
                                       _fence_args(fence)))

    async def delete(self, user_id: int, room: str) -> None:
        """The context goes, and with it the lease, the inbox and the mirror; the fence stays
        as a tombstone, so a process still holding the session can write nothing more."""
        await self._redis.eval(_DELETE, self.keys(user_id, room), [self._ttl, DELETED])

    async def delete_user(self, user_id: int) -> int:
        """Remove every context of a user; returns how many keys went."""
        pattern = f"{self._redis.prefix}ctx:{user_id}:*"
        cursor, removed = "0", 0
        while True:
            cursor, found = await self._redis.execute(
                "SCAN", cursor, "MATCH", pattern, "COUNT", 500
            )
            if found:
                removed += int(await self._redis.eval(_DELETE_KEYS, found,
                                                      [self._ttl, DELETED]))
            if str(cursor) == "0":
                return removed


# Every script takes SessionKeys as KEYS (profile, messages, meta, lease, fence, inbox, answer).
_LOAD = """
local out = {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1),
             redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[7])}
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return out
"""

# The first lines of every write: ARGV[1] the writer's lease value ('' for an unowned write),
# ARGV[2] its token. Refused (-1) when the fence names another owner (or a deleted context);
# with no fence key at all (Redis lost its data: nobody took over since, or the fence would
# name them) only when another node holds the lease; else the fence is set again. Then
# ``touch`` refreshes the TTL of the context keys and the fence (never the lease's PX).
_FENCE = """
if ARGV[1] ~= '' then
  local f = redis.call('GET', KEYS[5])
  if f then
    if f ~= ARGV[2] then return -1 end
  else
    local lease = redis.call('GET', KEYS[4])
    if lease and lease ~= ARGV[1] then return -1 end
    redis.call('SET', KEYS[5], ARGV[2])
  end
end
local function touch(ttl)
  for _, i in ipairs({1, 2, 3, 5}) do redis.call('EXPIRE', KEYS[i], ttl) end
end
"""

def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """HGETALL's reply inside a script: field, value, field, value..."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _answer(data: dict[str, str]) -> AnswerInProgress | None:
    try:
        return AnswerInProgress(gen=data["gen"], answering=int(data["answering"]),
                                replaces=[int(i) for i in json.loads(data["replaces"])],
                                text=data.get("text", ""),
                                usage=AnswerUsage(**json.loads(data.get("usage", "{}"))))
    except (KeyError, ValueError, TypeError):
        return None


# ARGV after the fence: expected length, ttl, default model, next_id, new count, inbox entry
# done ('' none), answer stored (0/1), n (messages to remove), the n JSON texts to remove, then
# the JSON texts to append. Every check runs before any write: the script changes all or
# nothing.
_CHECKED_CHANGE = _FENCE + """
local profile, messages, meta = KEYS[1], KEYS[2], KEYS[3]
if redis.call('LLEN', messages) ~= tonumber(ARGV[3]) then return 0 end
local n = tonumber(ARGV[10])
for i = 1, n do
  if not redis.call('LPOS', messages, ARGV[10 + i]) then return 0 end
end
for i = 1, n do redis.call('LREM', messages, 1, ARGV[10 + i]) end
for i = 11 + n, #ARGV do redis.call('RPUSH', messages, ARGV[i]) end
redis.call('HSET', meta, 'next_id', ARGV[6], 'count', ARGV[7])
redis.call('HSETNX', profile, 'model', ARGV[5])
if ARGV[8] ~= '' then redis.call('XDEL', KEYS[6], ARGV[8]) end
if ARGV[9] == '1' then redis.call('DEL', KEYS[7]) end
touch(ARGV[4])
return 1
"""

# ARGV after the fence: ttl, then the profile's field/value pairs.
_SAVE_PROFILE = _FENCE + """
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
touch(ARGV[3])
return 1
"""

# ARGV after the fence: ttl, default model, next_id, the gen whose answer mirror stays ('':
# none), m (profile pair items, 0: keep the profile), the m items, then the messages' JSON.
_REWRITE = _FENCE + """
local m = tonumber(ARGV[7])
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[7], 'gen') ~= ARGV[6] then redis.call('DEL', KEYS[7]) end
if m > 0 then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 8, 7 + m))
end
local count = #ARGV - 7 - m
if count > 0 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 8 + m)) end
redis.call('HSET', KEYS[3], 'next_id', ARGV[5], 'count', count)
redis.call('HSETNX', KEYS[1], 'model', ARGV[4])
touch(ARGV[3])
return 1
"""

# ARGV after the fence: ttl, gen, answering id, replaced ids (JSON), text to append, usage
# (JSON). A new gen starts the mirror over.
_MIRROR = _FENCE + """
if redis.call('HGET', KEYS[7], 'gen') ~= ARGV[4] then
  redis.call('DEL', KEYS[7])
  redis.call('HSET', KEYS[7], 'gen', ARGV[4], 'answering', ARGV[5], 'replaces', ARGV[6],
             'text', ARGV[7], 'usage', ARGV[8])
else
  redis.call('HSET', KEYS[7], 'text', redis.call('HGET', KEYS[7], 'text') .. ARGV[7])
end
redis.call('EXPIRE', KEYS[7], ARGV[3])
return 1
"""

DELETED = "deleted"

_DELETE = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7])
redis.call('SET', KEYS[5], ARGV[2], 'EX', ARGV[1])
return 1
"""

# Fences become tombstones (an owner still running writes nothing more); the rest goes.
# ARGV: ttl, tombstone. Returns how many keys were deleted.
_DELETE_KEYS = """
local removed = 0
for _, key in ipairs(KEYS) do
  if string.sub(key, -6) == ':fence' then
    redis.call('SET', key, ARGV[2], 'EX', ARGV[1])
  else
    removed = removed + redis.call('DEL', key)
  end
end
return removed
"""

_DROP_ANSWER = _FENCE + """
redis.call('DEL', KEYS[7])
return 1
"""


def _flatten(mapping: dict[str, str]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]
