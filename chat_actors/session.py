"""The session actor: one per live chat session (user, room).

It owns the session's profile and history (mirrored durably through ``ContextStore``), the
generation in progress, the FIFO of user messages waiting for it, and the attached sockets'
outboxes. Sockets, commands and generations reach it only through its mailbox; the generation
task streams deltas straight into the outboxes and casts ``GenerationEnded`` back when done.

Reads top to bottom: the messages it accepts, its state, its loop (``handle``), its helpers.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import trio

from chat_actors import chat_metrics, frames
from chat_actors.actor import Actor, Request
from chat_actors.budget import Budget, build_prompt, check_message, trim_history
from chat_actors.chat_limits import AnswerCount
from chat_actors.moves import MoveSignal
from chat_actors.outbox import Outbox
from chat_actors.session_deps import SessionDeps
from chat_actors.tokens import count_tokens_async
from chat_actors.upstream import ChatRequest
from core import metrics
from core.errors import (
    BudgetError,
    ChatServerError,
    ContextOverflow,
    LimitError,
    SessionMoved,
    SessionOwnedElsewhere,
    StorageError,
    StorageTimeout,
    StorageUnavailable,
    UpstreamContentFilter,
    UpstreamError,
)
from storage.context_store import (
    AnswerInProgress,
    AnswerUsage,
    Fence,
    Profile,
    Role,
    StoredMessage,
)
from storage.session_inbox import InboxEntry

if TYPE_CHECKING:
    from chat_actors.cluster import Cluster

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
class Detach(Request[None]):
    """A socket leaves; once answered, the session pushes nothing more into its outbox."""

    outbox_id: int


@dataclass(frozen=True)
class UserInput:
    """A chat message or a slash command from one socket."""

    outbox_id: int
    text: str
    #: The API key its socket authenticated with; None for a ticket socket (the chat page).
    key_id: int | None = None
    #: Its entry in the session's inbox (``storage.session_inbox``), '' if it has none: it
    #: leaves the inbox once handled.
    entry: str = ""


@dataclass(frozen=True)
class GenerationEnded:
    """Cast by the generation task to its own actor when the upstream stream is over."""

    gen_id: int
    error: ChatServerError | None


@dataclass(frozen=True)
class IdleTick:
    pass


@dataclass(frozen=True)
class ResumeQueue:
    """Answer the queued messages (after /stop ended an answer, or after a restart)."""


@dataclass(frozen=True)
class FlushUnsaved:
    """Try again to write what Redis could not take (cast by the session's own retry timer)."""


@dataclass(frozen=True)
class InboxPoke:
    """Inputs are waiting in the session's inbox (sent by sockets of other processes)."""


@dataclass(frozen=True)
class LeaseLost:
    """Another process owns the session now: stop at once, writing nothing."""


@dataclass(frozen=True)
class Drain:
    """The process is shutting down: finish the answer in progress (if any), then stop, so
    the session moves to another process; waiting inputs stay in the inbox for it."""


@dataclass(frozen=True)
class CrashForTest:
    """Test-only fault hook: the registry refuses it unless test hooks are enabled."""


@dataclass(frozen=True)
class Snapshot(Request["SessionSnapshot"]):
    pass


SessionMsg = (Attach | Detach | UserInput | GenerationEnded | IdleTick | ResumeQueue
              | FlushUnsaved | InboxPoke | LeaseLost | Drain | CrashForTest | Snapshot)


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
class Generation:
    id: int
    answering: StoredMessage
    #: Answers this one replaces once it is stored (``/retry``): until then they stay.
    replaces: list[StoredMessage] = field(default_factory=list)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    parts: list[str] = field(default_factory=list)
    #: The stream is over and GenerationEnded is on its way: /stop has nothing left to stop.
    finished: bool = False
    #: Its slot among the user's answers at once (``ChatLimits``), unique across processes.
    slot_id: str = field(default_factory=lambda: secrets.token_hex(8))
    #: Daily token budget: what it reserved, on which day, and its prompt's share.
    reserved: int = 0
    budget_day: str = ""
    prompt_tokens: int = 0
    #: Usage: the key of the input that asked for it (None: the chat page) and its model.
    key_id: int | None = None
    model: str = ""
    #: When it was asked for (``trio.current_time()``): its first delta and end are timed from it.
    started: float = field(default_factory=trio.current_time)
    #: How many of ``parts`` its mirror in Redis holds (``ContextStore.mirror_answer``).
    mirrored: int = 0

    def usage(self) -> AnswerUsage:
        """What its end settles (``SessionActor._settle``), also kept in its mirror."""
        return AnswerUsage(key_id=self.key_id, model=self.model,
                           prompt_tokens=self.prompt_tokens, reserved=self.reserved,
                           budget_day=self.budget_day)

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True)
class Unsaved:
    """The session's context while Redis could not take its changes: the session is the only
    writer, so its memory is the truth, and one whole rewrite (idempotent) makes Redis match."""

    profile: Profile
    messages: list[StoredMessage]
    next_id: int
    changes: int  # kept since the last write that Redis took


