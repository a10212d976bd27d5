"""Checks on Redis commands before they are queued: argument types, block times."""

from __future__ import annotations

from typing import Any

_ARG_TYPES = (str, bytes, int, float)
# Commands whose last argument is the block time in seconds.
_LAST_ARG_TIMEOUT = frozenset({"BLPOP", "BRPOP", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX", "BLMOVE"})


def check_args(args: tuple[Any, ...]) -> None:
    """Refuse what redis-py cannot encode, before queueing: in a batch it would fail everyone."""
    if not args:
        raise TypeError("a Redis command needs at least its name")
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, _ARG_TYPES):
            raise TypeError(f"invalid Redis argument type {type(arg).__name__}: {arg!r}")


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
