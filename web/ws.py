"""The chat WebSocket: ``/ws/chatgpt/{access_key}?chat_room_id=X`` (PROTOCOL.md v1).

The key is checked **before** the upgrade (403, no upgrade). Then one socket = two tasks in one
nursery: the reader turns client frames into ``UserInput`` casts to the session actor, the
writer drains the socket's ``Outbox`` (which never blocks the session). A watcher closes the
connection as soon as the session cuts the outbox (stuck socket, failed session), even while the
writer is blocked in a send. All cleanup is in ``finally``: a client that goes away cancels the
handler, it never runs ``after_websocket``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import trio
from quart import Blueprint, copy_current_websocket_context, current_app, request, websocket
from quart.wrappers import Response

from chat_actors import frames
from chat_actors.chat_limits import costs_an_answer
from chat_actors.cluster import SessionHandle
from chat_actors.outbox import Outbox, OutboxClosed
from chat_actors.registry import SessionRegistry
from chat_actors.room_ids import parse_room_id
from chat_actors.service import Chat
from core import metrics
from core.errors import AccountClosed, ActorDead, ApiError, RateLimited, StorageError
from web.auth_keys import AuthedKey, authenticate_access_key
from web.drain import CLOSE_RESTART, RESTARTING
from web.services import SERVICES_EXTENSION, Services, get_services
from web.socket_watch import ACCOUNT_CLOSED, CLOSE_POLICY, WatchedSocket
from web.state import state_of
from web.ws_tickets import bp as tickets_bp
from web.ws_tickets import spend_ticket

log = logging.getLogger("chat.ws")
bp = Blueprint("chat_ws", __name__)
bp.register_blueprint(tickets_bp)  # POST /api/user/ws-ticket: what the ticket socket spends

OUTBOX_MAX_FRAMES = 512
OUTBOX_STUCK_SECONDS = 30.0
#: Bound of the work before the init frame (key check, session start): past it the client gets
#: an answer (503 / an error frame) instead of a socket that hangs.
JOIN_TIMEOUT = 15.0
CLOSE_ERROR = 1011
#: Ends an answer whose owner process died mid-stream; the next owner stores its text so far.
OWNER_LOST = ("session_restarted",
              "The server process running this chat stopped; the answer so far is kept.")


class BadFrame(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class ClientFrame:
    msg: str
    translate: bool
    room: str | None


def parse_frame(data: str | bytes, max_bytes: int) -> ClientFrame:
    size = len(data.encode() if isinstance(data, str) else data)
    if size > max_bytes:
        raise BadFrame("too_long", f"Frame of {size} bytes is over the limit of {max_bytes}.")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadFrame("bad_frame", "Frames must be JSON objects.") from None
    if not isinstance(body, dict):
        raise BadFrame("bad_frame", "Frames must be JSON objects.")
    msg = body.get("msg")
    if not isinstance(msg, str):
        raise BadFrame("bad_frame", "'msg' is required and must be a string.")
    translate = body.get("translate", False)
    if not isinstance(translate, bool):
        raise BadFrame("bad_frame", "'translate' must be true or false.")
    room = body.get("chat_room_id")
    try:
        return ClientFrame(msg=msg, translate=translate,
                           room=None if room is None else parse_room_id(room))
    except ValueError as exc:
        raise BadFrame("bad_frame", str(exc)) from None


def _reject(status: int, code: str, msg: str) -> Response:
    state_of(websocket.scope).error_code = code
    body = {"status": status, "msg": msg, "detail": None, "code": code}
    return Response(json.dumps(body), status=status, content_type="application/json")


@bp.websocket("/ws/chatgpt/<access_key>")
async def chat_socket(access_key: str) -> Response | None:
    """The original clients' socket: the API key's access key in the path."""
    return await _serve(access_key=access_key)


@bp.websocket("/ws/chatgpt")
async def chat_socket_with_ticket() -> Response | None:
    """``?ticket=`` from ``POST /api/user/ws-ticket`` (single use, ``web.ws_tickets``)."""
    return await _serve(ticket=websocket.args.get("ticket", ""))


def origin_allowed(origin: str | None, host: str, allowed: list[str]) -> bool:
    """Cross-site WebSocket hijacking guard: a browser always sends ``Origin``; it must be this
    server's own (same host and port) or one of ``ALLOWED_ORIGINS``. Scripts and apps send
    none and are judged by their key alone."""
    if origin is None or "*" in allowed:
        return True
    if origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}:
        return True
    own = urlsplit(origin)
    return own.scheme in ("http", "https") and own.netloc.lower() == host.lower()


async def _serve(*, access_key: str | None = None, ticket: str | None = None) -> Response | None:
    services = get_services(current_app)
    chat = services.chat
    if not isinstance(chat, Chat):
        return _reject(503, "not_ready", "The chat service is not running.")
    if services.draining:
        return _reject(503, "server_restarting", "The server is restarting; retry shortly.")
    state = state_of(websocket.scope)
    if not origin_allowed(websocket.headers.get("Origin"), websocket.headers.get("Host", ""),
                          services.settings.allowed_origins):
        return _reject(403, "origin_not_allowed", "This origin may not open chat sockets.")
    try:
        room = parse_room_id(websocket.args.get("chat_room_id", "0"))
        with trio.fail_after(JOIN_TIMEOUT):
            token = None
            if access_key is not None:
                authed = await authenticate_access_key(services, access_key, state.client_ip)
            else:
                user, token = await spend_ticket(services, ticket or "")
                authed = AuthedKey(user_id=user.id, email=user.email, key_id=None)
    except trio.TooSlowError:
        log.error("key check took more than %s s", JOIN_TIMEOUT)
        return _reject(503, "storage_unavailable", "The key could not be checked in time; retry.")
    except ValueError as exc:
        return _reject(400, "bad_room_id", str(exc))
    except ApiError as exc:
        return _reject(403, exc.code, exc.msg)
    except StorageError:
        return _reject(503, "storage_unavailable", "The key could not be checked; retry.")
    state.user_id, state.api_key_id = authed.user_id, authed.key_id
    socket = ChatSocket(chat, authed, room)
    owner = f"key:{authed.key_id}" if authed.key_id is not None else f"user:{authed.user_id}"
    watched = WatchedSocket(access_key, state.client_ip, authed.user_id, socket.end, owner,
                            token=token)
    watch = services.socket_watch
    if watch is not None and not await watch.admit(watched):
        metrics.limit_refused("too_many_sockets")
        limit = services.settings.ws_connections_per_key
        response = _reject(429, "too_many_sockets", f"At most {limit} open chat sockets per key.")
        response.headers["Retry-After"] = "5"
        return response
    try:
        await websocket.accept()
        await socket.run()
    finally:
        if watch is not None:
            await watch.leave(watched)
    return None


@bp.after_app_request
async def recheck_open_sockets(response: Response) -> Response:
    """A change to a user's keys, allow-lists, account or sign-in (logout, unregister): their
    open sockets are checked now."""
    changes = request.path.startswith(("/api/user", "/api/auth/logout", "/api/auth/register"))
    if request.method not in ("GET", "HEAD", "OPTIONS") and changes:
        services: Services | None = current_app.extensions.get(SERVICES_EXTENSION)
        user_id = state_of(request.scope).user_id
        if services is not None and services.socket_watch is not None and user_id is not None:
            services.socket_watch.recheck_user(user_id)
    return response


class ChatSocket:
    """One accepted socket: its outbox (for its whole life), its current room and session.

    Moving rooms detaches the outbox from the old session (a call: once it returns the old
    session pushes nothing more) and attaches it to the new one, whose init frame follows.
    The session may live in another process (``chat_actors.cluster``); when it moves (its
    owner stopped or died), the socket attaches again and gets the new owner's init frame.
    """

    def __init__(self, chat: Chat, authed: AuthedKey, room: str) -> None:
        self.chat = chat
        self.registry: SessionRegistry = chat.registry
        self.user_id = authed.user_id
        self.key_id = authed.key_id  # None for a ticket socket: usage counts it as key 0
        self.room = room
        self.outbox = Outbox(max_frames=OUTBOX_MAX_FRAMES, stuck_after=OUTBOX_STUCK_SECONDS)
        self.session: SessionHandle | None = None
        self._entering = trio.Lock()  # a room move, a resend and a session move take turns
        self.max_bytes = chat.settings.max_frame_bytes
        self.close_code: int | None = None  # set when the server ends the socket on purpose
        self._nursery: trio.Nursery | None = None  # the socket's tasks, while it runs
        self._closer: Callable[[trio.CancelScope], Awaitable[None]] = self._close_connection

    def end(self, code: str, msg: str, close_code: int = CLOSE_POLICY) -> None:
        """The server ends this socket (key revoked, account closed, shutdown): a last error
        frame with ``close: true``, then the close frame once the outbox is flushed."""
        if self.outbox.closed:
            return
        self.outbox.push(frames.error_frame(self.room, code, msg, close=True))
        self.close_code = close_code
        self.outbox.close(code)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # started from whichever task closes the outbox: in this socket's context
                self._closer = copy_current_websocket_context(self._close_connection)
                self.outbox.on_close = self._on_outbox_closed
                nursery.start_soon(self._writer)
                if not await self._join("storage_unavailable",
                                        "The chat session could not be started; retry shortly."):
                    return
                await self._reader()
        finally:
            self._nursery = None
            self.outbox.close()
            if self.session is not None:
                self.session.moved.forget(self._on_moved)
                await self.registry.detach(self.session, self.outbox)

    def _on_moved(self) -> None:
        """The session this socket is attached to stopped here for good, or its owner
        changed: attach again (called by the handle's ``MoveSignal``; never waits)."""
        if self._nursery is not None and not self.outbox.closed:
            try:
                self._nursery.start_soon(self._rejoin)
            except RuntimeError:  # the socket's nursery is closing: it goes anyway
                pass

    async def _rejoin(self) -> None:
        """Attach again: to the new owner, or here, which takes the session over (its queued
        inputs, its partial answer)."""
        async with self._entering:
            handle = self.session
            if self.outbox.closed or handle is None or not handle.moved.is_set():
                return  # gone, or attached again meanwhile (a room change)
            if self.registry.draining:  # this process is shutting down: go elsewhere
                self.end(*RESTARTING, CLOSE_RESTART)
                return
            if self.outbox.answer_open:  # its owner died mid-answer: the text so far is
                self.outbox.push(frames.error_frame(self.room, *OWNER_LOST))  # kept
            await self._join("session_unavailable",
                             "The chat session could not be reached; reconnect to continue.")

    async def _join(self, code: str, msg: str) -> bool:
        """Attach to the room's session, bounded; False when the socket was ended instead
        (account closed; or the session unreachable: ``code`` and ``msg``, then closed)."""
        try:
            with trio.fail_after(JOIN_TIMEOUT):
                await self._enter(self.room)
            return True
        except AccountClosed:
            self.end(*ACCOUNT_CLOSED)
        except (StorageError, ActorDead, trio.TooSlowError) as exc:
            log.error("socket could not join room %s: %r", self.room, exc)
            self.outbox.push(frames.error_frame(self.room, code, msg, close=True))
            self.outbox.close("session unavailable")
        return False

    async def _enter(self, room: str) -> None:
        """Attach to ``room``'s session; its init frame arrives through the outbox."""
        if self.session is not None:
            self.session.moved.forget(self._on_moved)
            await self.registry.detach(self.session, self.outbox)
            self.session = None
        self.room = room
        self.session = await self.registry.attach(self.user_id, room, self.outbox)
        self.session.moved.listen(self._on_moved)
        self.chat.rooms.touched(self.user_id, room)

    async def _reader(self) -> None:
        while True:
            data = await websocket.receive()
            if self.outbox.closed:  # revoked or cut: what the client still sends goes nowhere
                return
            try:
                frame = parse_frame(data, self.max_bytes)
            except BadFrame as exc:
                self.outbox.push(frames.error_frame(self.room, exc.code, str(exc)))
                continue
            try:
                if frame.room is not None and frame.room != self.room:
                    async with self._entering:
                        await self._enter(frame.room)
                if frame.msg.strip():
                    await self._send(frame)
                elif frame.room is None:
                    self.outbox.push(frames.error_frame(self.room, "bad_frame",
                                                        "'msg' must not be empty."))
            except AccountClosed:  # deleted while this message was on its way
                self.end(*ACCOUNT_CLOSED)
                return
            except ActorDead:  # no session could be started (the server is stopping)
                if self.registry.draining:  # it is: the client goes elsewhere
                    self.end(*RESTARTING, CLOSE_RESTART)
                    return
                self.outbox.push(frames.error_frame(
                    self.room, "session_unavailable",
                    "The chat session could not be started; retry shortly."))

    async def _send(self, frame: ClientFrame) -> None:
        text = frame.msg
        if frame.translate and not text.startswith("/"):
            translation = await self.chat.translator.translate(self.room, text)
            self.outbox.push(translation.notice)
            text = translation.text
        if self.outbox.closed:  # revoked while the translator worked
            return
        if costs_an_answer(text):
            try:
                await self.chat.limits.count_message(self.user_id)
            except RateLimited as exc:  # nothing reaches the session, the socket stays
                self.outbox.push(frames.error_frame(self.room, exc.code, str(exc),
                                                    str(exc.retry_after)))
                return
        async with self._entering:
            assert self.session is not None
            try:
                await self.registry.send(self.session, self.outbox, text, self.key_id)
            except ActorDead:
                # The session stopped (idle, room deleted, gave up) or moved: attach again,
                # starting it here if nobody holds it, and resend once.
                await self._enter(self.room)
                assert self.session is not None
                await self.registry.send(self.session, self.outbox, text, self.key_id)

    async def _writer(self) -> None:
        """Frames out, in order. A send that does not complete within OUTBOX_STUCK_SECONDS
        cuts the socket. One cancel scope for the whole loop, its deadline moved only when a
        send starts after a wait (not per frame: while an answer streams, frames follow each
        other and the bound stays within a second of OUTBOX_STUCK_SECONDS)."""
        with trio.CancelScope() as scope:
            try:
                while True:
                    if not self.outbox.pending:
                        scope.deadline = math.inf  # waiting for a frame is not bounded
                    frame = await self.outbox.next_frame()
                    now = trio.current_time()
                    if scope.deadline - now < OUTBOX_STUCK_SECONDS - 1:
                        scope.deadline = now + OUTBOX_STUCK_SECONDS
                    await websocket.send(orjson.dumps(frame).decode())
            except OutboxClosed:
                return
        if scope.cancelled_caught:
            self.outbox.close("socket stuck: a send did not complete", drop=True)

    def _on_outbox_closed(self) -> None:
        """The session (or the writer) cut this socket: close the connection at once, even
        while the writer is stuck in a send. A plain close (no reason) is our own finally's."""
        if self.outbox.close_reason and self._nursery is not None:
            try:
                self._nursery.start_soon(self._closer, self._nursery.cancel_scope)
            except RuntimeError:  # the socket's nursery is closing: it goes anyway
                pass

    async def _close_connection(self, cancel_scope: trio.CancelScope) -> None:
        with trio.move_on_after(1):  # let the writer flush what the session still queued
            while self.outbox.pending:
                await trio.sleep(0.01)
        code = self.close_code or (CLOSE_POLICY if self.outbox.dropped else CLOSE_ERROR)
        with trio.move_on_after(1):
            await websocket.close(code, self.outbox.close_reason[:120])
        cancel_scope.cancel()