#: Changes a session keeps while Redis is unreachable; past it, new ones are refused.
UNSAVED_LIMIT = 32
#: Seconds between write attempts while changes are kept (doubling up to the last).
FLUSH_RETRY = (0.25, 0.5, 1.0, 2.0)
#: Seconds between writes of the answer in progress to its mirror in Redis: what a process
#: that takes over after the owner died stores as the partial answer lags by at most this.
MIRROR_EVERY = 0.25
#: Inputs left waiting in an inbox longer than this (no owner took them) are dropped unanswered.
INBOX_MAX_AGE_SECONDS = 600


@dataclass
class SessionSlot:
    """What survives a crash of the actor: the attached outboxes (sockets stay connected), the
    user messages waiting for an answer, the answer in progress (its text is stored, marked
    partial, by the next incarnation), and the changes Redis has not taken yet."""

    key: SessionKey
    outboxes: dict[int, Outbox] = field(default_factory=dict)
    pending: deque[UserInput] = field(default_factory=deque)
    generation: Generation | None = None
    generations_started: int = 0  # ids stay unique across incarnations (the mailbox does too)
    incarnations: int = 0
    last_activity: float = 0.0  # a socket attached, left or spoke (the idle sweeper reads it)
    unsaved: Unsaved | None = None
    #: This process and the other ones (leases, inboxes, remote sockets).
    cluster: Cluster | None = None
    #: The session's lease here: taken by the first incarnation, kept across restarts.
    fence: Fence | None = None
    #: The lease moved to another process: nothing more is written from here.
    lost: bool = False
    #: Set when the session stops here for good because it moved: local sockets attach again.
    moved: MoveSignal = field(default_factory=MoveSignal)
    #: The server is stopping: the session's queued inputs wait in its inbox for the next owner.
    draining: bool = False
    #: The last inbox entry read ('-': none yet).
    inbox_seen: str = "-"

    def looks_idle(self, now: float, idle_seconds: float) -> bool:
        """Worth an ``IdleTick``: the session itself makes the final decision."""
        return (now - self.last_activity >= idle_seconds and self.generation is None
                and not self.pending and self.unsaved is None
                and all(o.closed for o in self.outboxes.values()))


