"""Slash commands: one registry, one decorated function per command.

This module parses and validates; the session actor carries out the effects through the
``CommandContext`` protocol it implements. Adding a command is one function::

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

import inspect
import re
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import (
    Annotated,
    Literal,
    NamedTuple,
    Protocol,
    TypeVar,
    get_args,
    get_origin,
    get_type_hints,
)

from core.errors import BadArgument, UnknownCommand

Role = Literal["user", "system", "assistant"]
Sampling = Literal["temperature", "top_p", "presence_penalty", "frequency_penalty"]


@dataclass(frozen=True, slots=True)
class Reply:
    """Text to send back as one command-reply frame."""

    text: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What ``/info`` shows; filled in by the session actor."""

    model: str
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    messages: int
    history_tokens: int
    system_tokens: int
    context_window: int
    max_answer_tokens: int
    max_message_tokens: int
    prompt_limit: int


class CommandContext(Protocol):
    """The effects commands may ask of a session (implemented by the session actor)."""

    @property
    def known_models(self) -> Collection[str]: ...

    async def clear(self) -> Mapping[Role, int]:
        """Delete every message; return the tokens removed per role."""
        ...

    async def reset(self) -> None:
        """Delete every message and restore the default profile (model, sampling)."""
        ...

    async def add_system(self, text: str) -> None: ...

    async def set_system(self, text: str) -> None:
        """Replace all system messages with this one."""
        ...

    async def set_sampling(self, name: Sampling, value: float) -> float:
        """Set one sampling parameter; return its previous value."""
        ...

    async def pop_last(self, role: Role) -> str | None:
        """Remove the newest message of ``role``; its content, or None if there was none."""
        ...

    async def retry(self) -> bool:
        """Drop the last answer and answer the last user message again; False if none."""
        ...

    async def change_model(self, name: str) -> None: ...

    async def info(self) -> SessionInfo: ...

    async def stop(self) -> bool:
        """End the answer being generated, keeping its text; False if none was running."""
        ...

    async def delete_room(self) -> None: ...


# ---- argument specs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Word:
    """One whitespace-separated word, optionally matching ``pattern``."""

    placeholder: str = "word"
    pattern: str | None = None
    rest = False

    def convert(self, raw: str) -> object:
        if self.pattern is not None and not re.fullmatch(self.pattern, raw):
            raise ValueError(f"{raw!r} is not a valid {self.placeholder}")
        return raw


@dataclass(frozen=True, slots=True)
class Rest:
    """The rest of the line (spaces and newlines kept), not empty."""

    placeholder: str = "text"
    rest = True

    def convert(self, raw: str) -> object:
        return raw


@dataclass(frozen=True, slots=True)
class Number:
    """A finite number in ``[lo, hi]``."""

    lo: float
    hi: float
    what: str = "value"
    rest = False

    @property
    def placeholder(self) -> str:
        return f"{self.lo:g}..{self.hi:g}"

    def convert(self, raw: str) -> object:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not self.lo <= value <= self.hi:  # also refuses nan and inf
            raise ValueError(f"{self.what} must be a number from {self.lo:g} to {self.hi:g}")
        return value


@dataclass(frozen=True, slots=True)
class Choice:
    """One of a fixed set of words (case-insensitive), mapped to the value passed on."""

    choices: Mapping[str, object]
    what: str = "value"
    shown: tuple[str, ...] = ()
    rest = False

    @property
    def placeholder(self) -> str:
        return "|".join(self.shown or tuple(self.choices))

    def convert(self, raw: str) -> object:
        try:
            return self.choices[raw.lower()]
        except KeyError:
            raise ValueError(f"{self.what} must be one of {self.placeholder}") from None


ArgSpec = Word | Rest | Number | Choice


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    spec: ArgSpec
    default: object = inspect.Parameter.empty

    @property
    def optional(self) -> bool:
        return self.default is not inspect.Parameter.empty


# ---- commands and the registry -----------------------------------------------------------

