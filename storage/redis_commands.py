"""Checks on Redis commands before they are queued: argument types, what may be batched,
block times."""

from __future__ import annotations

from typing import Any

_ARG_TYPES = (str, bytes, int, float)
# Commands whose last argument is the block time in seconds.
_LAST_ARG_TIMEOUT = frozenset({"BLPOP", "BRPOP", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX", "BLMOVE"})
# Commands that wait server-side: in a shared pipeline they would stall every batched caller.
BLOCKING = _LAST_ARG_TIMEOUT | {"BLMPOP", "BZMPOP", "WAIT", "WAITAOF"}
# Commands that change (or take over) the pooled connection they run on: the next user of
# that connection would inherit a subscription, a MULTI, a WATCH, another database...
STATEFUL = frozenset({
    "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE",
    "MONITOR", "SYNC", "PSYNC", "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "SELECT",
    "RESET", "QUIT", "HELLO", "AUTH",
})


def check_args(args: tuple[Any, ...]) -> None:
    """Refuse what redis-py cannot encode, before queueing: in a batch it would fail everyone."""
    if not args:
        raise TypeError("a Redis command needs at least its name")
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, _ARG_TYPES):
            raise TypeError(f"invalid Redis argument type {type(arg).__name__}: {arg!r}")


def check_batchable(args: tuple[Any, ...]) -> None:
    """``check_args``, and refuse what must not share the batching pipeline (``execute``)."""
    check_args(args)
    name = str(args[0]).upper()
    blocks = name in BLOCKING or (
        name in ("XREAD", "XREADGROUP") and any(str(a).upper() == "BLOCK" for a in args[1:])
    )
    if blocks:
        raise TypeError(
            f"{name} blocks on the server and would stall every command batched with it: "
            "use RedisActor.blocking()"
        )
    if name in STATEFUL:
        raise TypeError(
            f"{name} changes the state of a shared pooled connection: not allowed through "
            "RedisActor.execute() (use transaction() for MULTI/EXEC, blocking() for waits)"
        )


def block_seconds(args: tuple[Any, ...]) -> float | None:
    """The server-side block time of a blocking command, or None (unknown or forever)."""
    name = str(args[0]).upper()
    try:
        if name in _LAST_ARG_TIMEOUT:
            value = float(args[-1])
        elif name in ("BLMPOP", "BZMPOP"):
            value = float(args[1])
        else:
            return None
    except (ValueError, IndexError):
        return None
    return value if value > 0 else None
