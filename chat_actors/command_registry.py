"""The slash-command machinery: typed parameters, commands, the registry, the context protocol.

``chat_actors.commands`` holds the command set built with it. Adding a command is one decorated
function there; this module is what parses ``/name args`` against a function's annotations
(``Word``, ``Rest``, ``Number``, ``Choice``), generates its usage line, and says what a session
must provide (``CommandContext``).
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

