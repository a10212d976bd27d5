"""Actors: a Trio task that owns its state and reads typed messages from a bounded mailbox.

    await ref.cast(msg)      send and go on (waits for room); ``cast_nowait`` raises MailboxFull
    await ref.call(req)      send with a one-shot reply channel and wait for the answer
    await ref.stop()         graceful: messages already queued first, then ``on_stop``

Rules:
- An exception escaping ``handle`` is a crash: it ends the actor with that exception (its
  supervisor sees it). If the message was a call, the caller gets the same exception raised.
  To fail one call without crashing, ``return Refuse(exc)``.
- A call whose actor stops or dies before answering raises ``ActorDead`` (never hangs).
- A cancelled caller never hurts the actor: the message is still handled, the reply dropped.
- Timeouts belong to callers: ``with trio.fail_after(2): await ref.call(req)``.

The mailbox is separate from the actor instance so that a supervisor can keep one mailbox (and
so one ``ActorRef``) across restarts; ``Actor.run`` is the unsupervised shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar, Union
from typing import cast as typing_cast

import trio

from core.errors import ActorDead, MailboxFull

M = TypeVar("M")
R = TypeVar("R")

DEFAULT_MAILBOX_SIZE = 64
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class Request(Generic[R]):
    """Base of a message that expects a reply of type ``R``: ``class Get(Request[int])``."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Refuse:
    """Return this from ``handle`` to raise ``exc`` in the caller without crashing the actor."""

    exc: Exception


@dataclass(frozen=True, slots=True)
class _Ok:
    value: object


@dataclass(frozen=True, slots=True)
class _Err:
    exc: Exception


_Reply: TypeAlias = _Ok | _Err


@dataclass(frozen=True, slots=True)
class _Cast(Generic[M]):
    msg: M


@dataclass(frozen=True, slots=True)
class _Call(Generic[M]):
    msg: M
    reply: trio.MemorySendChannel[_Reply]


@dataclass(frozen=True, slots=True)
class _Stop:
    done: trio.MemorySendChannel[_Reply]  # closed once the incarnation has ended


_Envelope: TypeAlias = Union[_Cast[M], _Call[M], _Stop]  # noqa: UP007 (subscripted at run time)


def _answer(reply: trio.MemorySendChannel[_Reply], result: _Reply) -> None:
    try:
        reply.send_nowait(result)
    except _GONE:
        pass  # the caller was cancelled or gave up: drop the reply


class ActorRef(Generic[M]):
    """The only way to reach an actor. Cheap to share; stays valid across supervised restarts."""

    __slots__ = ("_send",)

    def __init__(self, send: trio.MemorySendChannel[_Envelope[M]]) -> None:
        self._send = send

    @property
    def alive(self) -> bool:
        """False once the mailbox is closed for good (every send would raise ActorDead)."""
        return self._send.statistics().open_receive_channels > 0

    async def cast(self, msg: M) -> None:
        """Queue ``msg``, waiting for room in the mailbox."""
        try:
            await self._send.send(_Cast(msg))
        except _GONE:
            raise ActorDead("actor is gone") from None

    def cast_nowait(self, msg: M) -> None:
        """Queue ``msg`` or raise ``MailboxFull`` at once."""
        try:
            self._send.send_nowait(_Cast(msg))
        except trio.WouldBlock:
            raise MailboxFull("mailbox is full") from None
        except _GONE:
            raise ActorDead("actor is gone") from None

    async def call(self, msg: Request[R]) -> R:
        """Send ``msg`` and wait for the reply; re-raise the handler's exception here.

        mypy checks the reply type ``R``; that ``msg`` belongs to this actor's message set ``M``
        is only checked for ``cast`` (Python has no intersection types).
        """
        reply_send, reply_recv = trio.open_memory_channel[_Reply](1)
        with reply_recv:
            try:
                await self._send.send(_Call(typing_cast(M, msg), reply_send))
            except _GONE:
                reply_send.close()
                raise ActorDead("actor is gone") from None
            try:
                reply = await reply_recv.receive()
            except trio.EndOfChannel:
                raise ActorDead("actor stopped before answering") from None
        match reply:
            case _Ok(value=value):
                return typing_cast(R, value)
            case _Err(exc=exc):
                raise exc

    async def stop(self) -> None:
        """Ask the actor to stop after the messages already queued; wait until it has ended.

        Does nothing if the actor is already gone. Under a supervisor a ``permanent`` child is
        restarted after a normal stop (OTP semantics): use the supervisor to stop it for good.
        """
        done_send, done_recv = trio.open_memory_channel[_Reply](1)
        with done_recv:
            try:
                await self._send.send(_Stop(done_send))
            except _GONE:
                done_send.close()
                return
            try:
                await done_recv.receive()
            except trio.EndOfChannel:
                return


