"""Slash commands: parsing, aliases, validation messages, help, registry rules, effects.

The context is a small fake of our own ``CommandContext`` protocol that records the effects.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated

import pytest

from chat_actors import commands
from chat_actors.command_registry import (
    CommandContext,
    Number,
    Registry,
    Reply,
    Rest,
    Role,
    Sampling,
    SessionInfo,
    Word,
)
from chat_actors.commands import REGISTRY, execute, is_immediate, parse
from core.errors import BadArgument, ChatServerError, CommandError, UnknownCommand


class FakeSession:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.sampling: dict[str, float] = {"temperature": 1.0, "top_p": 1.0,
                                           "presence_penalty": 0.0, "frequency_penalty": 0.0}
        self.last: dict[str, str] = {"user": "hello", "assistant": "hi there"}
        self.generating = False
        self.can_retry = True

    @property
    def known_models(self) -> Collection[str]:
        return ("gpt-4o", "mock-gpt")

    async def clear(self) -> Mapping[Role, int]:
        self.calls.append(("clear",))
        return {"user": 10, "assistant": 20, "system": 5}

    async def reset(self) -> None:
        self.calls.append(("reset",))

    async def add_system(self, text: str) -> None:
        self.calls.append(("add_system", text))

    async def set_system(self, text: str) -> None:
        self.calls.append(("set_system", text))

    async def set_sampling(self, name: Sampling, value: float) -> float:
        previous = self.sampling[name]
        self.sampling[name] = value
        self.calls.append(("set_sampling", name, value))
        return previous

    async def pop_last(self, role: Role) -> str | None:
        self.calls.append(("pop_last", role))
        return self.last.pop(role, None)

    async def retry(self) -> bool:
        self.calls.append(("retry",))
        return self.can_retry

    async def change_model(self, name: str) -> None:
        self.calls.append(("change_model", name))

    async def info(self) -> SessionInfo:
        return SessionInfo(model="gpt-4o", temperature=0.7, top_p=1, presence_penalty=0,
                           frequency_penalty=0.5, messages=4, history_tokens=120,
                           system_tokens=20, context_window=128000, max_answer_tokens=16384,
                           max_message_tokens=4000, prompt_limit=111549)

    async def stop(self) -> bool:
        self.calls.append(("stop",))
        return self.generating

    async def delete_room(self) -> None:
        self.calls.append(("delete_room",))


def _typed(ctx: FakeSession) -> CommandContext:
    return ctx  # mypy checks that the fake really implements the protocol


async def run(text: str, ctx: FakeSession | None = None) -> tuple[str | None, FakeSession]:
    ctx = ctx or FakeSession()
    reply = await execute(_typed(ctx), text)
    return (reply.text if reply else None), ctx


# ---- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "args"),
    [
        ("/settemperature 0.7", "settemperature", (0.7,)),
        ("/temp 2", "settemperature", (2.0,)),
        ("/TEMP   0", "settemperature", (0.0,)),
        ("/settopp 0.25", "settopp", (0.25,)),
        ("/topp 1", "settopp", (1.0,)),
        ("/setpresencepenalty -2", "setpresencepenalty", (-2.0,)),
        ("/setfrequencypenalty 1.5", "setfrequencypenalty", (1.5,)),
        ("/poplastmessage user", "poplastmessage", ("user",)),
        ("/pop GPT", "poplastmessage", ("assistant",)),
        ("/pop ai", "poplastmessage", ("assistant",)),
        ("/pop system", "poplastmessage", ("system",)),
        ("/system Be brief.\n  Use lists.", "system", ("Be brief.\n  Use lists.",)),
        ("/echo  a  b ", "echo", ("a  b",)),
        ("/codeblock Python print(1)\nprint(2)", "codeblock", ("Python", "print(1)\nprint(2)")),
        ("/changemodel gpt-4o", "changemodel", ("gpt-4o",)),
        ("/model mock-gpt", "changemodel", ("mock-gpt",)),
        ("/help", "help", ("",)),
        ("/help temp", "help", ("temp",)),
        ("  /ping  ", "ping", ()),
    ]
    + [(f"/{n}", n, ()) for n in ("clear", "reset", "retry", "codex", "redx", "info", "stop",
                                  "deletechatroom")],
)
def test_parse(text: str, name: str, args: tuple[object, ...]) -> None:
    parsed = parse(text)
    assert parsed.command.name == name
    assert parsed.args == args
    cmd, parsed_args = parsed  # a plain (command, args) pair too
    assert cmd is parsed.command and parsed_args == args


@pytest.mark.parametrize("text", ["/nosuch", "/", "/ temp 1", "/settemperature_x 1"])
def test_unknown_command_points_at_help(text: str) -> None:
    with pytest.raises(UnknownCommand) as info:
        parse(text)
    assert "/help" in str(info.value)
    assert info.value.code == "unknown_command"
    assert isinstance(info.value, CommandError) and isinstance(info.value, ChatServerError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/settemperature 2.5",
         "Temperature must be a number from 0 to 2. Usage: /settemperature <0..2>"),
        ("/temp -0.1", "from 0 to 2"),
        ("/temp abc", "from 0 to 2"),
        ("/temp nan", "from 0 to 2"),
        ("/temp inf", "from 0 to 2"),
        ("/temp", "Missing 0..2. Usage: /settemperature <0..2>"),
        ("/temp 1 2", "Too many arguments. Usage: /settemperature <0..2>"),
        ("/settopp 1.01", "Top_p must be a number from 0 to 1"),
        ("/setpresencepenalty 3", "from -2 to 2. Usage: /setpresencepenalty <-2..2>"),
        ("/setfrequencypenalty -2.5", "from -2 to 2"),
        ("/pop bot", "Role must be one of user|system|gpt. Usage: /poplastmessage <user|system|gpt>"),
        ("/pop", "Usage: /poplastmessage <user|system|gpt>"),
        ("/system", "Missing text. Usage: /system <text>"),
        ("/system    ", "Missing text"),
        ("/echo", "Usage: /echo <text>"),
        ("/codeblock python", "Missing code. Usage: /codeblock <lang> <code>"),
        ("/codeblock", "Missing lang"),
        ("/codeblock ```evil x", "not a valid lang"),
        ("/changemodel", "Usage: /changemodel <model>"),
        ("/ping now", "Too many arguments. Usage: /ping"),
        ("/clear all", "Usage: /clear"),
    ],
)
def test_bad_arguments_say_the_valid_range(text: str, expected: str) -> None:
    with pytest.raises(BadArgument) as info:
        parse(text)
    assert expected in str(info.value)
    assert info.value.code == "bad_argument"


# ---- effects -------------------------------------------------------------------------------


async def test_ping_and_echo() -> None:
    assert (await run("/ping"))[0] == "pong"
    assert (await run("/echo hello   world"))[0] == "hello   world"


async def test_codeblock_replies_with_a_fence() -> None:
    reply, _ = await run("/codeblock Python def f():\n    return 1")
    assert reply == "```python\ndef f():\n    return 1\n```"


async def test_set_sampling_parameters() -> None:
    reply, ctx = await run("/temp 0.5")
    assert reply == "I've changed temperature from 1 to 0.5."
    reply, ctx = await run("/topp 0.9", ctx)
    await run("/setpresencepenalty -1", ctx)
    await run("/setfrequencypenalty 2", ctx)
    assert ctx.sampling == {"temperature": 0.5, "top_p": 0.9, "presence_penalty": -1.0,
                            "frequency_penalty": 2.0}


async def test_a_refused_argument_changes_nothing() -> None:
    ctx = FakeSession()
    with pytest.raises(BadArgument):
        await run("/temp 3", ctx)
    assert ctx.calls == []


async def test_pop_last_message() -> None:
    reply, ctx = await run("/pop gpt")
    assert reply == "Pop gpt message: hi there"
    assert ctx.calls == [("pop_last", "assistant")]
    reply, _ = await run("/pop gpt", ctx)
    assert reply == "There is no gpt message to pop."
    reply, _ = await run("/poplastmessage system", ctx)
    assert reply == "There is no system message to pop."


async def test_system_codex_redx() -> None:
    reply, ctx = await run("/system You are terse.")
    assert reply == "Added system message: You are terse."
    assert ctx.calls == [("add_system", "You are terse.")]
    reply, ctx = await run("/codex")
    assert reply == "CODEX mode ON" and ctx.calls == [("set_system", commands.CODEX_PROMPT)]
    reply, ctx = await run("/redx")
    assert reply == "REDX mode ON" and ctx.calls == [("set_system", commands.REDX_PROMPT)]
    assert "code" in commands.CODEX_PROMPT.lower() and "reduce" in commands.REDX_PROMPT.lower()


async def test_clear_reset_delete() -> None:
    reply, ctx = await run("/clear")
    assert reply is not None and "**35**" in reply and "User: 10" in reply
    reply, ctx = await run("/reset")
    assert reply == "Context reset success" and ctx.calls == [("reset",)]
    reply, ctx = await run("/deletechatroom")
    assert reply is None and ctx.calls == [("delete_room",)]


async def test_retry_and_stop() -> None:
    reply, ctx = await run("/retry")
    assert reply is None and ctx.calls == [("retry",)]
    ctx = FakeSession()
    ctx.can_retry = False
    assert (await run("/retry", ctx))[0] == "There is no message to retry."
    assert (await run("/stop"))[0] == "Nothing to stop."
    ctx = FakeSession()
    ctx.generating = True
    assert (await run("/stop", ctx))[0] is None


def test_only_stop_is_immediate() -> None:
    assert is_immediate("/stop") and is_immediate(" /STOP ")
    assert not any(is_immediate(t) for t in ("/ping", "/temp 1", "/", "stop", "/nosuch"))


async def test_changemodel_refuses_unknown_models() -> None:
    reply, ctx = await run("/changemodel mock-gpt")
    assert reply == "Model changed to mock-gpt." and ctx.calls == [("change_model", "mock-gpt")]
    ctx = FakeSession()
    with pytest.raises(BadArgument) as info:
        await run("/model gpt-9", ctx)
    assert "gpt-4o, mock-gpt" in str(info.value) and ctx.calls == []


async def test_info_shows_model_tokens_and_limits() -> None:
    reply, _ = await run("/info")
    assert reply is not None
    for part in ("gpt-4o", "temperature: 0.7", "120 tokens", "128000", "16384", "4000"):
        assert part in reply


# ---- help and registry ---------------------------------------------------------------------


async def test_help_lists_every_command_once_per_line() -> None:
    reply, _ = await run("/help")
    assert reply is not None
    lines = reply.splitlines()[1:]
    names = [cmd.name for cmd in REGISTRY]
    assert len(lines) == len(names)
    for name, line in zip(names, lines):
        assert line.startswith(f"/{name}")
    assert "/settemperature <0..2> (alias /temp)" in reply
    assert "/poplastmessage <user|system|gpt> (alias /pop)" in reply
    expected = {"help", "clear", "reset", "system", "settemperature", "settopp", "poplastmessage",
                "retry", "ping", "codex", "redx", "echo", "codeblock", "changemodel", "info",
                "stop", "deletechatroom", "setpresencepenalty", "setfrequencypenalty"}
    assert expected <= set(names)


async def test_help_for_one_command() -> None:
    reply, _ = await run("/help temp")
    assert reply == "/settemperature <0..2> (alias /temp) — Set the sampling temperature."
    with pytest.raises(UnknownCommand):
        await run("/help nosuch")


def test_names_and_aliases_are_unique() -> None:
    keys = [k for cmd in REGISTRY for k in (cmd.name, *cmd.aliases)]
    assert len(keys) == len(set(keys))


def test_registering_a_duplicate_name_or_alias_raises() -> None:
    reg = Registry()

    @reg.command("one", aliases=("uno",), help="first")
    async def one(ctx: CommandContext) -> Reply | None:
        return Reply("1")

    with pytest.raises(ValueError, match="/one"):
        @reg.command("one", help="again")
        async def again(ctx: CommandContext) -> Reply | None:
            return None

    with pytest.raises(ValueError, match="/uno"):
        @reg.command("two", aliases=("uno",), help="clash")
        async def two(ctx: CommandContext) -> Reply | None:
            return None

    assert [c.name for c in reg] == ["one"]  # a refused registration leaves nothing behind


async def test_adding_a_command_is_one_function() -> None:
    reg = Registry()

    @reg.command("greet", aliases=("hi",), help="Greet someone.")
    async def greet(
        ctx: CommandContext,
        times: Annotated[float, Number(1, 3, "times")],
        who: Annotated[str, Word("name")],
        note: Annotated[str, Rest("note")] = "",
    ) -> Reply | None:
        return Reply(" ".join([f"hello {who}"] * int(times)) + (f" ({note})" if note else ""))

    cmd = reg.get("hi")
    assert cmd is not None and cmd.usage == "/greet <1..3> <name> [note]"
    assert (await reg.execute(FakeSession(), "/hi 2 bob")) == Reply("hello bob hello bob")
    assert (await reg.execute(FakeSession(), "/greet 1 ann a b")) == Reply("hello ann (a b)")
    with pytest.raises(BadArgument, match="Times must be a number from 1 to 3"):
        reg.parse("/greet 4 bob")


def test_bad_declarations_fail_at_registration() -> None:
    reg = Registry()
    with pytest.raises(TypeError):
        @reg.command("bad", help="x")
        async def bad(ctx: CommandContext, n: int) -> Reply | None:
            return None

    with pytest.raises(TypeError):
        @reg.command("bad2", help="x")
        async def bad2(
            ctx: CommandContext, a: Annotated[str, Rest()], b: str
        ) -> Reply | None:
            return None

    with pytest.raises(ValueError):
        @reg.command("Bad Name", help="x")
        async def bad3(ctx: CommandContext) -> Reply | None:
            return None
