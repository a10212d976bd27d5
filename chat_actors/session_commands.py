"""The session actor's side of the slash commands: ``CommandContext`` for one (session, socket).

``chat_actors.commands`` parses and validates; this adapter carries out the effects on the
session's state, always durably first (a failed write changes nothing in memory).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from chat_actors import commands, frames
from chat_actors.command_registry import Role, Sampling, SessionInfo
from core.errors import CommandError

if TYPE_CHECKING:
    from chat_actors.session import SessionActor


class SessionCommands:
    """Implements ``commands.CommandContext`` over a session actor."""

    def __init__(self, session: SessionActor, outbox_id: int) -> None:
        self.session = session
        self.outbox_id = outbox_id

    @property
    def known_models(self) -> Collection[str]:
        return self.session.settings.models.keys()

    async def clear(self) -> Mapping[Role, int]:
        removed: dict[Role, int] = {"user": 0, "assistant": 0, "system": 0}
        for m in self.session.messages:
            removed[m.role] += m.tokens
        await self.session.clear()
        return removed

    async def reset(self) -> None:
        await self.session.clear(reset_profile=True)

    async def add_system(self, text: str) -> None:
        await self.session.add_system(text)

    async def set_system(self, text: str) -> None:
        await self.session.add_system(text, replace_all=True)

    async def set_sampling(self, name: Sampling, value: float) -> float:
        previous = float(getattr(self.session.profile, name))
        changes: dict[str, Any] = {name: value}
        await self.session.set_profile(replace(self.session.profile, **changes))
        return previous

    async def pop_last(self, role: Role) -> str | None:
        """Turns stay paired: popping a user message takes the answer after it along; an
        answer is popped only when it is the newest turn (never one a later question follows)."""
        turns = [m for m in self.session.messages if m.role != "system"]
        if role == "system":
            doomed = [m for m in self.session.messages if m.role == "system"][-1:]
        elif role == "assistant":
            doomed = turns[-1:] if turns and turns[-1].role == "assistant" else []
        else:
            users = [i for i, m in enumerate(turns) if m.role == "user"]
            doomed = turns[users[-1]:] if users else []
        if not doomed:
            return None
        await self.session.remove_messages(doomed)
        return doomed[0].content

    async def retry(self) -> bool:
        return await self.session.retry()

    async def change_model(self, name: str) -> None:
        await self.session.set_profile(replace(self.session.profile, model=name))

    async def info(self) -> SessionInfo:
        s, p, budget = self.session, self.session.profile, self.session.budget
        return SessionInfo(
            model=p.model, temperature=p.temperature, top_p=p.top_p,
            presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
            messages=len(s.messages), history_tokens=sum(m.tokens for m in s.messages),
            system_tokens=sum(m.tokens for m in s.messages if m.role == "system"),
            context_window=budget.context_window, max_answer_tokens=budget.answer_reserve,
            max_message_tokens=budget.max_message_tokens, prompt_limit=budget.prompt_limit,
        )

    async def stop(self) -> bool:
        return await self.session.stop_generation()

    async def delete_room(self) -> None:
        await self.session.delete_room()


class CommandRunner:
    """What the session calls: parse + execute, errors become error frames on that socket."""

    def is_immediate(self, text: str) -> bool:
        return commands.is_immediate(text)

    async def run(self, session: SessionActor, outbox_id: int, text: str) -> None:
        room = session.key.room
        try:
            reply = await commands.execute(SessionCommands(session, outbox_id), text)
        except CommandError as exc:
            session.send(outbox_id, frames.error_frame(room, exc.code, str(exc)))
            return
        if reply is not None:
            session.send(outbox_id, frames.reply_frame(room, reply.text))
