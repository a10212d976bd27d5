"""The session actor: one per live chat session (user, room).

It owns the session's profile and history (mirrored durably through ``ContextStore``), the
generation in progress, the FIFO of user messages waiting for it, and the attached sockets'
outboxes. Sockets, commands and generations reach it only through its mailbox.

Reads top to bottom: the messages it accepts, its state, its loop (``handle``), its helpers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from chat_actors import frames
from chat_actors.actor import Actor, Request
from chat_actors.budget import Budget, build_prompt, check_message, trim_history
from chat_actors.outbox import Outbox
from chat_actors.session_deps import SessionDeps
from chat_actors.tokens import count_tokens_async
from chat_actors.upstream import ChatRequest
from core.errors import (
    BudgetError,
    ChatServerError,
    ContextOverflow,
    StorageError,
    UpstreamContentFilter,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from storage.context_store import Profile, Role, StoredMessage

log = logging.getLogger("chat.session")


# ---------------------------------------------------------------- messages it accepts
@dataclass(frozen=True)
class SessionKey:
    user_id: int
    room: str


@dataclass(frozen=True)
class Attach(Request[None]):
    """A socket joins: it gets the init frame, then the answer in progress (resume)."""

    outbox: Outbox


@dataclass(frozen=True)
class Detach:
    outbox_id: int


@dataclass(frozen=True)
class UserInput:
    """A chat message or a slash command from one socket."""

    outbox_id: int
    text: str
    translate: bool = False


@dataclass(frozen=True)
class GenerationEnded:
    """Cast by the generation task to its own actor when the upstream stream is over."""

    gen_id: int
    error: BaseException | None


@dataclass(frozen=True)
class IdleTick:
    pass


@dataclass(frozen=True)
class ResumeQueue:
    """Answer the queued messages (after /stop ended an answer)."""


@dataclass(frozen=True)
class CrashForTest:
    """Test-only fault hook: the registry refuses it unless test hooks are enabled."""


@dataclass(frozen=True)
class Snapshot(Request["SessionSnapshot"]):
    pass


SessionMsg = (Attach | Detach | UserInput | GenerationEnded | IdleTick | ResumeQueue | CrashForTest
              | Snapshot)


@dataclass(frozen=True)
class SessionSnapshot:
    """What tests and ``/info`` see of a session."""

    profile: Profile
    messages: list[StoredMessage]
    generating: bool
    queued: int
    sockets: int


# ---------------------------------------------------------------- state
@dataclass
class SessionSlot:
    """What survives a crash of the actor: the attached outboxes (sockets stay connected), the
    user messages waiting for an answer, and the answer in progress (its text is stored, marked
    partial, by the next incarnation)."""

    key: SessionKey
    outboxes: dict[int, Outbox] = field(default_factory=dict)
    pending: deque[UserInput] = field(default_factory=deque)
    generation: Generation | None = None
    generations_started: int = 0  # ids stay unique across incarnations (the mailbox does too)
    incarnations: int = 0


@dataclass
class Generation:
    id: int
    answering: StoredMessage
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    text: list[str] = field(default_factory=list)
    started_at: float = 0.0

    @property
    def so_far(self) -> str:
        return "".join(self.text)


def utc_stamp() -> int:
    return int(datetime.now(UTC).strftime("%Y%m%d%H%M%S"))


class SessionActor(Actor[SessionMsg]):
    def __init__(self, slot: SessionSlot, deps: SessionDeps) -> None:
        self.slot = slot
        self.key = slot.key
        self.deps = deps
        self.settings = deps.settings
        self.profile = Profile(model=deps.settings.default_model)
        self.messages: list[StoredMessage] = []
        self.next_id = 0
        self.pending = slot.pending
        self._last_activity = 0.0

    # ------------------------------------------------------------ lifecycle
    async def on_start(self) -> None:
        self.slot.incarnations += 1
        loaded = await self.deps.store.load(self.key.user_id, self.key.room)
        for repair in loaded.repairs:
            log.warning("session %s/%s repaired: %s", self.key.user_id, self.key.room, repair)
        self.profile, self.messages, self.next_id = (
            loaded.profile, loaded.messages, loaded.next_id)
        self._touch()
        if self.slot.incarnations > 1:
            await self._recover()
        self.nursery.start_soon(self._idle_watch)

    async def on_stop(self) -> None:
        """A graceful stop (idle, room deleted, server shutdown) keeps an answer in progress."""
        gen, self.generation = self.generation, None
        if gen is not None:
            gen.cancel_scope.cancel()
            self._broadcast(frames.error_frame(
                self.key.room, "session_stopped", "The chat session stopped; the answer was cut "
                "short and its text kept."))
            if gen.text:
                try:
                    await self._store_answer(gen.so_far, partial=True)
                except StorageError as exc:
                    log.error("session %s/%s lost a stopped answer: %s",
                              self.key.user_id, self.key.room, exc)

    async def _recover(self) -> None:
        """After a crash: keep the interrupted answer's text, tell the sockets, go on."""
        interrupted, self.generation = self.generation, None
        if interrupted is not None and interrupted.text:
            try:
                await self._store_answer(interrupted.so_far, partial=True)
            except StorageError as exc:
                log.error("session %s/%s lost an interrupted answer: %s",
                          self.key.user_id, self.key.room, exc)
        self._broadcast(frames.error_frame(
            self.key.room, "session_restarted",
            "The chat session hit an internal error and was restarted; your history is kept.",
        ))
        if self.pending:
            self.nursery.start_soon(self.ref.cast, ResumeQueue())

    @property
    def generation(self) -> Generation | None:
        return self.slot.generation

    @generation.setter
    def generation(self, value: Generation | None) -> None:
        self.slot.generation = value

    # ------------------------------------------------------------ the loop
    async def handle(self, msg: SessionMsg) -> object:
        if isinstance(msg, (Attach, Detach, UserInput)):
            self._touch()
        match msg:
            case Attach(outbox=outbox):
                self.slot.outboxes[outbox.id] = outbox
                outbox.push(frames.init_frame(self.key.room, self.visible_history()))
                if self.generation is not None and self.generation.text:
                    outbox.push(frames.delta_frame(self.key.room, self.generation.so_far))
                return None
            case Detach(outbox_id=outbox_id):
                self.slot.outboxes.pop(outbox_id, None)
            case UserInput():
                await self._on_input(msg)
            case GenerationEnded(gen_id=gen_id, error=error):
                if self.generation is not None and self.generation.id == gen_id:
                    await self._finish_generation(error)
            case ResumeQueue():
                await self._next_pending()
            case IdleTick():
                if self._idle_for() >= self.settings.session_idle_seconds and self._is_idle():
                    log.info("session %s/%s idle: stopping", self.key.user_id, self.key.room)
                    self.stop()
            case CrashForTest():
                raise RuntimeError("crash requested by a test")
            case Snapshot():
                return SessionSnapshot(
                    profile=self.profile, messages=list(self.messages),
                    generating=self.generation is not None, queued=len(self.pending),
                    sockets=len(self.slot.outboxes),
                )
        return None

    # ------------------------------------------------------------ input
    async def _on_input(self, msg: UserInput) -> None:
        text = msg.text
        is_command = text.startswith("/")
        if not is_command:
            self._echo(msg.outbox_id, text)
        busy = self.generation is not None or bool(self.pending)
        if busy and not (is_command and self.deps.commands.is_immediate(text)):
            if len(self.pending) >= self.settings.session_queue_limit:
                self._send(msg.outbox_id, frames.error_frame(
                    self.key.room, "busy",
                    "Too many messages are waiting for the current answer; try again shortly.",
                    f"queue limit {self.settings.session_queue_limit}"))
                return
            self.pending.append(msg)
            return
        await self._process(msg)

    async def _process(self, msg: UserInput) -> None:
        try:
            if msg.text.startswith("/"):
                await self.deps.commands.run(self, msg.outbox_id, msg.text)
            else:
                await self._ask(msg)
        except BudgetError as exc:
            self._send(msg.outbox_id, frames.error_frame(self.key.room, exc.code, str(exc)))
        except StorageError as exc:
            log.error("session %s/%s storage error: %s", self.key.user_id, self.key.room, exc)
            self._send(msg.outbox_id, frames.error_frame(
                self.key.room, "storage_unavailable",
                "The chat history could not be saved; please retry.", type(exc).__name__))

    async def _ask(self, msg: UserInput) -> None:
        """Store the user message and start answering it."""
        text = msg.text
        if msg.translate:
            text = await self.deps.translate(self, msg.outbox_id, text)
        tokens = await count_tokens_async(text, "user", self.profile.model)
        check_message(self.messages, tokens, self.budget)
        user_msg = self._new_message("user", text, tokens)
        await self._store(append=[user_msg])
        self.start_generation(user_msg)

    def start_generation(self, answering: StoredMessage) -> None:
        self.slot.generations_started += 1
        gen = Generation(id=self.slot.generations_started, answering=answering,
                         started_at=trio.current_time())
        self.generation = gen
        self.nursery.start_soon(self._generate, gen)

    async def _next_pending(self) -> None:
        while self.generation is None and self.pending:
            await self._process(self.pending.popleft())

    # ------------------------------------------------------------ generation
    async def _generate(self, gen: Generation) -> None:
        """Child task: stream the answer; deltas go straight to the outboxes."""
        error: BaseException | None = None
        history = [m for m in self.messages if m.id != gen.answering.id]
        prompt = build_prompt(history, gen.answering, self.budget)
        request = ChatRequest(
            model=self.profile.model,
            messages=[{"role": m.role, "content": m.content} for m in prompt.messages],
            temperature=self.profile.temperature,
            top_p=self.profile.top_p,
            presence_penalty=self.profile.presence_penalty,
            frequency_penalty=self.profile.frequency_penalty,
            max_tokens=self.budget.answer_reserve,
            user=self.deps.opaque_user_id(self.key.user_id),
        )

        async def on_delta(delta: str) -> None:
            if delta:
                gen.text.append(delta)
                self._broadcast(frames.delta_frame(self.key.room, delta))

        with gen.cancel_scope:
            try:
                await self.deps.upstream.stream(request, on_delta)
            except UpstreamError as exc:
                error = exc
        if gen.cancel_scope.cancelled_caught:
            return  # stopped: the actor already ended this answer
        await self.ref.cast(GenerationEnded(gen.id, error))

    async def _finish_generation(self, error: BaseException | None) -> None:
        gen = self.generation
        assert gen is not None
        self.generation = None
        text = gen.so_far
        try:
            if isinstance(error, UpstreamContentFilter):
                self._broadcast(frames.error_frame(
                    self.key.room, "content_filter",
                    "The model's content filter stopped this answer; nothing was stored."))
            elif error is not None:
                if text:
                    await self._store_answer(text, partial=True)
                code, human = _upstream_error(error)
                self._broadcast(frames.error_frame(self.key.room, code, human, str(error)))
            else:
                await self._store_answer(text, partial=False)
                self._broadcast(frames.terminator_frame(self.key.room))
        except StorageError as exc:
            log.error("session %s/%s could not store an answer: %s",
                      self.key.user_id, self.key.room, exc)
            self._broadcast(frames.error_frame(
                self.key.room, "storage_unavailable",
                "The answer could not be saved.", type(exc).__name__))
        await self._next_pending()

    async def stop_generation(self) -> bool:
        """/stop: end the answer at once, keep its text; False when nothing was running."""
        gen = self.generation
        if gen is None:
            return False
        gen.cancel_scope.cancel()  # the upstream response is closed as the task unwinds
        self.generation = None
        text = gen.so_far
        # The terminator goes out first: /stop is answered at once, storing follows.
        self._broadcast(frames.terminator_frame(self.key.room))
        if text:
            try:
                await self._store_answer(text, partial=True)
            except StorageError as exc:
                log.error("session %s/%s could not store a stopped answer: %s",
                          self.key.user_id, self.key.room, exc)
        # Queued messages wait for the message loop, not for this handler.
        self.nursery.start_soon(self.ref.cast, ResumeQueue())
        return True

    async def delete_room(self) -> None:
        """/deletechatroom: the stored context and the room go; the session starts empty."""
        if self.generation is not None:
            await self.stop_generation()
        await self.deps.store.delete(self.key.user_id, self.key.room)
        await self.deps.rooms.deleted(self.key.user_id, self.key.room)
        self.messages = []
        self.pending.clear()
        self.profile = Profile(model=self.settings.default_model)
        self._broadcast(frames.reply_frame(self.key.room, "This chat room was deleted."))

    async def _store_answer(self, text: str, *, partial: bool) -> None:
        """Append the answer and trim the history to budget in one storage transaction."""
        tokens = await count_tokens_async(text, "assistant", self.profile.model)
        answer = self._new_message("assistant", text, tokens, partial=partial)
        after = [*self.messages, answer]
        dropped = [after[i] for i in trim_history(after, self.budget).drop]
        await self._store(append=[answer], remove=dropped)

    # ------------------------------------------------------------ context helpers
    @property
    def budget(self) -> Budget:
        return Budget.for_model(self.settings, self.profile.model)

    def _new_message(self, role: Role, content: str, tokens: int, *,
                     partial: bool = False) -> StoredMessage:
        self.next_id += 1
        return StoredMessage(id=self.next_id, role=role, content=content, tokens=tokens,
                             ts=utc_stamp(), partial=partial)

    async def _store(self, *, append: Sequence[StoredMessage] = (),
                     remove: Sequence[StoredMessage] = ()) -> None:
        """Apply a change durably, then in memory (so a failed write changes nothing)."""
        removed_ids = {m.id for m in remove}
        new_messages = [m for m in self.messages if m.id not in removed_ids] + list(append)
        await self.deps.store.change(
            self.key.user_id, self.key.room, append=append, remove=remove,
            next_id=self.next_id, count=len(new_messages))
        self.messages = new_messages

    async def remove_messages(self, doomed: list[StoredMessage]) -> None:
        await self._store(remove=doomed)

    async def add_system(self, text: str) -> StoredMessage:
        tokens = await count_tokens_async(text, "system", self.profile.model)
        msg = self._new_message("system", text, tokens)
        total = sum(m.tokens for m in self.messages if m.role == "system") + tokens
        if total > self.budget.prompt_limit:
            raise ContextOverflow("The system messages would not fit in the model's context window.",
                                  tokens=total, limit=self.budget.prompt_limit)
        await self._store(append=[msg])
        return msg

    async def clear(self, *, keep_system: bool) -> None:
        keep = [m for m in self.messages if keep_system and m.role == "system"]
        await self.deps.store.clear(self.key.user_id, self.key.room, keep=keep,
                                    next_id=self.next_id)
        self.messages = keep

    async def set_profile(self, profile: Profile) -> None:
        await self.deps.store.save_profile(self.key.user_id, self.key.room, profile)
        self.profile = profile

    def visible_history(self) -> list[dict[str, object]]:
        return [
            {"content": m.content, "tokens": m.tokens, "is_user": m.role == "user",
             "timestamp": m.ts, **({"partial": True} if m.partial else {})}
            for m in self.messages if m.role != "system"
        ]

    # ------------------------------------------------------------ outboxes
    def send(self, outbox_id: int, frame: frames.Frame) -> None:
        self._send(outbox_id, frame)

    def _send(self, outbox_id: int, frame: frames.Frame) -> None:
        outbox = self.slot.outboxes.get(outbox_id)
        if outbox is not None and not outbox.push(frame):
            self._drop(outbox)

    def _broadcast(self, frame: frames.Frame) -> None:
        for outbox in list(self.slot.outboxes.values()):
            if not outbox.push(frame):
                self._drop(outbox)

    def _echo(self, from_id: int, text: str) -> None:
        frame = frames.echo_frame(self.key.room, text)
        for outbox in list(self.slot.outboxes.values()):
            if outbox.id != from_id and not outbox.push(frame):
                self._drop(outbox)

    def _drop(self, outbox: Outbox) -> None:
        log.warning("session %s/%s dropped a socket: %s", self.key.user_id, self.key.room,
                    outbox.close_reason)
        self.slot.outboxes.pop(outbox.id, None)

    # ------------------------------------------------------------ idleness
    def _touch(self) -> None:
        self._last_activity = trio.current_time()

    def _idle_for(self) -> float:
        return trio.current_time() - self._last_activity

    def _is_idle(self) -> bool:
        return not self.slot.outboxes and self.generation is None and not self.pending

    async def _idle_watch(self) -> None:
        idle = self.settings.session_idle_seconds
        while True:
            await trio.sleep(max(idle - self._idle_for(), 0) + 0.001)
            if self._idle_for() >= idle and self._is_idle():
                await self.ref.cast(IdleTick())
                await trio.sleep(idle)


def _upstream_error(error: BaseException) -> tuple[str, str]:
    if isinstance(error, UpstreamTimeout):
        return "upstream_timeout", "The model took too long to answer; the answer was cut short."
    if isinstance(error, UpstreamRateLimited):
        return "rate_limited", "The model is rate limited right now; please retry in a moment."
    return "upstream_error", "The model's server failed; the answer was cut short."


SessionFactory = Callable[[SessionSlot], SessionActor]
__all__ = [
    "Attach", "ChatServerError", "CrashForTest", "Detach", "GenerationEnded", "IdleTick",
    "SessionActor", "SessionFactory", "SessionKey", "SessionMsg", "SessionSlot",
    "SessionSnapshot", "Snapshot", "UserInput",
]
