"""The slash commands: one registry, one decorated function per command.

The machinery that parses and validates is ``chat_actors.command_registry``; the session actor
carries out the effects through the ``CommandContext`` protocol it implements
(``chat_actors.session_commands``). Adding a command is one function here::

    @command("settemperature", aliases=("temp",), help="Set the sampling temperature.")
    async def settemperature(
        ctx: CommandContext, value: Annotated[float, Number(0, 2, "temperature")]
    ) -> Reply | None: ...

Parameters after ``ctx`` are read from the text in order: a plain ``str`` (or ``Word``) takes
one whitespace-separated word, ``Rest`` the rest of the line, ``Number``/``Choice`` one word they
validate. A parameter with a default is optional. The usage line (``/settemperature <0..2>``) is
generated from the parameters unless given. Errors are ``UnknownCommand`` (names ``/help``) and
``BadArgument`` (says the valid range and the usage); both leave the session as it was.
"""

from __future__ import annotations

import re
from typing import Annotated

from chat_actors.command_registry import (
    Choice,
    CommandContext,
    Number,
    Registry,
    Reply,
    Rest,
    Role,
    Sampling,
    Word,
)
from core.errors import BadArgument, UnknownCommand

REGISTRY = Registry()
command = REGISTRY.command
parse = REGISTRY.parse
execute = REGISTRY.execute


def is_immediate(text: str) -> bool:
    """Whether ``text`` is a command to run at once rather than queue (``/stop``)."""
    match = re.match(r"/(\S+)", text.strip())
    cmd = REGISTRY.get(match.group(1)) if match else None
    return cmd is not None and cmd.immediate



# ---- the command set -----------------------------------------------------------------------

CODEX_PROMPT = (
    "You are CODEX, a senior software engineer acting as a coding assistant. Answer with "
    "working, idiomatic code first, in fenced code blocks tagged with their language, followed "
    "by at most a few sentences of explanation. Prefer clear, modular, secure code and the "
    "language's standard tools. If the request is ambiguous, ask short numbered questions "
    "before writing code. When an answer would be very long, split it into parts and continue "
    "where you stopped when the user says \"continue\", without repeating code."
)
REDX_PROMPT = (
    "You are REDX, a reducer. Rewrite each message the user sends into the shortest text from "
    "which you could still reconstruct the user's full intention: abbreviations, symbols, "
    "emoji and mixed languages are all allowed, since the result is for you, not for people. "
    "Reply with the reduced text only."
)
ROLES = Choice(
    {"user": "user", "system": "system", "gpt": "assistant", "ai": "assistant",
     "assistant": "assistant"},
    what="role",
    shown=("user", "system", "gpt"),
)
_ROLE_LABEL = {"user": "user", "system": "system", "assistant": "gpt"}


@command("help", help="List the commands, or show one: /help <command>.")
async def help_(ctx: CommandContext, name: Annotated[str, Word("command")] = "") -> Reply | None:
    if not name:
        return Reply(REGISTRY.help_text())
    cmd = REGISTRY.get(name.lstrip("/"))
    if cmd is None:
        raise UnknownCommand(f"Unknown command /{name.lstrip('/')}. Send /help for the list.")
    return Reply(cmd.line())


@command("clear", help="Delete every message of this chat (settings stay).")
async def clear(ctx: CommandContext) -> Reply | None:
    removed = await ctx.clear()
    user, gpt, system = (removed.get(r, 0) for r in ("user", "assistant", "system"))
    return Reply(f"## Total Token Removed: **{user + gpt + system}**\n"
                 f"- User: {user}\n- AI: {gpt}\n- System: {system}")


@command("reset", help="Delete every message and restore the default model and settings.")
async def reset(ctx: CommandContext) -> Reply | None:
    await ctx.reset()
    return Reply("Context reset success")


@command("system", help="Add a system message.")
async def system(ctx: CommandContext, text: Annotated[str, Rest()]) -> Reply | None:
    await ctx.add_system(text)
    return Reply(f"Added system message: {text}")


async def _set(ctx: CommandContext, name: Sampling, label: str, value: float) -> Reply:
    previous = await ctx.set_sampling(name, value)
    return Reply(f"I've changed {label} from {previous:g} to {value:g}.")