Handler = Callable[..., Awaitable[Reply | None]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    help: str
    usage: str
    params: tuple[Param, ...]
    run: Handler = field(repr=False)
    #: Handled at once, never queued behind the answer being generated (``/stop``).
    immediate: bool = False

    def bind(self, text: str) -> tuple[object, ...]:
        """Convert the text after the command name into the handler's arguments."""
        values: list[object] = []
        remaining = text.strip()
        for param in self.params:
            if param.spec.rest:
                raw, remaining = remaining, ""
            else:
                parts = remaining.split(None, 1)
                raw = parts[0] if parts else ""
                remaining = parts[1] if len(parts) > 1 else ""
            if not raw:
                if param.optional:
                    values.append(param.default)
                    continue
                raise BadArgument(f"Missing {param.spec.placeholder}. Usage: {self.usage}")
            try:
                values.append(param.spec.convert(raw))
            except ValueError as exc:
                reason = str(exc)
                raise BadArgument(f"{reason[:1].upper()}{reason[1:]}. Usage: {self.usage}") from None
        if remaining.strip():
            raise BadArgument(f"Too many arguments. Usage: {self.usage}")
        return tuple(values)

    def line(self) -> str:
        aliases = f" (alias {', '.join('/' + a for a in self.aliases)})" if self.aliases else ""
        return f"{self.usage}{aliases} — {self.help}"


class Parsed(NamedTuple):
    command: Command
    args: tuple[object, ...]


_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _spec_for(annotation: object) -> ArgSpec:
    if get_origin(annotation) is Annotated:
        specs = [m for m in annotation.__metadata__ if isinstance(m, ArgSpec)]  # type: ignore[attr-defined]
        if len(specs) == 1:
            return specs[0]
        annotation = get_args(annotation)[0]
    if annotation is str:
        return Word()
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        return Choice({str(v).lower(): v for v in values})
    raise TypeError(f"unsupported command parameter annotation {annotation!r}")


def _params_of(fn: Handler) -> tuple[Param, ...]:
    hints = get_type_hints(fn, include_extras=True)
    params = list(inspect.signature(fn).parameters.values())[1:]  # skip ctx
    out = tuple(Param(p.name, _spec_for(hints[p.name]), p.default) for p in params)
    if any(p.spec.rest for p in out[:-1]):
        raise TypeError(f"{fn.__name__}: only the last parameter may take the rest of the line")
    return out


def _usage(name: str, params: tuple[Param, ...]) -> str:
    parts = [f"[{p.spec.placeholder}]" if p.optional else f"<{p.spec.placeholder}>" for p in params]
    return " ".join([f"/{name}", *parts])


class Registry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}  # canonical names, in registration order
        self._lookup: dict[str, Command] = {}  # names and aliases

    def command(
        self,
        name: str,
        *,
        help: str,
        aliases: tuple[str, ...] = (),
        usage: str | None = None,
        immediate: bool = False,
    ) -> Callable[[H], H]:
        """Register the decorated ``async def f(ctx, ...)``; returns ``f`` unchanged."""

        def register(fn: H) -> H:
            params = _params_of(fn)
            cmd = Command(name, aliases, help, usage or _usage(name, params), params, fn,
                          immediate)
            keys = (name, *aliases)
            if len(set(keys)) != len(keys):
                raise ValueError(f"/{name} lists the same name twice")
            for key in keys:
                if not _NAME.fullmatch(key):
                    raise ValueError(f"invalid command name {key!r}")
                if key in self._lookup:
                    raise ValueError(f"command name /{key} is already registered")
            self._commands[name] = cmd
            for key in (name, *aliases):
                self._lookup[key] = cmd
            return fn

        return register

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def get(self, name: str) -> Command | None:
        return self._lookup.get(name.lower())

    def parse(self, text: str) -> Parsed:
        match = re.match(r"/(\S*)(.*)", text.strip(), re.DOTALL)
        name = match.group(1) if match else text.strip()
        cmd = self.get(name)
        if cmd is None or match is None:
            shown = f"/{name}" if name else "/"
            raise UnknownCommand(f"Unknown command {shown}. Send /help for the list of commands.")
        return Parsed(cmd, cmd.bind(match.group(2)))

    async def execute(self, ctx: CommandContext, text: str) -> Reply | None:
        command, args = self.parse(text)
        return await command.run(ctx, *args)

    def help_text(self) -> str:
        return "\n".join(["Commands:", *(cmd.line() for cmd in self)])


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
