"""The load test's network side: users and keys over REST, chat sessions over WebSocket.

``provision_users`` registers users and creates one API key each (``POST
/api/auth/register/email``, ``POST /api/user/apikeys``); sessions are spread over them, one
chat room per session, so every session is its own (user, room) session actor. ``run_load``
runs the sessions (ramp-up, messages, think time) under a duration cap and fills a
``Recorder``.
"""

from __future__ import annotations

import gc
import json
import math
import random
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from scripts import loadtest_ws
from scripts.loadtest_stats import LIMITS_HINT, MessageResult, Recorder
from scripts.loadtest_verify import MessagePlan, compare

PASSWORD = "load-test password 7f3a"

#: A chat socket of either client (both raise trio-websocket's errors).
ChatSocket = WebSocketConnection | loadtest_ws.LeanWebSocket


@dataclass(frozen=True)
class Credentials:
    access_key: str
    email: str = ""


def save_users(path: Path, users: Sequence[Credentials]) -> None:
    path.write_text(json.dumps([{"email": u.email, "access_key": u.access_key} for u in users],
                               indent=1))


def load_users(path: Path) -> list[Credentials]:
    """A JSON list of ``{"access_key": ...}`` objects (``email`` optional) or of plain keys."""
    data = json.loads(path.read_text())
    users = [Credentials(access_key=d) if isinstance(d, str)
             else Credentials(access_key=d["access_key"], email=d.get("email", "")) for d in data]
    if not users:
        raise ValueError(f"{path} lists no users")
    return users


async def provision_users(base_url: str, count: int, *, concurrency: int = 4,
                          prefix: str = "loadtest") -> list[Credentials]:
    """Register ``count`` users with one API key each (in parallel, at most ``concurrency``
    at once: registration hashes a password with Argon2 on the server, which is slow)."""
    run = secrets.token_hex(4)
    users: list[Credentials | None] = [None] * count
    limiter = trio.CapacityLimiter(concurrency)

    async def one(http: httpx.AsyncClient, i: int) -> None:
        async with limiter:
            email = f"{prefix}-{run}-{i}@example.com"
            r = await http.post("/api/auth/register/email",
                                json={"email": email, "password": PASSWORD})
            if r.status_code == 429:
                raise RuntimeError(f"register {email}: refused by the server's registration limit "
                                   f"({r.text[:120]}); {LIMITS_HINT}")
            if r.status_code != 201:
                raise RuntimeError(f"register {email}: HTTP {r.status_code} {r.text[:200]}")
            jwt = r.json()["Authorization"]
            r = await http.post("/api/user/apikeys", json={"user_memo": "load test"},
                                headers={"Authorization": jwt})
            if r.status_code != 201:
                raise RuntimeError(f"create key for {email}: HTTP {r.status_code} {r.text[:200]}")
            users[i] = Credentials(access_key=r.json()["access_key"], email=email)

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http, \
            trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, http, i)
    return [u for u in users if u is not None]


def ws_url(base_url: str, access_key: str, room: str) -> str:
    base = base_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    return f"{base}/ws/chatgpt/{quote(access_key, safe='')}?chat_room_id={quote(room, safe='')}"


@dataclass(frozen=True)
class LoadConfig:
    url: str  # http(s)://host:port of the chat server
    sessions: int
    messages: int  # per session
    ramp_up: float = 0.0  # seconds over which the sessions start, evenly
    # Steady state: every session connects during the ramp-up; the first messages start after
    # it, each at a random point of one think time (no connection storm in the message numbers).
    steady: bool = False
    think: float = 0.0  # seconds between an answer's end and the next message
    answer_timeout: float = 60.0
    connect_timeout: float = 30.0
    verify: bool = True


def _first(exc: BaseException) -> BaseException:
    """Trio-websocket may raise through a nursery: look inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_session(url: str, rec: Recorder, *, connect_timeout: float = 30.0
                       ) -> AsyncIterator[loadtest_ws.LeanWebSocket]:
    """Connect, read the init frame; connect and init times go to ``rec``."""
    t0 = trio.current_time()
    async with loadtest_ws.open_websocket_url(url, connect_timeout=connect_timeout,
                                              disconnect_timeout=5) as ws:
        await _read_init(ws, rec, t0, connect_timeout)
        yield ws


@asynccontextmanager
async def open_held_session(url: str, rec: Recorder, *, connect_timeout: float = 30.0
                            ) -> AsyncIterator[WebSocketConnection]:
    """``open_session`` with trio-websocket's client, which reads in the background and so
    notices when the server closes a socket that nobody reads (``ws.closed``)."""
    t0 = trio.current_time()
    # trio-websocket's own connect_timeout can leave the handshake's reader task running (the
    # client then hangs with the TCP connection open and nothing counted): a guard scope bounds
    # the whole handshake from outside too (cancelling that task), then is lifted.
    with trio.CancelScope(deadline=t0 + connect_timeout + 5) as guard:
        async with open_websocket_url(url, connect_timeout=connect_timeout, disconnect_timeout=5,
                                      message_queue_size=64) as ws:
            guard.deadline = math.inf
            await _read_init(ws, rec, t0, connect_timeout)
            yield ws
    if guard.cancelled_caught:
        raise ConnectionTimeout(f"no WebSocket handshake within {connect_timeout + 5:.0f} s")


async def _read_init(ws: ChatSocket, rec: Recorder, t0: float, timeout: float) -> None:
    t1 = trio.current_time()
    rec.connect_times.append(t1 - t0)
    with trio.fail_after(timeout):
        init = json.loads(await ws.get_message())
    if not init.get("init"):
        raise HandshakeError(f"the first frame is not an init frame: {init!r}"[:200])
    rec.init_times.append(trio.current_time() - t1)


async def read_answer(ws: ChatSocket, msg: MessageResult, rec: Recorder,
                      sent: float) -> str:
    """Read frames up to the answer's terminator (or the error frame ending it)."""
    parts: list[str] = []
    last = sent
    while True:
        data = await ws.get_message()
        now = trio.current_time()
        msg.frames += 1
        msg.bytes += len(data.encode()) if isinstance(data, str) else len(data)
        frame = json.loads(data)
        if frame.get("is_user") or frame.get("init"):
            continue
        error = frame.get("error")
        if error is not None:
            msg.error = str(error.get("code") or "unknown") if isinstance(error, dict) else "unknown"
            msg.total = now - sent
            return "".join(parts)
        if frame.get("finish"):
            msg.total = now - sent
            return "".join(parts)
        msg.delta_at(now, sent, last)
        last = now
        rec.record_delta(now - rec.started)
        parts.append(frame.get("msg", ""))