class Mailbox(Generic[M]):
    """A bounded channel of envelopes and the ref that writes to it; may outlive incarnations."""

    def __init__(self, size: int = DEFAULT_MAILBOX_SIZE) -> None:
        if size < 1:
            raise ValueError("a mailbox needs room for at least one message")
        send, self._recv = trio.open_memory_channel[_Envelope[M]](size)
        self.ref: ActorRef[M] = ActorRef(send)

    async def receive(self) -> _Envelope[M]:
        return await self._recv.receive()

    def close(self) -> None:
        """Close for good: queued and future calls raise ActorDead, queued stops return."""
        while True:
            try:
                envelope = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            match envelope:
                case _Call(reply=reply):
                    reply.close()
                case _Stop(done=done):
                    done.close()
                case _Cast():
                    pass
        self._recv.close()


class Actor(Generic[M]):
    """Subclass and implement ``handle`` with a ``match`` over your closed message set.

    ``self.nursery`` (child tasks die with the actor; a crashing child task crashes the actor)
    and ``self.ref`` (e.g. for child tasks to cast results back) exist from ``on_start`` on.
    """

    nursery: trio.Nursery
    ref: ActorRef[M]
    _stopping: bool = False

    async def on_start(self) -> None:
        """Runs before the ref is handed out (``nursery.start`` returns after it)."""

    async def handle(self, msg: M) -> object:
        """Handle one message; the return value is the reply when the message was a call."""
        raise NotImplementedError

    async def on_stop(self) -> None:
        """Runs after a normal stop (not after a crash or a cancellation)."""

    def stop(self) -> None:
        """From inside ``handle``: stop normally once this message has been handled."""
        self._stopping = True

    async def run(
        self,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        *,
        task_status: trio.TaskStatus[ActorRef[M]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Unsupervised: ``ref = await nursery.start(actor.run)``. Refs die with the actor."""
        mailbox = Mailbox[M](mailbox_size)
        try:
            await self.serve(mailbox, task_status=task_status)
        finally:
            mailbox.close()

    async def serve(
        self,
        mailbox: Mailbox[M],
        *,
        task_status: trio.TaskStatus[ActorRef[M]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One incarnation reading ``mailbox``; returns on a normal stop, raises on a crash."""
        self.ref = mailbox.ref
        self._stopping = False
        stop_request: _Stop | None = None
        crash: BaseException | None = None
        try:
            try:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    await self.on_start()
                    task_status.started(mailbox.ref)
                    stop_request = await self._loop(mailbox)
                    await self.on_stop()
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                crash = group.exceptions[0] if len(group.exceptions) == 1 else group
            if crash is not None:
                raise crash  # outside the except block: no group in the traceback's context
        finally:
            if stop_request is not None:
                stop_request.done.close()

    async def _loop(self, mailbox: Mailbox[M]) -> _Stop | None:
        while not self._stopping:
            envelope = await mailbox.receive()
            if isinstance(envelope, _Stop):
                return envelope
            await self._deliver(envelope)
            # An idle actor keeps nothing of its last message while it waits for the next one
            # (a call's reply channel is ~1.4 KiB, times every idle session).
            del envelope
        return None

    async def _deliver(self, envelope: _Cast[M] | _Call[M]) -> None:
        match envelope:
            case _Cast(msg=msg):
                await self.handle(msg)
            case _Call(msg=msg, reply=reply):
                with reply:  # closed on any exit: a dying actor means ActorDead, no hang
                    try:
                        result = await self.handle(msg)
                    except Exception as exc:
                        _answer(reply, _Err(exc))
                        raise
                    if isinstance(result, Refuse):
                        _answer(reply, _Err(result.exc))
                    else:
                        _answer(reply, _Ok(result))