@command("settemperature", aliases=("temp",), help="Set the sampling temperature.")
async def settemperature(
    ctx: CommandContext, value: Annotated[float, Number(0, 2, "temperature")]
) -> Reply | None:
    return await _set(ctx, "temperature", "temperature", value)


@command("settopp", aliases=("topp",), help="Set top_p (nucleus sampling).")
async def settopp(
    ctx: CommandContext, value: Annotated[float, Number(0, 1, "top_p")]
) -> Reply | None:
    return await _set(ctx, "top_p", "top_p", value)


@command("setpresencepenalty", help="Set the presence penalty.")
async def setpresencepenalty(
    ctx: CommandContext, value: Annotated[float, Number(-2, 2, "presence penalty")]
) -> Reply | None:
    return await _set(ctx, "presence_penalty", "presence penalty", value)


@command("setfrequencypenalty", help="Set the frequency penalty.")
async def setfrequencypenalty(
    ctx: CommandContext, value: Annotated[float, Number(-2, 2, "frequency penalty")]
) -> Reply | None:
    return await _set(ctx, "frequency_penalty", "frequency penalty", value)


@command("poplastmessage", aliases=("pop",), help="Remove the newest message of a role.")
async def poplastmessage(ctx: CommandContext, role: Annotated[Role, ROLES]) -> Reply | None:
    content = await ctx.pop_last(role)
    label = _ROLE_LABEL[role]
    if content is None:
        return Reply(f"There is no {label} message to pop.")
    return Reply(f"Pop {label} message: {content}")


@command("retry", help="Answer the last message again.")
async def retry(ctx: CommandContext) -> Reply | None:
    return None if await ctx.retry() else Reply("There is no message to retry.")


@command("ping", help="Check the connection.")
async def ping(ctx: CommandContext) -> Reply | None:
    return Reply("pong")


@command("codex", help="Act as CODEX, a coding assistant answering with code.")
async def codex(ctx: CommandContext) -> Reply | None:
    await ctx.set_system(CODEX_PROMPT)
    return Reply("CODEX mode ON")


@command("redx", help="Act as REDX: reduce your messages as much as possible.")
async def redx(ctx: CommandContext) -> Reply | None:
    await ctx.set_system(REDX_PROMPT)
    return Reply("REDX mode ON")


@command("echo", help="Send the text back.")
async def echo(ctx: CommandContext, text: Annotated[str, Rest()]) -> Reply | None:
    return Reply(text)


@command("codeblock", help="Send the text back as a fenced code block.")
async def codeblock(
    ctx: CommandContext,
    lang: Annotated[str, Word("lang", r"[A-Za-z0-9_+#.-]{1,32}")],
    text: Annotated[str, Rest("code")],
) -> Reply | None:
    return Reply(f"```{lang.lower()}\n{text}\n```")


@command("changemodel", aliases=("model",), help="Switch this chat to another model.")
async def changemodel(ctx: CommandContext, name: Annotated[str, Word("model")]) -> Reply | None:
    known = sorted(ctx.known_models)
    if name not in known:
        raise BadArgument(f"Unknown model {name!r}; choose one of: {', '.join(known)}. "
                          "Usage: /changemodel <model>")
    await ctx.change_model(name)
    return Reply(f"Model changed to {name}.")


@command("info", help="Show the model, its settings, token counts and limits.")
async def info(ctx: CommandContext) -> Reply | None:
    i = await ctx.info()
    lines = [
        f"- model: {i.model}",
        (f"- temperature: {i.temperature:g}, top_p: {i.top_p:g}, presence penalty: "
         f"{i.presence_penalty:g}, frequency penalty: {i.frequency_penalty:g}"),
        f"- messages: {i.messages} ({i.history_tokens} tokens, of which system {i.system_tokens})",
        (f"- context window: {i.context_window}, answer reserve: {i.max_answer_tokens}, "
         f"prompt limit: {i.prompt_limit}, max message: {i.max_message_tokens} tokens"),
    ]
    return Reply("\n".join(lines))


@command("stop", help="Stop the answer being generated (the text so far is kept).",
         immediate=True)
async def stop(ctx: CommandContext) -> Reply | None:
    return None if await ctx.stop() else Reply("Nothing to stop.")


@command("deletechatroom", help="Delete this chat room and its messages.")
async def deletechatroom(ctx: CommandContext) -> Reply | None:
    await ctx.delete_room()
    return None