def first_message_delay(i: int, cfg: LoadConfig) -> float:
    """Steady state: session ``i`` starts chatting this long after the ramp-up (the same for a
    given ``i``, so direct and server runs of a benchmark match)."""
    return random.Random(i).uniform(0.0, cfg.think)


async def run_session(i: int, user: Credentials, cfg: LoadConfig, plan: MessagePlan,
                      rec: Recorder) -> None:
    room = f"lt-{plan.run_id}-{i}"
    url = ws_url(cfg.url, user.access_key, room)
    current: MessageResult | None = None
    try:
        async with open_session(url, rec, connect_timeout=cfg.connect_timeout) as ws:
            rec.session_opened()
            try:
                if cfg.steady:
                    await trio.sleep_until(rec.started + cfg.ramp_up + first_message_delay(i, cfg))
                for k in range(cfg.messages):
                    if k and cfg.think > 0:
                        await trio.sleep(cfg.think)
                    text = plan.text(i, k)
                    current = MessageResult(session=i, index=k,
                                            sent_at=trio.current_time() - rec.started)
                    rec.messages.append(current)
                    sent = trio.current_time()
                    await ws.send_message(json.dumps({"msg": text, "chat_room_id": room}))
                    with trio.move_on_after(cfg.answer_timeout) as scope:
                        received = await read_answer(ws, current, rec, sent)
                    if scope.cancelled_caught:
                        current.error = "timeout"
                        rec.failures += 1
                        return  # the stream is out of step: stop this session
                    if current.error is not None:
                        rec.failures += 1
                    elif cfg.verify:
                        current.mismatch = compare(received, plan.expected(text))
                        rec.failures += current.mismatch is not None
                    rec.answers_done += 1
                    current = None
            finally:
                rec.sessions_open -= 1
    except trio.Cancelled:
        if current is not None and current.error is None:
            current.error = "cancelled"  # the --duration cap: unfinished, not a failure
        raise
    except BaseException as exc:
        inner = _first(exc)
        if isinstance(inner, ConnectionClosed):
            rec.unexpected_closes += 1
            if current is not None:
                current.error = "closed"
        elif isinstance(inner, ConnectionRejected):
            rec.session_errors[f"rejected_{inner.status_code}"] += 1
        elif isinstance(inner, (ConnectionTimeout, trio.TooSlowError)):
            rec.session_errors["connect_timeout"] += 1
        elif isinstance(inner, (HandshakeError, OSError, trio.BrokenResourceError)):
            rec.session_errors["connect_failed"] += 1
        else:
            raise
        rec.failures += 1
    finally:
        rec.sessions_done += 1


@contextmanager
def collector_paused() -> Iterator[None]:
    """The load generator is the measuring instrument: a full collection of its heap (120k
    objects, 130-260 ms here) would add its pause to every answer it is timing. While a run
    measures, the cyclic collector is off (reference counting frees almost everything: 800
    answers through the server left ~100 cyclic objects); it catches up afterwards."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


async def run_load(cfg: LoadConfig, users: Sequence[Credentials], plan: MessagePlan,
                   rec: Recorder, *, duration: float,
                   on_tick: Callable[[float], None] | None = None) -> float:
    """Run every session (stopped at ``duration`` seconds); returns the elapsed seconds."""
    with collector_paused():  # its own collections stay out of the timed run
        return await _run_sessions(cfg, users, plan, rec, duration=duration, on_tick=on_tick)


async def _run_sessions(cfg: LoadConfig, users: Sequence[Credentials], plan: MessagePlan,
                        rec: Recorder, *, duration: float,
                        on_tick: Callable[[float], None] | None) -> float:
    rec.started = trio.current_time()
    rec.verified = cfg.verify
    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            if on_tick is not None:
                nursery.start_soon(_ticker, on_tick, rec)
            for i in range(cfg.sessions):
                if cfg.ramp_up > 0 and cfg.sessions > 1 and i:
                    await trio.sleep_until(rec.started + cfg.ramp_up * i / cfg.sessions)
                nursery.start_soon(run_session, i, users[i % len(users)], cfg, plan, rec)
            if on_tick is not None:
                while rec.sessions_done < cfg.sessions:
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
    return trio.current_time() - rec.started


async def _ticker(on_tick: Callable[[float], None], rec: Recorder) -> None:
    while True:
        on_tick(trio.current_time() - rec.started)
        await trio.sleep(0.5)
