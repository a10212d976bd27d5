"""The mock upstream's answers and knobs: pure functions, shared by the server and the tests.

An answer is a deterministic function of the request, so a load test can check every answer
whole: the words come from a SHA-256 stream seeded by the *last user message* (markers included),
and the answer is ``tokens`` words long. Streamed, it is one word per chunk: chunk 0 is the first
word, chunk i > 0 is ``" " + word``; ``"".join(expected_chunks(...)) == expected_answer(...)``.

Per-request knobs ride in the last user message as a marker, e.g.
``[mock tokens=200 delay_ms=5 fault=429x2]`` (keys: tokens, delay_ms, fault, after, stall_s,
retry_after, length_after), or a fault is chosen by the model name ``mock-<fault>``
(``mock-429x2``, ``mock-stall_mid``); the marker wins over the model name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

_HEADS = ("ka", "lo", "mi", "nu", "re", "si", "to", "va", "zé", "ñu", "ør", "qi", "bo", "da",
          "fe", "gü")
_TAILS = ("n", "ra", "mo", "lis", "ta", "vek", "dor", "pi", "um", "ché", "sø", "x", "ti", "len",
          "go", "ß")
# 256 words; a few need JSON escaping or are multi-byte, to exercise the clients' decoding.
VOCABULARY: tuple[str, ...] = tuple(h + t for h in _HEADS for t in _TAILS)[:250] + (
    '"quoted"', "back\\slash", "tab\there", "emoji🙂", "日本語", "end.\n",
)
assert len(VOCABULARY) == 256

FAULTS = ("stall_first", "stall_mid", "drop_mid", "malformed", "length", "content_filter")
_STATUS_FAULT = re.compile(r"^(429|5\d\d)(?:x(\d+))?$")
_MARKER = re.compile(r"\[mock\s+([^\]]*)\]")


@dataclass(frozen=True)
class Knobs:
    """Everything that shapes one answer; server defaults overridden by the request."""

    tokens: int = 64
    delay_ms: float = 10.0
    fault: str | None = None  # one of FAULTS, or "429", "429x2", "500", "503x1", ...
    after: int = 3  # chunks sent before stall_mid / drop_mid / malformed / content_filter
    stall_s: float = 3600.0
    retry_after: int = 1  # the Retry-After header of a 429
    length_after: int | None = None  # words per response when fault=length (default: half)

    def status_fault(self) -> tuple[int, int | None] | None:
        """``(status, times)`` for ``429`` / ``5xx`` faults (times None = always), else None."""
        match = _STATUS_FAULT.match(self.fault or "")
        if match is None:
            return None
        return int(match[1]), (int(match[2]) if match[2] else None)


def is_fault(name: str) -> bool:
    return name in FAULTS or _STATUS_FAULT.match(name) is not None


def message_text(message: Mapping[str, object]) -> str:
    """The text of a message whose content is a string or a list of ``{"type": "text"}`` parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        )
    return ""


def last_user_text(messages: Sequence[Mapping[str, object]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def message_hash(messages: Sequence[Mapping[str, object]]) -> str:
    return hashlib.sha256(last_user_text(messages).encode()).hexdigest()


def parse_knobs(
    messages: Sequence[Mapping[str, object]], model: str = "", defaults: Knobs = Knobs()
) -> Knobs:
    """The knobs of a request: server defaults, then the model name, then the marker."""
    knobs = defaults
    if model.startswith("mock-") and is_fault(model[5:]):
        knobs = replace(knobs, fault=model[5:])
    match = _MARKER.search(last_user_text(messages))
    if match is None:
        return knobs
    changes: dict[str, object] = {}
    for pair in match[1].split():
        key, _, value = pair.partition("=")
        if key in ("tokens", "after", "retry_after", "length_after"):
            changes[key] = max(0, int(value))
        elif key in ("delay_ms", "stall_s"):
            changes[key] = max(0.0, float(value))
        elif key == "fault" and is_fault(value):
            changes[key] = value
        else:
            raise ValueError(f"unknown mock knob {pair!r}")
    return replace(knobs, **changes)  # type: ignore[arg-type]


@lru_cache(maxsize=4096)
def _words(seed: str, tokens: int) -> tuple[str, ...]:
    digest = bytes.fromhex(seed)
    out: list[str] = []
    block = 0
    while len(out) < tokens:
        out.extend(VOCABULARY[b] for b in hashlib.sha256(digest + block.to_bytes(4, "big")).digest())
        block += 1
    return tuple(out[:tokens])


def expected_chunks(
    messages: Sequence[Mapping[str, object]], tokens: int = 64
) -> tuple[str, ...]:
    """The content deltas of the full answer, one word each.

    ``tokens`` is the server's default length; a ``[mock tokens=N]`` marker in the last user
    message wins, exactly as on the server.
    """
    knobs = parse_knobs(messages, defaults=Knobs(tokens=tokens))
    words = _words(message_hash(messages), knobs.tokens)
    return tuple(w if i == 0 else " " + w for i, w in enumerate(words))


def expected_answer(messages: Sequence[Mapping[str, object]], tokens: int = 64) -> str:
    """The whole answer the mock gives to ``messages`` (see ``expected_chunks``)."""
    return "".join(expected_chunks(messages, tokens))


def continuation_offset(
    messages: Sequence[Mapping[str, object]], chunks: Sequence[str]
) -> int:
    """How many chunks a continuation request has already received.

    Continuation protocol: the client repeats the request with the partial answer appended as
    the last message (``role: assistant``). That text must be a prefix of the answer ending on a
    chunk boundary; the mock then sends the remaining chunks only (so nothing is duplicated).
    Returns 0 when the last message is not an assistant message; raises ValueError when the
    partial text is not such a prefix.
    """
    if not messages or messages[-1].get("role") != "assistant":
        return 0
    partial = message_text(messages[-1])
    if not "".join(chunks).startswith(partial):
        raise ValueError("partial answer is not a prefix of the expected answer")
    size = 0
    for index, chunk in enumerate(chunks):
        if size == len(partial):
            return index
        size += len(chunk)
    if size == len(partial):
        return len(chunks)
    raise ValueError("partial answer does not end on a chunk boundary")
