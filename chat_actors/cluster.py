"""This process among the others that serve the same Redis prefix (hosts, workers).

Each process is a *node* with an id of its own (host, pid, a random part). What it needs to
reach sessions owned elsewhere, and to be reached for the sessions it owns, lives here:

- ``Cluster``: the node id, the session leases (``storage.session_leases``), the session inboxes
  (``storage.session_inbox``), and the ``RemoteOutbox`` of every socket of another node that is
  attached to a session of this one;
- ``NodeLink``: the mail (``storage.node_mail``): letters out, batched per destination node (one
  stream entry per flush carries every frame queued for that node meanwhile, consecutive deltas
  of one socket merged), and the reader of this node's own stream, which hands each letter to
  the registry in arrival order;
- ``RemoteOutbox``: a socket of another node as a session sees it: ``push`` never waits, the
  frame goes into the next letter to that node.

A socket of this node attached to a session owned elsewhere is held by a ``SessionHandle``
with the owner's lease value; ``moved`` fires when the session no longer lives there (the owner
said so, or its lease changed hands or lapsed), and the socket attaches again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from chat_actors.frames import Frame, mergeable
from chat_actors.moves import MoveSignal
from chat_actors.outbox import Outbox
from core.errors import StorageError
from storage.node_mail import NodeMail, load_letter
from storage.session_inbox import SessionInbox
from storage.session_leases import SessionLeases

log = logging.getLogger("chat.cluster")

#: Letters kept for a node while Redis refuses them; past it the oldest go (and are logged).
MAX_UNSENT = 20_000
READ_BLOCK_MS = 2_000
RETRY_SECONDS = 0.25
#: A flush waits this long for more letters to the same nodes: with few sessions nearly every
#: delta was a letter of its own (bench_scale_out, 20 sessions: forwarding 4.4-4.7 ms of CPU
#: per answer without it, 2.7-3.3 ms with it, the first delta ~2 ms later; 10 ms bought no
#: more).
LINGER = 0.005

LetterHandler = Callable[[str, dict[str, Any]], None]


def new_node_id() -> str:
    host = socket.gethostname().split(".")[0][:24] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class NodeLink:
    def __init__(self, mail: NodeMail, node: str) -> None:
        self.mail = mail
        self.node = node
        self._out: dict[str, list[list[Any]]] = {}  # node -> [[kind, data], ...], in order
        self._wakeup = trio.Event()
        self._sending = 0
        self._posted = 0  # letters and frames queued so far
        self._written = 0  # of those, how many are in their node's stream for sure
        self._progress = trio.Event()
        self._failed = False  # a send of the current batch failed
        self.letters_sent = 0
        self.letters_read = 0

    def post(self, node: str, kind: str, data: Any) -> None:
        """Queue a letter to ``node``; never waits."""
        self._queue(node).append([kind, data])
        self._posted += 1
        self._wakeup.set()

    async def written(self) -> None:
        """Wait until everything posted so far is in the streams: a letter that must reach
        its node before what this process does next in Redis (an attach before the inputs
        that follow it through the session's inbox)."""
        target = self._posted
        while self._written < target:
            await self._progress.wait()

    def post_frame(self, node: str, sock: int, frame: Frame) -> None:
        """A frame for socket ``sock`` of ``node``: into the letter of frames being gathered
        for that node, merged with the socket's previous delta when it can be."""
        letters = self._queue(node)
        if not letters or letters[-1][0] != "f":
            letters.append(["f", []])
        frames: list[list[Any]] = letters[-1][1]
        if frames and frames[-1][0] == sock and mergeable(frames[-1][1], frame):
            last = frames[-1][1]
            frames[-1][1] = {**last, "msg": last["msg"] + frame["msg"]}
        else:
            frames.append([sock, frame])
        self._posted += 1
        self._wakeup.set()

    def pending(self) -> bool:
        """Letters not sent yet (queued or on their way)."""
        return bool(self._out) or self._sending > 0

    def _queue(self, node: str) -> list[list[Any]]:
        letters = self._out.get(node)
        if letters is None:
            letters = self._out[node] = []
        return letters

    async def run(self, on_letter: LetterHandler, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            nursery.start_soon(self._read, on_letter)
            task_status.started()

    async def _write(self) -> None:
        while True:
            if not self._out:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
            await trio.sleep(LINGER)  # what more comes meanwhile goes in the same letters
            out, self._out = self._out, {}
            upto = self._posted
            self._sending += 1
            try:
                async with trio.open_nursery() as nursery:  # one script each, one round trip
                    for node, letters in out.items():
                        nursery.start_soon(self._send, node, letters)
            finally:
                self._sending -= 1
            if not self._failed:  # else what failed is queued again, in a later batch
                self._written = upto
            self._failed = False
            self._progress.set()
            self._progress = trio.Event()

    async def _send(self, node: str, letters: list[list[Any]]) -> None:
        try:
            await self.mail.post(node, [(kind, data) for kind, data in letters])
            self.letters_sent += len(letters)
        except StorageError as exc:
            log.warning("mail to %s not sent (%s): kept for a retry", node, exc)
            self._failed = True
            kept = letters + self._out.get(node, [])
            if len(kept) > MAX_UNSENT:
                log.error("mail to %s: %d letter(s) dropped", node, len(kept) - MAX_UNSENT)
                kept = kept[-MAX_UNSENT:]
            self._out[node] = kept
            await trio.sleep(RETRY_SECONDS)
            self._wakeup.set()

    async def _read(self, on_letter: LetterHandler) -> None:
        after = "0-0"
        while True:
            try:
                entries = await self.mail.read(self.node, after, READ_BLOCK_MS)
            except StorageError as exc:
                log.warning("mail of %s not read (%s): retrying", self.node, exc)
                await trio.sleep(RETRY_SECONDS * 2)
                continue
            for entry_id, fields in entries:
                after = entry_id
                self.letters_read += 1
                kind = fields.get("k", "")
                try:
                    data = fields if kind == "poke" else load_letter(fields["d"])
                    on_letter(kind, data)
                except Exception:  # one bad letter must not stop the mail
                    log.exception("letter %s (%s) could not be handled", entry_id, kind)


class RemoteOutbox(Outbox):
    """A socket of node ``node`` (its outbox id there: ``sock``), attached to a session here."""

    def __init__(self, link: NodeLink, node: str, sock: int) -> None:
        super().__init__()
        self._link = link
        self.node = node
        self.sock = sock

    def push(self, frame: Frame) -> bool:
        if self.closed:
            return False
        self.frames_pushed += 1
        self._link.post_frame(self.node, self.sock, frame)
        return True

    def close(self, reason: str = "", *, drop: bool = False) -> None:
        """Closed by the session (it failed, say): the socket's own node closes the socket."""
        if self.closed:
            return
        super().close(reason, drop=drop)
        if reason:
            self._link.post(self.node, "close", {"sock": self.sock, "reason": reason,
                                                 "drop": drop})

    def forget(self) -> None:
        """The socket left (or its node died): closed without telling anyone."""
        Outbox.close(self)

    def moved(self) -> None:
        """The session stops here for good: the socket attaches again, to its next owner."""
        if not self.closed:
            self._link.post(self.node, "moved", {"sock": self.sock})
            Outbox.close(self)


@dataclass
class Cluster:
    node: str
    leases: SessionLeases
    inbox: SessionInbox
    link: NodeLink
    #: Sockets of other nodes attached to sessions of this one: (node, sock) -> outbox.
    remote_outboxes: dict[tuple[str, int], RemoteOutbox] = field(default_factory=dict)

    def outbox_for(self, node: str, sock: int) -> int:
        """The local outbox id of socket ``sock`` of ``node`` (0: not attached here)."""
        if node == self.node:
            return sock
        outbox = self.remote_outboxes.get((node, sock))
        return outbox.id if outbox is not None else 0


@dataclass(eq=False)
class SessionHandle:
    """A socket's hold on its session: the local actor, or the owner elsewhere."""

    user_id: int
    room: str
    ref: Any = None  # the local actor's ActorRef, or None
    owner: str = ""  # the lease value of the owning node when the session is elsewhere
    sock: int = 0  # then: this attachment's id, which the owner's letters name
    moved: MoveSignal = field(default_factory=MoveSignal)

    @property
    def remote(self) -> bool:
        return self.ref is None
