"""Offline token counting: real vocabularies from installed packages, no network, no env changes."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from importlib.resources import files

import pytest
import trio
import trio.lowlevel

from chat_actors import tokens


def test_standard_encodings_build_offline_without_touching_the_environment() -> None:
    before = dict(os.environ)
    cl = tokens.get_encoding("cl100k_base")
    o2 = tokens.get_encoding("o200k_base")
    assert os.environ == before
    assert cl.name == "cl100k_base" and o2.name == "o200k_base"
    # Reference ids from the official encodings.
    assert cl.encode("hello world") == [15339, 1917]
    assert o2.encode("hello world") == [24912, 2375]
    assert cl.max_token_value == 100276 and o2.max_token_value == 200018
    assert cl.decode(cl.encode("naïve café 🚀")) == "naïve café 🚀"


def test_quicktok_conversion_is_byte_identical_to_official_o200k() -> None:
    raw = files("quicktok").joinpath("data").joinpath("o200k.vocab").read_bytes()
    text = tokens.quicktok_to_tiktoken_text(raw)
    assert hashlib.sha256(text).hexdigest().startswith("446a9538")


def test_encodings_are_cached() -> None:
    assert tokens.encoding_for("gpt-4o") is tokens.encoding_for("gpt-4o-mini")
    assert tokens.encoding_for("gpt-4") is tokens.get_encoding("cl100k_base")


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("mock-gpt", "cl100k_base"),
        ("something-unknown", "cl100k_base"),
        ("davinci-002", "cl100k_base"),  # r50k-family names are not shipped: cl100k
    ],
)
def test_model_to_encoding(model: str, encoding: str) -> None:
    assert tokens.encoding_for(model).name == encoding


def test_message_cost_follows_the_cookbook_formula() -> None:
    enc = tokens.encoding_for("gpt-4")
    text = "What is the capital of France?"
    expected = 3 + len(enc.encode("user")) + len(enc.encode(text))
    assert tokens.count_message_tokens(text, "user", "gpt-4") == expected
    assert tokens.count_message_tokens("", "system", "gpt-4") == 3 + 1
    named = tokens.count_message_tokens(text, "user", "gpt-4", name="bob")
    assert named == expected + 1 + len(enc.encode("bob"))
    assert tokens.REPLY_PRIMING_TOKENS == 3


def test_special_token_text_counts_as_plain_text() -> None:
    # A user typing "<|endoftext|>" must neither raise nor count as one special token.
    n = tokens.count_tokens("<|endoftext|>", "gpt-4o")
    assert n > 1


def test_o200k_falls_back_to_cl100k_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing() -> object:
        raise tokens.VocabularyUnavailable("quicktok-v1 not installed")

    monkeypatch.setattr(tokens, "_cache", {})
    monkeypatch.setitem(tokens._LOADERS, "o200k_base", missing)
    with caplog.at_level(logging.WARNING, logger="chat_actors.tokens"):
        first = tokens.encoding_for("gpt-4o")
        second = tokens.encoding_for("gpt-4.1")
    assert first.name == "cl100k_base" and second is first
    assert len([r for r in caplog.records if "o200k_base unavailable" in r.message]) == 1


async def test_async_variant_matches_and_threads_long_texts() -> None:
    long_text = "lorem ipsum dolor sit amet " * 2000  # 54k chars: goes through a thread
    expected = tokens.count_message_tokens(long_text, "user", "gpt-4o")
    assert await tokens.count_tokens_async(long_text, "user", "gpt-4o") == expected
    assert await tokens.count_tokens_async("hi", "user", "gpt-4") == tokens.count_message_tokens(
        "hi", "user", "gpt-4"
    )

    # The event loop keeps running while a long text is being counted: a task that only
    # checkpoints gets scheduled again and again before the count returns (counted in the
    # event loop, it would not run once; after one checkpoint, once).
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await tokens.count_tokens_async(long_text * 4, "user", "gpt-4o")
        ticks_while_counting = ticks
        nursery.cancel_scope.cancel()
    assert ticks_while_counting >= 10, ticks_while_counting


async def test_preload_builds_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_cache", {})  # cold: nothing built yet
    built: dict[str, int] = {}
    for name, loader in list(tokens._LOADERS.items()):
        def recording(name: str = name, loader: Callable[[], object] = loader) -> object:
            built[name] = threading.get_ident()
            return loader()

        monkeypatch.setitem(tokens._LOADERS, name, recording)
    assert not tokens.is_loaded("gpt-4") and not tokens.is_loaded("gpt-4o")
    await tokens.preload(["gpt-4", "gpt-4o"])
    assert tokens.is_loaded("gpt-4") and tokens.is_loaded("gpt-4o")
    assert set(built) == {"cl100k_base", "o200k_base"}
    assert threading.get_ident() not in built.values(), "built on the event loop's thread"
    assert tokens.encoding_for("gpt-4o").encode("hello world") == [24912, 2375]