HUMAN_ERRORS = {
    "upstream_timeout": "The model took too long to answer; the answer was cut short.",
    "rate_limited": "The model is rate limited right now; please retry in a moment.",
    "upstream_error": "The model's server failed; the answer was cut short.",
    "content_filter": "The model's content filter stopped this answer; nothing was stored.",
    "storage_unavailable": "The chat history could not be saved; please retry.",
    "answer_not_saved": "The chat history is unavailable: this answer was not saved.",
}


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
        self._stopping = False
        self._input_key_id: int | None = None  # the key of the input being processed
        self._input_entry = ""  # its inbox entry, until a stored change takes it along
        self._flush_scheduled = False
        self._flush_attempts = 0

    @property
    def generation(self) -> Generation | None:
        return self.slot.generation

    @generation.setter
    def generation(self, value: Generation | None) -> None:
        self.slot.generation = value

    # ------------------------------------------------------------ lifecycle
    @property
    def cluster(self) -> Cluster:
        assert self.slot.cluster is not None
        return self.slot.cluster

    @property
    def fence(self) -> Fence | None:
        return self.slot.fence

    async def on_start(self) -> None:
        if self.slot.fence is None:  # the first incarnation takes the lease
            taken = await self.cluster.leases.acquire(self.key.user_id, self.key.room)
            if taken.fence is None:
                raise SessionOwnedElsewhere("the session is owned by another process",
                                            owner=taken.holder)
            self.slot.fence = taken.fence
        self.slot.incarnations += 1
        interrupted = None
        if self.slot.unsaved is not None:  # newer than Redis: go on from it, write it soon
            kept = self.slot.unsaved
            self.profile, self.messages, self.next_id = kept.profile, kept.messages, kept.next_id
            self._schedule_flush()
        else:
            loaded = await self.deps.store.load(self.key.user_id, self.key.room, self.fence)
            for repair in loaded.repairs:
                log.error("session %s/%s context repaired: %s", self.key.user_id,
                          self.key.room, repair)
            self.profile, self.messages, self.next_id = (
                loaded.profile, loaded.messages, loaded.next_id)
            interrupted = loaded.interrupted
        self._touch()
        if self.slot.incarnations > 1:
            await self._recover()
        elif interrupted is not None:
            await self._take_over_answer(interrupted)
        await self._read_inbox()

    async def _take_over_answer(self, answer: AnswerInProgress) -> None:
        """The previous owner died (or lost the session) while streaming this answer: its
        text so far, as mirrored, is stored as a partial answer; nothing else is redone."""
        if not answer.text or all(m.id != answer.answering for m in self.messages):
            await self.deps.store.drop_answer(self.key.user_id, self.key.room, self.fence)
            await self._settle(answer.gen, answer.usage, None)
            return
        log.warning("session %s/%s: storing the answer its previous owner left (%d chars)",
                    self.key.user_id, self.key.room, len(answer.text))
        tokens = await count_tokens_async(answer.text, "assistant", self.profile.model)
        replaced = [m for m in self.messages if m.id in set(answer.replaces)]
        await self._store_answer(answer.text, tokens, replaced, partial=True)
        await self._settle(answer.gen, answer.usage, tokens)

    async def _read_inbox(self, entries: list[InboxEntry] | None = None) -> None:
        """Take the inputs waiting in the inbox (``entries`` when just read), in its order
        (queued behind an answer, or handled now when the session is free)."""
        cluster = self.cluster
        if entries is None:
            entries = await cluster.inbox.read(self.key.user_id, self.key.room,
                                               self.slot.inbox_seen)
        oldest = time.time() * 1000 - INBOX_MAX_AGE_SECONDS * 1000
        stale: list[str] = []
        for entry in entries:
            self.slot.inbox_seen = entry.id
            if entry.at_ms < oldest:
                stale.append(entry.id)
                continue
            await self._on_input(self._input_of(entry))
        if stale:
            log.warning("session %s/%s: %d input(s) older than %d s dropped from its inbox",
                        self.key.user_id, self.key.room, len(stale), INBOX_MAX_AGE_SECONDS)
            await cluster.inbox.done(self.key.user_id, self.key.room, *stale)
        if len(entries) >= 100:  # a page: there may be more
            await self._read_inbox()

    def _input_of(self, entry: InboxEntry) -> UserInput:
        return UserInput(self.cluster.outbox_for(entry.node, entry.socket), entry.text,
                         entry.key_id, entry.id)

    async def _recover(self) -> None:
        """After a crash: keep the interrupted answer's text, tell the sockets, go on."""
        notice = frames.error_frame(
            self.key.room, "session_restarted",
            "The chat session hit an internal error and was restarted; your history is kept.")
        if self.generation is not None:
            await self._end_answer(notice)  # the notice ends the interrupted answer
        else:
            self._push(self._outboxes(), notice)
        if self.pending:
            self.nursery.start_soon(self.ref.cast, ResumeQueue())

    async def on_stop(self) -> None:
        """A graceful stop (idle, room deleted, shutdown) keeps an answer in progress; what
        Redis has not taken yet gets one last write. Waiting inputs stay in the inbox: the
        session's next start (here or on another process) answers them. A session that moved
        writes nothing: its sockets attach again, to the new owner."""
        self._stopping = True
        if self.slot.lost:
            self._moved_away()
            return
        try:
            await self._stop_here()
        except SessionMoved:
            self._moved_away()
            return
        if self.fence is not None:
            try:
                await self.cluster.leases.release(self.key.user_id, self.key.room, self.fence)
            except StorageError as exc:
                log.warning("session %s/%s: lease not released (it lapses): %s",
                            self.key.user_id, self.key.room, exc)
        if self.slot.draining:  # sockets of other processes follow the session to its next
            self._send_remote_sockets_on()  # owner; this process's own sockets are closed
            self.slot.moved.set()  # (1012), so their clients reconnect elsewhere

    def _moved_away(self) -> None:
        self.slot.lost = True
        gen, self.generation = self.generation, None
        if gen is not None:
            gen.cancel_scope.cancel()  # its text is in the mirror: the new owner stores it
        self.pending.clear()
        self._send_remote_sockets_on()
        self.slot.moved.set()  # and the local ones attach again

    def _send_remote_sockets_on(self) -> None:
        """Sockets of other processes (``RemoteOutbox``) attach again, to the next owner."""
        for outbox in self._outboxes():
            outbox.moved()

    async def _stop_here(self) -> None:
        await self._end_answer(frames.error_frame(
            self.key.room, "session_stopped",
            "The chat session stopped; the answer was cut short and its text kept."))
        self.pending.clear()  # they stay in the inbox
        if self.slot.unsaved is not None and not await self._flush_unsaved():
            lost = self.slot.unsaved.changes
            log.error("session %s/%s stopped with %d change(s) Redis never took: lost",
                      self.key.user_id, self.key.room, lost)
            self._push(self._outboxes(), frames.error_frame(
                self.key.room, "answer_not_saved",
                f"The chat session stopped while the chat history was unavailable; its last "
                f"{lost} change(s) were not saved."))

    # ------------------------------------------------------------ the loop
    async def handle(self, msg: SessionMsg) -> object:
        try:
            return await self._handle(msg)
        except SessionMoved:
            self._lose()
            return None

    def _lose(self) -> None:
        """The lease moved (a renewal found it, or Redis refused a write as stale)."""
        log.error("session %s/%s moved to another process: stopping here without writing",
                  self.key.user_id, self.key.room)
        self.slot.lost = True
        self.stop()

    async def _handle(self, msg: SessionMsg) -> object:
        if isinstance(msg, (Attach, Detach, UserInput)):
            self._touch()
        match msg:
            case Attach(outbox=outbox):
                if not outbox.closed:  # its socket may have gone while the call was queued
                    self.slot.outboxes[outbox.id] = outbox
                    outbox.push(frames.init_frame(self.key.room, self.visible_history()))
                    if self.generation is not None and self.generation.parts:
                        outbox.push(frames.delta_frame(self.key.room, self.generation.text))
            case Detach(outbox_id=outbox_id):
                self.slot.outboxes.pop(outbox_id, None)
            case UserInput():
                await self._on_input(msg)
            case GenerationEnded(gen_id=gen_id, error=error):
                if self.generation is not None and self.generation.id == gen_id:
                    await self._finish_generation(error)
            case ResumeQueue():
                await self._next_pending()
            case InboxPoke():
                await self._read_inbox()
            case LeaseLost():
                self._lose()
            case Drain():
                self.slot.draining = True
                if self.generation is None:
                    self.stop()
            case FlushUnsaved():
                self._flush_scheduled = False
                if not await self._flush_unsaved():
                    self._schedule_flush()
            case IdleTick():
                if self._is_idle():
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
        is_command = msg.text.startswith("/")
        busy = self.generation is not None or bool(self.pending)
        if busy and not (is_command and self.deps.commands.is_immediate(msg.text)):
            if len(self.pending) >= self.settings.session_queue_limit:
                self.send(msg.outbox_id, frames.error_frame(
                    self.key.room, "busy",
                    "Too many messages are waiting for the current answer; try again shortly.",
                    f"queue limit {self.settings.session_queue_limit}"))
                if msg.entry:
                    await self.cluster.inbox.done(self.key.user_id, self.key.room, msg.entry)
                return
            if not msg.entry:  # it waits in the inbox, where a next owner would find it
                # in the inbox's order, behind earlier arrivals
                await self._read_inbox(await self.cluster.inbox.add(
                    self.key.user_id, self.key.room, self.cluster.node, msg.outbox_id,
                    msg.text, msg.key_id, after=self.slot.inbox_seen))
                return
            self.pending.append(msg)
            return
        await self._process(msg)

    async def _process(self, msg: UserInput) -> None:
        self._input_key_id = msg.key_id
        self._input_entry = msg.entry
        try:
            await self._run_input(msg)
        finally:
            if self._input_entry and not self.slot.lost:  # not taken with a stored change
                entry, self._input_entry = self._input_entry, ""
                try:
                    await self.cluster.inbox.done(self.key.user_id, self.key.room, entry)
                except StorageError as exc:
                    log.warning("session %s/%s: inbox entry %s not removed: %s",
                                self.key.user_id, self.key.room, entry, exc)

    async def _run_input(self, msg: UserInput) -> None:
        try:
            if msg.text.startswith("/"):
                await self.deps.commands.run(self, msg.outbox_id, msg.text)
            else:
                await self._ask(msg)
        except (BudgetError, StorageError) as exc:
            if isinstance(exc, StorageError):
                log.error("session %s/%s storage error: %s", self.key.user_id, self.key.room,
                          exc)
            self.send(msg.outbox_id, frames.error_frame(
                self.key.room, exc.code, HUMAN_ERRORS.get(exc.code, str(exc)),
                type(exc).__name__))
        except LimitError as exc:
            self.send(msg.outbox_id, frames.error_frame(
                self.key.room, exc.code, str(exc), str(exc.retry_after)))

    async def _ask(self, msg: UserInput) -> None:
        """Count and check the user message, start answering it, and store it meanwhile: the
        upstream request does not wait for the storage round trip. If storing fails, the answer
        is cancelled and its sockets told (the error ends it); nothing else changed."""
        tokens = await count_tokens_async(msg.text, "user", self.profile.model)
        check_message(self.messages, tokens, self.budget)
        user_msg = self._new_message("user", msg.text, tokens)
        gen = await self._new_generation(user_msg)  # may refuse: nothing sent, nothing stored
        # The other sockets see the question before any frame of its answer.
        echo = frames.echo_frame(self.key.room, msg.text)
        self._push((o for o in self._outboxes() if o.id != msg.outbox_id), echo)
        self.start_generation(gen)
        try:
            await self._store(append=[user_msg])
        except StorageError as exc:
            log.error("session %s/%s storage error: %s", self.key.user_id, self.key.room, exc)
            if self.generation is not None and self.generation.answering is user_msg:
                # The error takes the terminator's place as the answer's last frame.
                await self._end_answer(self._error_frame(exc), store=False)
            else:
                self.send(msg.outbox_id, self._error_frame(exc))

    async def _new_generation(self, answering: StoredMessage,
                              replaces: Sequence[StoredMessage] = ()) -> Generation:
        """An answer to start, once it has a slot among the user's answers at once."""
        self.slot.generations_started += 1
        gen = Generation(id=self.slot.generations_started, answering=answering,
                         replaces=list(replaces), key_id=self._input_key_id,
                         model=self.profile.model)
        limits = self.deps.limits
        await limits.start_answer(self.key.user_id, gen.slot_id)
        prompt = build_prompt(self._context_for(answering), answering, self.budget)
        gen.prompt_tokens = prompt.tokens  # for the budget and the usage counts
        if limits.tokens.limit > 0:
            gen.reserved = prompt.tokens + self.budget.answer_reserve
            try:
                gen.budget_day = await limits.reserve_tokens(self.key.user_id, gen.reserved)
            except LimitError:
                await limits.end_answer(self.key.user_id, gen.slot_id)
                raise
        return gen

    def start_generation(self, gen: Generation) -> None:
        metrics.answer_started()
        self.generation = gen
        self.nursery.start_soon(self._generate, gen)

    async def _next_pending(self) -> None:
        if self.slot.draining and self.generation is None:
            self.stop()  # the next owner answers what waits (it stays in the inbox)
            return
        while self.generation is None and self.pending:
            await self._process(self.pending.popleft())

    # ------------------------------------------------------------ generation
    async def _generate(self, gen: Generation) -> None:
        """Child task: stream the answer; deltas go straight to the outboxes."""
        error: ChatServerError | None = None

        async def on_delta(delta: str) -> None:
            # A delta read from the network before /stop was acted on must not follow the
            # terminator: only the current, unstopped generation may push.
            if delta and self.generation is gen and not gen.cancel_scope.cancel_called:
                if not gen.parts:  # the one check per delta: nothing is counted per delta
                    metrics.first_delta(trio.current_time() - gen.started)
                gen.parts.append(delta)
                self._push(self._outboxes(), frames.delta_frame(self.key.room, delta))

        with gen.cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._mirror, gen)
                try:
                    request = self._request_for(gen)
                    await self.deps.upstream.stream(request, on_delta)
                except (UpstreamError, BudgetError) as exc:
                    error = exc
                except Exception as exc:  # a bug or an unmapped client error: never crash
                    log.exception("session %s/%s generation failed", self.key.user_id,
                                  self.key.room)
                    error = UpstreamError(f"unexpected {type(exc).__name__}")
                nursery.cancel_scope.cancel()  # the stream is over: so is its mirror
        if gen.cancel_scope.cancelled_caught:
            return  # stopped: the actor already ended this answer
        gen.finished = True
        await self.ref.cast(GenerationEnded(gen.id, error))

    async def _mirror(self, gen: Generation) -> None:
        """Every MIRROR_EVERY, what came of the answer since goes to its mirror in Redis (the
        one copy a process taking over after this one died can find). Runs inside the
        answer's cancel scope, so nothing is mirrored once the answer ends: a mirror write
        queued before the answer's own store runs before it (the Redis actor keeps order)."""
        answer = AnswerInProgress(gen=gen.slot_id, answering=gen.answering.id,
                                  replaces=[m.id for m in gen.replaces], text="",
                                  usage=gen.usage())
        while True:
            await trio.sleep(MIRROR_EVERY)
            if len(gen.parts) > gen.mirrored:
                upto = len(gen.parts)
                try:
                    await self.deps.store.mirror_answer(
                        self.key.user_id, self.key.room, answer,
                        "".join(gen.parts[gen.mirrored:upto]), self.fence)
                except SessionMoved:
                    await self.ref.cast(LeaseLost())
                    return
                except StorageError as exc:  # the answer goes on; the next write catches up
                    log.info("session %s/%s: answer not mirrored: %s", self.key.user_id,
                             self.key.room, exc)
                    continue
                gen.mirrored = upto

    def _context_for(self, answering: StoredMessage) -> list[StoredMessage]:
        """What a prompt may draw on: the turns before the message being answered, and every
        system message (one added later, e.g. before a /retry, still applies)."""
        index = next((i for i, m in enumerate(self.messages) if m.id == answering.id), None)
        if index is None:  # still being stored: everything so far came before it
            return list(self.messages)
        later_system = [m for m in self.messages[index + 1:] if m.role == "system"]
        return self.messages[:index] + later_system

    def _request_for(self, gen: Generation) -> ChatRequest:
        """The prompt for one answer, within the model's budget."""
        prompt = build_prompt(self._context_for(gen.answering), gen.answering, self.budget)
        spec, p = self.settings.model_spec(self.profile.model), self.profile
        sampling = not spec.reasoning
        return ChatRequest(
            model=p.model,
            messages=[{"role": m.role, "content": m.content} for m in prompt.messages],
            temperature=p.temperature if sampling else None,
            top_p=p.top_p if sampling else None,
            presence_penalty=p.presence_penalty if sampling else None,
            frequency_penalty=p.frequency_penalty if sampling else None,
            max_tokens=self.budget.answer_reserve if sampling else None,
            max_completion_tokens=None if sampling else self.budget.answer_reserve,
            user=self.deps.opaque_user_id(self.key.user_id),
        )

    async def _finish_generation(self, error: ChatServerError | None) -> None:
        if isinstance(error, UpstreamContentFilter):
            await self._end_answer(self._error_frame(error), store=False)
        elif error is not None:
            await self._end_answer(self._error_frame(error))
        else:
            await self._end_answer(frames.terminator_frame(self.key.room), complete=True)
        await self._next_pending()

    async def stop_generation(self) -> bool:
        """/stop: end the answer at once, keep its text; False when nothing is left to stop."""
        if self.generation is None or self.generation.finished:
            return False
        await self._end_answer(frames.terminator_frame(self.key.room))
        # Queued messages wait for the next turn of the message loop, not for this command.
        self.nursery.start_soon(self.ref.cast, ResumeQueue())
        return True

    async def _end_answer(self, last_frame: frames.Frame, *, complete: bool = False,
                          store: bool = True) -> None:
        """The one way an answer ends: cancel its stream, store its text (marked partial unless
        ``complete``) with the history trimmed, then send its last frame. A client that saw
        the last frame finds the answer in history; when it could be neither stored nor kept
        for later, an ``answer_not_saved`` error takes the last frame's place."""
        gen, self.generation = self.generation, None
        if gen is None:
            return
        gen.cancel_scope.cancel()  # the upstream response closes as the task unwinds
        tokens = (await count_tokens_async(gen.text, "assistant", self.profile.model)
                  if gen.parts else None)
        if gen.parts and not store:  # a mirror may exist (or be on its way): it goes
            await self.deps.store.drop_answer(self.key.user_id, self.key.room, self.fence)
        if store and tokens is not None:
            try:
                await self._store_answer(gen.text, tokens, gen.replaces, partial=not complete)
            except StorageError as exc:
                log.error("session %s/%s could not store an answer: %s",
                          self.key.user_id, self.key.room, exc)
                last_frame = frames.error_frame(
                    self.key.room, "answer_not_saved", HUMAN_ERRORS["answer_not_saved"],
                    str(exc))
        # Settled after the store: an owner whose store was refused (the session moved) has
        # settled nothing, and the next owner settles from the answer's mirror.
        await self._settle(gen.slot_id, gen.usage(), tokens)
        metrics.answer_finished(chat_metrics.answer_reason(last_frame, complete=complete,
                                                           store=store),
                                trio.current_time() - gen.started)
        self._push(self._outboxes(), last_frame)

    async def _settle(self, slot_id: str, usage: AnswerUsage, tokens: int | None) -> None:
        """An answer ended (``tokens``: its text's, None when no text came): its slot among
        the user's answers at once goes back, its token reservation is settled to what it
        spent (its prompt and text; nothing without text), and its usage counted."""
        spent = usage.prompt_tokens + tokens if tokens is not None else 0
        await self.deps.limits.finish_answer(
            self.key.user_id, slot_id, day=usage.budget_day, settle=spent - usage.reserved,
            count=AnswerCount(usage.key_id, usage.model or self.profile.model,
                              prompt_tokens=usage.prompt_tokens if tokens is not None else 0,
                              answer_tokens=tokens or 0))

    async def _store_answer(self, text: str, tokens: int, replaces: Sequence[StoredMessage],
                            *, partial: bool) -> None:
        """Append the answer (dropping what it replaces) and trim the history to budget, in
        one storage step that also drops the answer's mirror (always: a mirror write still
        on its way when the answer ended is not counted yet)."""
        answer = self._new_message("assistant", text, tokens, partial=partial)
        replaced = {m.id for m in replaces}
        after = [m for m in self.messages if m.id not in replaced] + [answer]
        dropped = [after[i] for i in trim_history(after, self.budget).drop]
        await self._store(append=[answer], remove=[*replaces, *dropped], answer_stored=True)

    def _error_frame(self, exc: ChatServerError) -> frames.Frame:
        return frames.error_frame(self.key.room, exc.code,
                                  HUMAN_ERRORS.get(exc.code, str(exc)), str(exc))

    # ------------------------------------------------------------ context (for commands)
    @property
    def budget(self) -> Budget:
        return Budget.for_model(self.settings, self.profile.model)

    def _new_message(self, role: Role, content: str, tokens: int, *,
                     partial: bool = False) -> StoredMessage:
        self.next_id += 1
        return StoredMessage(id=self.next_id, role=role, content=content, tokens=tokens,
                             ts=utc_stamp(), partial=partial)

    async def _store(self, *, append: Sequence[StoredMessage] = (),
                     remove: Sequence[StoredMessage] = (), answer_stored: bool = False) -> None:
        """Apply a change durably, then in memory (a failed write changes nothing). The input
        being handled leaves the inbox in the same step, and with ``answer_stored`` the
        answer's mirror goes too.

        The session is the only writer of its context, so what it holds is the truth: when the
        stored list turns out different (keys expired or deleted under a live session), the
        context is rewritten whole from memory and the repair is logged, never silently lost.
        """
        removed = {m.id for m in remove}
        after = [m for m in self.messages if m.id not in removed] + list(append)
        try:
            if self.slot.unsaved is not None:  # Redis is behind: the whole context, in order
                await self._rewrite(after, self.profile)
                self._saved_again()
            else:
                applied = await self.deps.store.change(
                    self.key.user_id, self.key.room, append=append, remove=remove,
                    next_id=self.next_id, count=len(after), fence=self.fence,
                    done_input=self._input_entry, answer_stored=answer_stored)
                if applied:
                    self._input_entry = ""
                else:
                    log.error("session %s/%s stored context differed from the session's: "
                              "rewritten", self.key.user_id, self.key.room)
                    await self._rewrite(after, self.profile)
        except (StorageUnavailable, StorageTimeout) as exc:
            changes = self.slot.unsaved.changes if self.slot.unsaved is not None else 0
            if self._stopping or changes >= UNSAVED_LIMIT:
                raise
            if changes == 0:
                log.warning("session %s/%s keeps its changes until Redis is back: %s",
                            self.key.user_id, self.key.room, exc)
            self.slot.unsaved = Unsaved(self.profile, after, self.next_id, changes + 1)
            self._schedule_flush()
        self.messages = after
        if self.slot.unsaved is not None:  # keep what survives a crash in step
            self.slot.unsaved = Unsaved(self.profile, after, self.next_id,
                                        self.slot.unsaved.changes)

    async def _rewrite(self, messages: Sequence[StoredMessage], profile: Profile | None) -> None:
        """The stored context replaced whole (the profile kept when None); an answer in
        progress keeps its mirror."""
        gen = self.generation
        await self.deps.store.rewrite(self.key.user_id, self.key.room, messages, self.next_id,
                                      profile=profile, fence=self.fence,
                                      answering=gen.slot_id if gen is not None else "")

    def _saved_again(self) -> None:
        if self.slot.unsaved is not None:
            log.warning("session %s/%s: Redis took the %d change(s) it kept", self.key.user_id,
                        self.key.room, self.slot.unsaved.changes)
            self.slot.unsaved = None
        self._flush_attempts = 0

    async def _flush_unsaved(self) -> bool:
        """Write the kept context whole; True when Redis has it (or nothing was kept)."""
        if self.slot.unsaved is None:
            return True
        try:
            await self._rewrite(self.messages, self.profile)
        except StorageError as exc:
            log.info("session %s/%s: Redis still refuses the kept changes: %s",
                     self.key.user_id, self.key.room, exc)
            return False
        self._saved_again()
        return True

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or self._stopping:
            return
        self._flush_scheduled = True
        delay = FLUSH_RETRY[min(self._flush_attempts, len(FLUSH_RETRY) - 1)]
        self._flush_attempts += 1
        self.nursery.start_soon(self._flush_later, delay)

    async def _flush_later(self, delay: float) -> None:
        await trio.sleep(delay)
        await self.ref.cast(FlushUnsaved())

    async def remove_messages(self, doomed: Sequence[StoredMessage]) -> None:
        await self._store(remove=doomed)

    async def add_system(self, text: str, *, replace_all: bool = False) -> None:
        """Add a system message (or replace all of them) in one storage step."""
        tokens = await count_tokens_async(text, "system", self.profile.model)
        old = [m for m in self.messages if m.role == "system"]
        kept = 0 if replace_all else sum(m.tokens for m in old)
        if kept + tokens > self.budget.prompt_limit:
            raise ContextOverflow(
                "The system messages would not fit in the model's context window.",
                tokens=kept + tokens, limit=self.budget.prompt_limit)
        await self._store(append=[self._new_message("system", text, tokens)],
                          remove=old if replace_all else ())

    async def clear(self, *, reset_profile: bool = False) -> None:
        profile = Profile(model=self.settings.default_model) if reset_profile else None
        await self._rewrite([], profile)
        self.messages = []
        if profile is not None:
            self.profile = profile

    async def set_profile(self, profile: Profile) -> None:
        await self.deps.store.save_profile(self.key.user_id, self.key.room, profile, self.fence)
        self.profile = profile

    async def retry(self) -> bool:
        """Answer the last user message again; its old answer goes only once the new one is
        stored. Checked against the budget first (the model may have changed)."""
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        if not users:
            return False
        last_user = self.messages[users[-1]]
        check_message(self._context_for(last_user), last_user.tokens, self.budget)
        old = [m for m in self.messages[users[-1] + 1:] if m.role == "assistant"]
        self.start_generation(await self._new_generation(last_user, replaces=old))
        return True

    async def delete_room(self) -> None:
        """/deletechatroom: context and room row go; the session stops (the next message
        starts a fresh one, in a fresh room)."""
        await self._end_answer(frames.terminator_frame(self.key.room), store=False)
        self.pending.clear()
        await self.deps.store.delete(self.key.user_id, self.key.room)
        await self.deps.rooms.deleted(self.key.user_id, self.key.room)
        self.messages = []
        self._push(self._outboxes(), frames.reply_frame(self.key.room,
                                                        "This chat room was deleted."))
        self.stop()

    def visible_history(self) -> list[dict[str, object]]:
        return [
            {"content": m.content, "tokens": m.tokens, "is_user": m.role == "user",
             "timestamp": m.ts, **({"partial": True} if m.partial else {})}
            for m in self.messages if m.role != "system"
        ]

    # ------------------------------------------------------------ outboxes
    def _outboxes(self) -> list[Outbox]:
        return list(self.slot.outboxes.values())

    def send(self, outbox_id: int, frame: frames.Frame) -> None:
        outbox = self.slot.outboxes.get(outbox_id)
        if outbox is not None:
            self._push([outbox], frame)

    def _push(self, outboxes: Iterable[Outbox], frame: frames.Frame) -> None:
        """Never waits: an outbox that refuses (stuck, too slow, closed) is dropped."""
        for outbox in outboxes:
            if not outbox.push(frame):
                self._drop(outbox)

    def _drop(self, outbox: Outbox) -> None:
        if self.slot.outboxes.pop(outbox.id, None) is not None and outbox.close_reason:
            log.warning("session %s/%s dropped a socket: %s", self.key.user_id, self.key.room,
                        outbox.close_reason)

    # ------------------------------------------------------------ idleness
    def _touch(self) -> None:
        self.slot.last_activity = trio.current_time()

    def _is_idle(self) -> bool:
        for outbox in self._outboxes():
            if outbox.closed:  # its socket left without a Detach reaching us
                self._drop(outbox)
        return self.slot.looks_idle(trio.current_time(), self.settings.session_idle_seconds)


__all__ = [
    "Attach", "CrashForTest", "Detach", "FlushUnsaved", "GenerationEnded", "IdleTick",
    "ResumeQueue",
    "SessionActor", "SessionKey", "SessionMsg", "SessionSlot", "SessionSnapshot", "Snapshot",
    "UserInput",
]
